"""From individual load runs to the figures the project is judged on: medians, overheads, ratios.

Each (encoding, concurrency, target) is measured in several interleaved rounds; the median of
each metric over the rounds is the figure, which keeps one unlucky round (a GC pause, a
frequency change) from deciding a ratio.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.loadgen import LoadResult

__all__ = [
    "CPU_MS_PER_REQUEST_MAX",
    "OVERHEAD_RATIO_MAX",
    "THROUGHPUT_RATIO_MIN",
    "Run",
    "aggregate",
    "judge",
    "ratios",
]

OVERHEAD_RATIO_MAX = 1.5  # gateway p50 overhead at c=1 over the aiohttp pass-through's
THROUGHPUT_RATIO_MIN = 0.9  # gateway throughput at c=64 over the aiohttp pass-through's
CPU_MS_PER_REQUEST_MAX = 1.0  # gateway CPU per request at c=64 with auth, metrics and tracing on

_MEDIANS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput", "client_cpu_share", "server_cpu_ms_per_request")
_SUMS = ("requests", "ok", "errors", "timeouts")


@dataclass(frozen=True, slots=True)
class Run:
    """One measured load run of one target."""

    target: str
    encoding: str
    concurrency: int
    round: int
    result: LoadResult
    server_cpu_ms: float | None = None  # CPU the target's server process spent per request (None: not read)

    def as_dict(self) -> dict[str, Any]:
        head = {"target": self.target, "encoding": self.encoding, "concurrency": self.concurrency, "round": self.round}
        return {**head, **self.result.as_dict(), "server_cpu_ms_per_request": self.server_cpu_ms}


def _median(values: Iterable[float | int | None]) -> float | None:
    present = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return round(statistics.median(present), 4) if present else None


def aggregate(runs: Sequence[Run]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """{encoding: {concurrency: {target: medians over rounds, sums of counts}}}, in run order."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run.encoding, run.concurrency, run.target), []).append(run.as_dict())
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for (encoding, concurrency, target), results in groups.items():
        figures: dict[str, Any] = {key: _median(r[key] for r in results) for key in _MEDIANS}
        figures |= {key: sum(int(r[key]) for r in results) for key in _SUMS}
        figures["rounds"] = len(results)
        out.setdefault(encoding, {}).setdefault(str(concurrency), {})[target] = figures
    for by_concurrency in out.values():
        for by_target in by_concurrency.values():
            direct = by_target.get("direct", {}).get("p50_ms")
            for figures in by_target.values():
                p50 = figures["p50_ms"]
                figures["p50_over_direct_ms"] = None if direct is None or p50 is None else round(p50 - direct, 4)
    return out


def _get(table: dict[str, dict[str, dict[str, Any]]], concurrency: int, target: str, key: str) -> float | None:
    value = table.get(str(concurrency), {}).get(target, {}).get(key)
    return None if value is None else float(value)


def _ratio(top: float | None, bottom: float | None) -> float | None:
    if top is None or bottom is None or bottom <= 0:
        return None
    return round(top / bottom, 4)


def ratios(
    aggregated: dict[str, dict[str, dict[str, dict[str, Any]]]], latency_at: int, throughput_at: int
) -> dict[str, dict[str, Any]]:
    """Per encoding: p50/p99 overheads over direct at `latency_at`, throughput ratios at `throughput_at`."""
    out: dict[str, dict[str, Any]] = {}
    for encoding, table in aggregated.items():
        proxies = [name for name in table.get(str(latency_at), {}) if name != "direct"]
        direct_p50 = _get(table, latency_at, "direct", "p50_ms")
        direct_p99 = _get(table, latency_at, "direct", "p99_ms")
        over_p50 = {name: _minus(_get(table, latency_at, name, "p50_ms"), direct_p50) for name in proxies}
        over_p99 = {name: _minus(_get(table, latency_at, name, "p99_ms"), direct_p99) for name in proxies}
        rps = {name: _get(table, throughput_at, name, "throughput") for name in table.get(str(throughput_at), {})}
        out[encoding] = {
            "latency_at_concurrency": latency_at,
            "overhead_p50_ms": over_p50,
            "overhead_p99_ms": over_p99,
            "gateway_overhead_over_passthrough": _ratio(over_p50.get("gateway"), over_p50.get("passthrough")),
            "gateway_overhead_over_nginx": _ratio(over_p50.get("gateway"), over_p50.get("nginx")),
            "plugin_overhead_over_passthrough": _ratio(over_p50.get("plugin"), over_p50.get("passthrough")),
            "throughput_at_concurrency": throughput_at,
            "throughput_over_direct": {
                name: _ratio(value, rps.get("direct")) for name, value in rps.items() if name != "direct"
            },
            "gateway_throughput_over_passthrough": _ratio(rps.get("gateway"), rps.get("passthrough")),
            "gateway_throughput_over_nginx": _ratio(rps.get("gateway"), rps.get("nginx")),
            "plugin_throughput_over_passthrough": _ratio(rps.get("plugin"), rps.get("passthrough")),
            # Gateway CPU per request at the throughput concurrency: as measured, and with auth + tracing on.
            "gateway_cpu_ms_per_request": _get(table, throughput_at, "gateway", "server_cpu_ms_per_request"),
            "full_cpu_ms_per_request": _get(table, throughput_at, "full", "server_cpu_ms_per_request"),
        }
    return out


def _minus(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or bottom is None else round(top - bottom, 4)


def judge(by_encoding: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's two targets per encoding; a ratio that could not be computed counts as not met."""
    verdict: dict[str, Any] = {
        "overhead_ratio_max": OVERHEAD_RATIO_MAX,
        "throughput_ratio_min": THROUGHPUT_RATIO_MIN,
        "cpu_ms_per_request_max": CPU_MS_PER_REQUEST_MAX,
    }
    met_all = bool(by_encoding)
    for encoding, figures in by_encoding.items():
        overhead = figures["gateway_overhead_over_passthrough"]
        throughput = figures["gateway_throughput_over_passthrough"]
        gateway_over = figures["overhead_p50_ms"].get("gateway")
        # A pass-through "overhead" at or below zero is noise; the gateway then meets the target only if it is too.
        if overhead is None and gateway_over is not None and figures["overhead_p50_ms"].get("passthrough") is not None:
            overhead_met = gateway_over <= 0
        else:
            overhead_met = overhead is not None and overhead <= OVERHEAD_RATIO_MAX
        throughput_met = throughput is not None and throughput >= THROUGHPUT_RATIO_MIN
        cpu = figures.get("full_cpu_ms_per_request")
        cpu_met = cpu is not None and cpu <= CPU_MS_PER_REQUEST_MAX
        verdict[encoding] = {
            "overhead": {"ratio": overhead, "met": overhead_met},
            "throughput": {"ratio": throughput, "met": throughput_met},
            "cpu_all_features": {"ms_per_request": cpu, "met": cpu_met},
        }
        met_all = met_all and overhead_met and throughput_met and cpu_met
    verdict["all_met"] = met_all
    return verdict
