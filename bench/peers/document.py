"""The JSON document both peer scenarios write: parameters, setup, preflight, medians, comparisons, verdicts."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from bench.peers.compare import Pair, compare, judge_ahead, judge_as_fast
from bench.peers.measure import Case, PeerParams, PeerRun, aggregate_runs, machine, run_notes
from bench.peers.venvs import ReadyEnv
from gateway_plugin.processes import ServerProcess

__all__ = ["Judged", "Recorder"]

_JUDGES = {"as_fast": judge_as_fast, "ahead": judge_ahead}
_LOG_TAIL = 2000


@dataclass(frozen=True, slots=True)
class Judged:
    """A comparison to report; `judge` is "as_fast", "ahead" or None (reported for information)."""

    pair: Pair
    judge: str | None = None
    note: str = ""


@dataclass(slots=True)
class Recorder:
    """Collects a run as it goes (setup, preflight, runs) and turns it into the scenario's document."""

    scenario: str
    params: PeerParams
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    machine: dict[str, Any] = field(default_factory=machine)
    peer_envs: dict[str, Any] = field(default_factory=dict)
    setup_s: float | None = None
    errors: list[str] = field(default_factory=list)
    preflight: dict[str, Any] = field(default_factory=dict)
    servers: dict[str, Any] = field(default_factory=dict)

    def env_ready(self, env: ReadyEnv) -> None:
        self.peer_envs[env.name] = {
            "path": str(env.root),
            "created": env.created,
            "setup_s": env.setup_s,
            "versions": env.versions,
        }

    def servers_ready(self) -> None:
        self.setup_s = round(time.monotonic() - self.started, 2)

    def keep_logs_if_failed(self, servers: Mapping[str, ServerProcess], runs: Sequence[PeerRun]) -> None:
        """A run had errors or timeouts: keep the end of every server's output (the why) in the document."""
        if any(run.run.result.errors or run.run.result.timeouts for run in runs):
            for name, server in servers.items():
                self.servers.setdefault(name, {})["log_tail"] = server.output()[-_LOG_TAIL:]

    def document(
        self, cases: Sequence[Case], runs: Sequence[PeerRun], judged: Sequence[Judged], extra: dict[str, Any]
    ) -> dict[str, Any]:
        aggregated = aggregate_runs(runs)
        comparisons: list[dict[str, Any]] = []
        for item in judged:
            comparison = compare(aggregated, item.pair)
            if not comparison["by_concurrency"]:
                continue
            if item.note:
                comparison["note"] = item.note
            comparison["verdict"] = None if item.judge is None else _JUDGES[item.judge](comparison)
            comparisons.append(comparison)
        verdicts = [c["verdict"] for c in comparisons if c["verdict"] is not None]
        return {
            "scenario": self.scenario,
            "started_at": self.started_at,
            "wall_s": round(time.monotonic() - self.started, 2),
            "setup_s": self.setup_s,
            "machine": self.machine,
            "parameters": {**asdict(self.params), **extra},
            "peer_envs": self.peer_envs,
            "servers": self.servers,
            "targets_measured": {f"{case.target}/{case.encoding}": case.url for case in cases},
            "preflight": self.preflight,
            "errors": self.errors,
            "results": aggregated,
            "comparisons": comparisons,
            "targets_met": bool(verdicts) and all(v["met"] for v in verdicts),
            "warnings": run_notes(runs),
            "runs": [run.as_dict() for run in runs],
        }
