"""The gateway's own CPU per relayed request, one request at a time: `python -m bench.relay_cpu`.

The instrument behind the README's breakdown of the relay (Performance, "where the time goes").
The standalone gateway app runs in this process, driven through ASGI (no server, no socket to
the client) against a real node process; each request's CPU time (`time.process_time`, this
process only, so the node's work is not in it) is compared with a bare aiohttp call to the same
node from the same process. relay minus bare is what the gateway's own code costs per request, with
caches as cold as one request at a time leaves them. Alternating rounds, medians.

To see what a part costs, patch it out before `run` builds the app (a no-op observer, a memoised
check) and compare: that is how the README's per-part figures were taken.

    python -m bench.relay_cpu --requests 3000 --rounds 3 --encodings json,binary
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from bench.scenarios.overhead import NODE_PATH, RELAY_PATH, request_bodies
from gateway_plugin.processes import start_node
from worker.bundled import bundled_models

__all__ = ["main", "one_request", "run", "standalone_gateway"]

Asgi = Callable[..., Awaitable[None]]
Events = asyncio.Queue[dict[str, Any]]


async def _started(
    app: Asgi,
) -> tuple[asyncio.Queue[dict[str, Any]], asyncio.Queue[dict[str, Any]], asyncio.Task[None]]:
    """Run the app's lifespan startup (probes, sessions); the queues drive its shutdown, in the task."""
    inbox: Events = asyncio.Queue()
    outbox: Events = asyncio.Queue()

    async def lifespan() -> None:
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put)

    task = asyncio.get_running_loop().create_task(lifespan())
    await inbox.put({"type": "lifespan.startup"})
    if (await outbox.get())["type"] != "lifespan.startup.complete":
        raise RuntimeError("the gateway app did not start")
    return inbox, outbox, task


def _scope(body_headers: dict[str, str], size: int) -> dict[str, Any]:
    headers = [(k.lower().encode(), v.encode()) for k, v in body_headers.items()]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": RELAY_PATH,
        "raw_path": RELAY_PATH.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [*headers, (b"content-length", str(size).encode())],
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 5000),
        "state": {},
    }


async def _cpu_per_call(call: Callable[[], Awaitable[None]], requests: int) -> float:
    for _ in range(min(200, requests)):
        await call()
    began = time.process_time()
    for _ in range(requests):
        await call()
    return (time.process_time() - began) / requests * 1e6


def one_request(encoding: str) -> tuple[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]]]:
    """The scope and `receive` of a relayed digits request of `encoding`, the same body every time."""
    body = request_bodies()[encoding]
    message = {"type": "http.request", "body": body.data, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    return _scope(body.headers, len(body.data)), receive


async def _measure(
    app: Asgi, session: aiohttp.ClientSession, node_url: str, encoding: str, requests: int, rounds: int
) -> dict[str, float]:
    body = request_bodies()[encoding]
    scope, receive = one_request(encoding)
    statuses: list[int] = []

    async def send(event: dict[str, Any]) -> None:
        if event["type"] == "http.response.start":
            statuses.append(event["status"])

    async def relay() -> None:
        await app(dict(scope), receive, send)

    async def bare() -> None:
        async with session.post(node_url + NODE_PATH, data=body.data, headers=body.headers) as answer:
            await answer.read()

    seen: dict[str, list[float]] = {"bare": [], "relay": []}
    for _ in range(rounds):
        for name, call in (("bare", bare), ("relay", relay)):
            seen[name].append(await _cpu_per_call(call, requests))
    if set(statuses) != {200}:
        raise RuntimeError(f"the relay answered {sorted(set(statuses))}")
    return {name: statistics.median(values) for name, values in seen.items()}


@asynccontextmanager
async def standalone_gateway(node_url: str) -> AsyncIterator[Asgi]:
    """The standalone gateway app (auth off) over the node at `node_url`, started, once it has found it."""
    os.environ.update(
        {
            "ENABLE_DISTRIBUTED_INFERENCE": "true",
            "DISTINFER_NODES": node_url,
            "DISTINFER_AUTH_DISABLED": "true",
            "DISTINFER_PROBE_INTERVAL_S": "1",
        }
    )
    from gateway_plugin.settings import Settings
    from gateway_plugin.standalone import create_gateway_app

    app: Asgi = create_gateway_app(Settings())
    inbox, outbox, lifespan = await _started(app)
    await asyncio.sleep(1.5)  # the first probe finds the node
    try:
        yield app
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await lifespan


async def run(node_url: str, *, requests: int, rounds: int, encodings: Sequence[str]) -> dict[str, dict[str, float]]:
    """Median µs of CPU per request, bare and through the relay, by encoding."""
    async with standalone_gateway(node_url) as app, aiohttp.ClientSession() as session:
        return {encoding: await _measure(app, session, node_url, encoding, requests, rounds) for encoding in encodings}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--encodings", default="json,binary")
    args = parser.parse_args(argv)
    node = start_node(bundled_models(), "relay-cpu-node", threads=1)
    try:
        node.wait_ready(60)
        found = asyncio.run(
            run(node.url, requests=args.requests, rounds=args.rounds, encodings=args.encodings.split(","))
        )
    finally:
        node.stop()
    for encoding, cpu in found.items():
        own = cpu["relay"] - cpu["bare"]
        print(
            f"{encoding}: bare aiohttp {cpu['bare']:.1f} µs, relay {cpu['relay']:.1f} µs, the gateway's own {own:.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
