"""Steady client traffic that keeps every request's fate, and a watcher of the gateway's view of its nodes.

Unlike `bench.loadgen` (throughput figures), a chaos run must account for each request: when it
started, how it ended (answered, refused before it was sent, lost after it was sent) and which
node answered, so the figures can be cut to the fault window and the time a node took to leave
and rejoin the rotation can be read off the samples.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

__all__ = ["NodeWatch", "Sample", "Traffic", "figures", "percentile"]


@dataclass(frozen=True, slots=True)
class Sample:
    """One request. `status` None: no HTTP answer; `refused` tells whether it was ever sent."""

    start: float
    end: float
    status: int | None
    node: str | None = None
    refused: bool = False
    wrong: bool = False
    error: str | None = None

    @property
    def latency_ms(self) -> float:
        return (self.end - self.start) * 1000


def _well_formed(body: bytes) -> bool:
    """An inference answer a client can use: outputs with as many values as their shape says."""
    try:
        answer = json.loads(body)
        outputs = answer["outputs"]
        return bool(outputs) and all(len(out["data"]) == math.prod(out["shape"]) for out in outputs)
    except (ValueError, KeyError, TypeError):
        return False


@dataclass
class Traffic:
    """`concurrency` closed-loop clients posting `body` to `url` until `stop` is set."""

    url: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    concurrency: int = 4
    timeout_s: float = 15.0
    max_requests: int = 200_000
    clock: Callable[[], float] = time.monotonic
    samples: list[Sample] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> list[Sample]:
        connector = aiohttp.TCPConnector(limit=self.concurrency, force_close=False)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        headers = {"Content-Type": "application/json", **self.headers}
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
            await asyncio.gather(*(self._client(session, stop) for _ in range(self.concurrency)))
        return self.samples

    async def _client(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set() and len(self.samples) < self.max_requests:
            start = self.clock()
            try:
                async with session.post(self.url, data=self.body) as response:
                    payload = await response.read()
                    status, node = response.status, response.headers.get("X-Inference-Node")
            except aiohttp.ClientConnectorError as exc:
                # Never reached the gateway (it is down): the client knows, nothing was accepted.
                self.samples.append(Sample(start, self.clock(), None, refused=True, error=type(exc).__name__))
                await asyncio.sleep(0.05)
                continue
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.samples.append(Sample(start, self.clock(), None, error=type(exc).__name__))
                continue
            wrong = status == 200 and not _well_formed(payload)
            self.samples.append(Sample(start, self.clock(), status, node, wrong=wrong))


@dataclass
class NodeWatch:
    """Polls the gateway's `/nodes` and keeps, per node id, when it was seen in or out of rotation."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    interval_s: float = 0.05
    clock: Callable[[], float] = time.monotonic
    seen: list[tuple[float, str, bool]] = field(default_factory=list)

    @staticmethod
    def in_rotation(entry: Mapping[str, Any]) -> bool:
        return (
            entry.get("status") == "online"
            and entry.get("breaker", "closed") != "open"
            and not entry.get("quarantined", False)
        )

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout, headers=dict(self.headers)) as session:
            while not stop.is_set():
                try:
                    async with session.get(self.url) as response:
                        entries = await response.json() if response.status == 200 else []
                except (TimeoutError, aiohttp.ClientError, ValueError):
                    entries = []
                now = self.clock()
                for entry in entries if isinstance(entries, list) else []:
                    self.seen.append((now, str(entry.get("node_id")), self.in_rotation(entry)))
                await asyncio.sleep(self.interval_s)

    def first(self, node_id: str, *, in_rotation: bool, after: float) -> float | None:
        return next(
            (t for t, node, state in self.seen if node == node_id and state is in_rotation and t >= after), None
        )


def percentile(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), 3) if values else None


def figures(samples: Sequence[Sample], window: tuple[float, float] | None = None) -> dict[str, Any]:
    """Counts over all samples; latency percentiles overall and for requests started inside `window`."""
    answered = [s for s in samples if s.status is not None]
    ok = [s for s in answered if s.status == 200 and not s.wrong]
    in_window = [s for s in ok if window is not None and window[0] <= s.start <= window[1]]
    statuses = Counter(str(s.status) for s in answered if s.status != 200)
    return {
        "sent": sum(not s.refused for s in samples),
        "ok": len(ok),
        "failed": len(answered) - len(ok),
        "lost": sum(s.status is None and not s.refused for s in samples),
        "refused": sum(s.refused for s in samples),
        "wrong_answers": sum(s.wrong for s in samples),
        "statuses": dict(sorted(statuses.items())),
        "errors": dict(Counter(s.error for s in samples if s.error)),
        "p50_ms": percentile([s.latency_ms for s in ok], 50),
        "p99_ms": percentile([s.latency_ms for s in ok], 99),
        "p99_fault_ms": percentile([s.latency_ms for s in in_window], 99),
        "max_fault_ms": round(max((s.latency_ms for s in in_window), default=0.0), 3) if in_window else None,
        "served_by": dict(sorted(Counter(s.node or "?" for s in ok).items())),
    }
