"""Closed-loop HTTP load: `concurrency` workers, each sending its next request when the last one answers.

A closed loop holds concurrency fixed, which is what comparing targets "at concurrency 1 and 64"
means. The bench process is the client and the servers run in their own processes; the client's
own CPU time is reported because on a 2-core machine the load generator competes with the servers,
and a client near a full core caps the throughput it can measure.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
import numpy as np

__all__ = ["LoadResult", "LoadSpec", "run_load"]


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One load run. Give `requests` or `duration_s`; the other bound still applies (`max_*`)."""

    url: str
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    method: str = "POST"
    concurrency: int = 1
    requests: int | None = None
    duration_s: float | None = None
    warmup_s: float = 0.0
    warmup_max_requests: int = 100_000
    max_requests: int = 1_000_000
    max_duration_s: float = 120.0
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if (self.requests is None) == (self.duration_s is None):
            raise ValueError("give exactly one of requests and duration_s")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.requests is not None and not 0 < self.requests <= self.max_requests:
            raise ValueError(f"requests must be in 1..{self.max_requests}")
        if self.duration_s is not None and not 0 < self.duration_s <= self.max_duration_s:
            raise ValueError(f"duration_s must be in (0, {self.max_duration_s}]")
        if self.warmup_s < 0 or self.warmup_s > self.max_duration_s or self.timeout_s <= 0:
            raise ValueError("warmup_s must be in [0, max_duration_s] and timeout_s positive")


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one measured phase saw. Latencies cover successful (200) requests only."""

    requests: int
    ok: int
    errors: int
    timeouts: int
    elapsed_s: float
    throughput: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    client_cpu_s: float

    @property
    def client_cpu_share(self) -> float:
        """Client CPU seconds per wall second: near 1.0 means the load generator saturates a core."""
        return self.client_cpu_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready; NaN (no successful request) becomes None."""
        values: dict[str, float | int] = {
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "elapsed_s": round(self.elapsed_s, 4),
            "throughput": round(self.throughput, 2),
            "p50_ms": round(self.p50_ms, 4),
            "p90_ms": round(self.p90_ms, 4),
            "p99_ms": round(self.p99_ms, 4),
            "mean_ms": round(self.mean_ms, 4),
            "client_cpu_s": round(self.client_cpu_s, 4),
            "client_cpu_share": round(self.client_cpu_share, 4),
        }
        return {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in values.items()}


@dataclass(slots=True)
class _Tally:
    """Mutable counts of one phase; shared by the workers of one event loop, so no locking."""

    issued: int = 0
    errors: int = 0
    timeouts: int = 0
    latencies: list[float] = field(default_factory=list)


async def _worker(session: aiohttp.ClientSession, spec: LoadSpec, tally: _Tally, limit: int, stop_at: float) -> None:
    while tally.issued < limit and time.perf_counter() < stop_at:
        tally.issued += 1
        start = time.perf_counter()
        try:
            async with session.request(spec.method, spec.url, data=spec.body or None, headers=spec.headers) as resp:
                await resp.read()
                status = resp.status
        except TimeoutError:
            tally.timeouts += 1
            continue
        except aiohttp.ClientError:
            tally.errors += 1
            continue
        if status == 200:
            tally.latencies.append(time.perf_counter() - start)
        else:
            tally.errors += 1


async def _phase(session: aiohttp.ClientSession, spec: LoadSpec, limit: int, seconds: float) -> tuple[_Tally, float]:
    tally = _Tally()
    start = time.perf_counter()
    stop_at = start + seconds
    await asyncio.gather(*(_worker(session, spec, tally, limit, stop_at) for _ in range(spec.concurrency)))
    return tally, time.perf_counter() - start


def _result(tally: _Tally, elapsed_s: float, cpu_s: float) -> LoadResult:
    ok = len(tally.latencies)
    if ok:
        ms = np.asarray(tally.latencies, dtype=np.float64) * 1000.0
        p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
        mean = float(ms.mean())
    else:
        p50 = p90 = p99 = mean = math.nan
    return LoadResult(
        requests=tally.issued,
        ok=ok,
        errors=tally.errors,
        timeouts=tally.timeouts,
        elapsed_s=elapsed_s,
        throughput=ok / elapsed_s if elapsed_s > 0 else 0.0,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        mean_ms=mean,
        client_cpu_s=cpu_s,
    )


async def run_load(spec: LoadSpec) -> LoadResult:
    """Warm up (results dropped, connections opened), then measure; one pooled session for both."""
    connector = aiohttp.TCPConnector(limit=spec.concurrency)
    timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        if spec.warmup_s > 0:
            await _phase(session, spec, spec.warmup_max_requests, spec.warmup_s)
        if spec.requests is not None:
            limit, seconds = spec.requests, spec.max_duration_s
        else:
            limit, seconds = spec.max_requests, float(spec.duration_s or 0.0)
        cpu_start = time.process_time()
        tally, elapsed = await _phase(session, spec, limit, seconds)
        cpu_s = time.process_time() - cpu_start
    return _result(tally, elapsed, cpu_s)
