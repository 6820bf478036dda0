"""Closed-loop load that also records which node answered each request (`X-Inference-Node`).

`bench.loadgen` measures one target; a balancing bench needs, per request, the latency, the status
and the node the gateway chose, to report the share of traffic a slow node got and to line up
failures with the moment a node was killed. Bodies are taken in turn from a list, so every run
sends the same sequence (the same schedule for every strategy).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

__all__ = ["NodeLoadResult", "Sample", "run_node_load"]


@dataclass(frozen=True, slots=True)
class Sample:
    started: float  # perf_counter at send
    latency_s: float
    status: int  # 0: connection error or client timeout
    node: str | None


@dataclass(slots=True)
class NodeLoadResult:
    samples: list[Sample] = field(default_factory=list)
    elapsed_s: float = 0.0

    def summary(self, slow_node: str | None = None) -> dict[str, Any]:
        ok = [s for s in self.samples if s.status == 200]
        ms = np.asarray([s.latency_s for s in ok], dtype=np.float64) * 1000.0
        p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99])) if len(ms) else (math.nan,) * 3
        nodes = Counter(s.node or "?" for s in ok)
        figures: dict[str, Any] = {
            "requests": len(self.samples),
            "ok": len(ok),
            "failed": len(self.samples) - len(ok),
            "elapsed_s": round(self.elapsed_s, 3),
            "throughput": round(len(ok) / self.elapsed_s, 2) if self.elapsed_s > 0 else 0.0,
            "p50_ms": _round(p50),
            "p90_ms": _round(p90),
            "p99_ms": _round(p99),
            "max_ms": _round(float(ms.max())) if len(ms) else None,
            "by_node": dict(sorted(nodes.items())),
        }
        if slow_node is not None:
            figures["slow_share"] = round(nodes.get(slow_node, 0) / len(ok), 4) if ok else None
        return figures


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


async def run_node_load(
    url: str,
    bodies: Sequence[bytes],
    *,
    concurrency: int,
    duration_s: float,
    timeout_s: float = 10.0,
    headers: dict[str, str] | None = None,
) -> NodeLoadResult:
    """`concurrency` workers send bodies in turn for `duration_s` seconds; every answer is a sample."""
    result = NodeLoadResult()
    sent = 0
    send_headers = {"Content-Type": "application/json", **(headers or {})}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        began = time.perf_counter()
        stop_at = began + duration_s

        async def worker() -> None:
            nonlocal sent
            while time.perf_counter() < stop_at:
                body = bodies[sent % len(bodies)]
                sent += 1
                start = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=send_headers) as response:
                        await response.read()
                        status, node = response.status, response.headers.get("X-Inference-Node")
                except (aiohttp.ClientError, TimeoutError):
                    status, node = 0, None
                result.samples.append(Sample(start, time.perf_counter() - start, status, node))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.elapsed_s = time.perf_counter() - began
    return result
