"""distinfer against a peer, from the aggregated medians: ratios per concurrency, and the issue's targets.

Targets (issue 8): a distinfer node is "at least as fast" as MLServer on the same model and client
(throughput at least the peer's and p50 at most the peer's, at every concurrency measured); the
distinfer gateway + nodes are "ahead of" Ray Serve at equal replicas (more throughput and a lower
p99, at every concurrency measured). A comparison that misses says by how much.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Pair", "compare", "judge_ahead", "judge_as_fast"]

Aggregated = dict[str, dict[str, dict[str, dict[str, Any]]]]


@dataclass(frozen=True, slots=True)
class Pair:
    """Which target and encoding is ours and which is the peer's."""

    ours: str
    peer: str
    ours_encoding: str = "json"
    peer_encoding: str = "json"

    @property
    def label(self) -> str:
        return f"{self.ours} ({self.ours_encoding}) vs {self.peer} ({self.peer_encoding})"


def _figure(aggregated: Aggregated, encoding: str, concurrency: str, target: str, key: str) -> float | None:
    value = aggregated.get(encoding, {}).get(concurrency, {}).get(target, {}).get(key)
    return None if value is None else float(value)


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or bottom is None or bottom <= 0 else round(top / bottom, 4)


def compare(aggregated: Aggregated, pair: Pair) -> dict[str, Any]:
    """{label, ours, peer, by_concurrency: {c: {metric: {ours, peer, ratio ours/peer}}}}.

    Metrics: throughput, p50, p99 and the servers' CPU ms per request (the figure that stays put
    when other work shares the machine).
    """
    levels = sorted(set(aggregated.get(pair.ours_encoding, {})) & set(aggregated.get(pair.peer_encoding, {})), key=int)
    by_concurrency: dict[str, Any] = {}
    for level in levels:
        entry: dict[str, Any] = {}
        for key in ("throughput", "p50_ms", "p99_ms", "server_cpu_ms_per_request"):
            ours = _figure(aggregated, pair.ours_encoding, level, pair.ours, key)
            peer = _figure(aggregated, pair.peer_encoding, level, pair.peer, key)
            entry[key] = {"ours": ours, "peer": peer, "ratio": _ratio(ours, peer)}
        by_concurrency[level] = entry
    return {
        "label": pair.label,
        "ours": {"target": pair.ours, "encoding": pair.ours_encoding},
        "peer": {"target": pair.peer, "encoding": pair.peer_encoding},
        "by_concurrency": by_concurrency,
    }


def _check(comparison: dict[str, Any], rules: tuple[tuple[str, str, bool], ...], *, strict: bool) -> dict[str, Any]:
    """Apply (metric, wording, higher_is_better) rules at every concurrency; a tie passes unless `strict`."""
    peer = comparison["peer"]["target"]
    misses: list[str] = []
    verdicts: dict[str, Any] = {}
    met_all = bool(comparison["by_concurrency"])
    for level, entry in comparison["by_concurrency"].items():
        level_verdict: dict[str, Any] = {}
        for key, wording, higher_better in rules:
            ratio = entry[key]["ratio"]
            if ratio is None:
                met = False
                misses.append(f"c={level}: {wording} not measured for both")
            else:
                better = ratio > 1.0 if higher_better else ratio < 1.0
                met = better or (ratio == 1.0 and not strict)
                if ratio == 1.0 and not met:
                    misses.append(f"c={level}: {wording} tied with {peer}'s")
                elif not met:
                    gap = f"{1.0 - ratio:.0%} lower" if higher_better else f"{ratio - 1.0:.0%} higher"
                    misses.append(f"c={level}: {wording} {ratio:.2f}x {peer}'s ({gap})")
            level_verdict[key] = {"ratio": ratio, "met": met}
            met_all = met_all and met
        verdicts[level] = level_verdict
    return {"met": met_all, "by_concurrency": verdicts, "misses": misses}


def judge_as_fast(comparison: dict[str, Any]) -> dict[str, Any]:
    """Node vs MLServer: throughput ratio >= 1 and p50 ratio <= 1 at every concurrency."""
    rules = (("throughput", "throughput", True), ("p50_ms", "p50", False))
    return {"target": "at least as fast", **_check(comparison, rules, strict=False)}


def judge_ahead(comparison: dict[str, Any]) -> dict[str, Any]:
    """Gateway + nodes vs Ray Serve: throughput ratio > 1 and p99 ratio < 1 at every concurrency (no ties)."""
    rules = (("throughput", "throughput", True), ("p99_ms", "p99", False))
    return {"target": "ahead on throughput and p99", **_check(comparison, rules, strict=True)}
