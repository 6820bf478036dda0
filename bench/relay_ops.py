"""The Python work of one relayed request, counted: `python -m bench.relay_ops`.

Timing a few microseconds of change on this shared 2-core machine drowns in its noise; counting
does not. The standalone gateway app runs in this process, driven through ASGI; the node is a real
process, called once for a real answer, which every later call then gets back at once (a canned
`NodeClient._call`), so only the gateway's own code runs. Each request is traced
(`sys.settrace` with opcode events, `sys.setprofile` for calls into C) and counted: bytecode
operations before the answer's body is handed to the server (what a one-client benchmark waits
for) and after it (the deferred bookkeeping), and the functions they ran in. The counts are
deterministic, so one run tells whether a change removed work from the hot path; the A/B through
real processes (`bench overhead`) tells what that is worth in time (cold caches make each
operation on the c=1 path cost ~2.5x what it costs in a hot loop).

    python -m bench.relay_ops --encodings json,binary --top 30
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import Counter
from collections.abc import Sequence
from types import FrameType
from typing import Any

from bench.relay_cpu import Asgi, one_request, standalone_gateway
from gateway_plugin.processes import start_node
from worker.bundled import bundled_models

__all__ = ["OpCounts", "count", "main"]


class OpCounts:
    """Opcodes and calls of the traced requests, before and after each answer went out."""

    def __init__(self) -> None:
        self.before = 0
        self.after = 0
        self.python_calls = 0
        self.c_calls = 0
        self.by_function: Counter[str] = Counter()  # before the answer only
        self.answered = False

    def tracer(self, frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "call":
            self.python_calls += 1
        elif event == "opcode":
            if self.answered:
                self.after += 1
            else:
                self.before += 1
                self.by_function[_where(frame)] += 1
        return self.tracer

    def profiler(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call":
            self.c_calls += 1


def _where(frame: FrameType) -> str:
    """`file:function`; a generated method (a dataclass's `__init__`) is named by its class instead."""
    code = frame.f_code
    if code.co_filename == "<string>" and "self" in frame.f_locals:
        return f"{type(frame.f_locals['self']).__name__}.{code.co_name}"
    return f"{os.path.basename(code.co_filename)}:{code.co_name}"


async def count(app: Asgi, encoding: str, requests: int) -> OpCounts:
    """Warm the app up, then trace `requests` relayed requests of `encoding`."""
    import worker.client as client

    scope, receive = one_request(encoding)
    counts = OpCounts()
    statuses: list[int] = []

    async def send(event: dict[str, Any]) -> None:
        if event["type"] == "http.response.start":
            statuses.append(event["status"])
        elif event["type"] == "http.response.body":
            counts.answered = True

    real = client.NodeClient._call
    canned: dict[str, Any] = {}

    async def answer_once(self: Any, method: str, url: str, **kwargs: Any) -> Any:
        if not url.endswith("/infer"):  # the prober's calls stay real: a canned answer would fail them
            return await real(self, method, url, **kwargs)
        if "reply" not in canned:
            canned["reply"] = await real(self, method, url, **kwargs)
        return canned["reply"]

    client.NodeClient._call = answer_once  # type: ignore[method-assign]
    try:
        for _ in range(500):  # remembered headers, label caches, pickers: as under steady traffic
            await app(dict(scope), receive, send)
        for _ in range(requests):
            counts.answered = False
            sys.settrace(counts.tracer)
            sys.setprofile(counts.profiler)
            try:
                await app(dict(scope), receive, send)
            finally:
                sys.settrace(None)
                sys.setprofile(None)
    finally:
        client.NodeClient._call = real  # type: ignore[method-assign]
    if set(statuses) != {200}:
        raise RuntimeError(f"the relay answered {sorted(set(statuses))}")
    return counts


async def _run(node_url: str, encodings: Sequence[str], requests: int) -> dict[str, OpCounts]:
    async with standalone_gateway(node_url) as app:
        return {encoding: await count(app, encoding, requests) for encoding in encodings}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay_ops", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--encodings", default="json,binary")
    parser.add_argument("--top", type=int, default=25, help="functions listed, by opcodes before the answer")
    args = parser.parse_args(argv)
    node = start_node(bundled_models(), "relay-ops-node", threads=1)
    try:
        node.wait_ready(60)
        found = asyncio.run(_run(node.url, args.encodings.split(","), args.requests))
    finally:
        node.stop()
    n = args.requests
    for encoding, counts in found.items():
        print(
            f"{encoding}: per request {counts.before / n:.0f} opcodes before the answer, {counts.after / n:.0f} after;"
            f" {counts.python_calls / n:.0f} Python calls, {counts.c_calls / n:.0f} C calls"
        )
        for function, ops in counts.by_function.most_common(args.top):
            print(f"  {ops / n:7.1f}  {function}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
