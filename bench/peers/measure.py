"""Measuring distinfer and a peer side by side: same body, same load generator, interleaved rounds.

Each case is one (target, encoding) with the process trees that serve it (checked first by
`bench.peers.preflight`). Per concurrency level, rounds run the cases in a rotated order (slow
drift of the 2-core machine hits every case alike), and the CPU time of the case's servers, of the
idle other servers and of everything else on the machine is read from /proc around each run: on a
shared machine, a server made of more busy processes wins more of the contended cores, and the
`foreign` figure says when that happened.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import onnxruntime as ort
from rich.console import Console

from bench.loadgen import LoadSpec, run_load
from bench.machine import describe_machine
from bench.params import RunParams
from bench.peers.procs import ProcStat, busy_cpu_seconds, proc_stats, tree_cpu_seconds
from bench.scenarios.overhead import Body
from bench.summary import Run, aggregate

__all__ = ["Case", "PeerParams", "PeerRun", "aggregate_runs", "machine", "measure", "run_notes"]

_CPU_SHARE_WARNING = 0.9
_FOREIGN_WARNING = 0.25  # cores used by work that is not this bench


PeerParams = RunParams


@dataclass(frozen=True, slots=True)
class Case:
    """One target with one body; `pids` are the roots of the process trees that serve it."""

    target: str
    body: Body
    url: str
    pids: tuple[int, ...] = field(default=())

    @property
    def encoding(self) -> str:
        return self.body.encoding


@dataclass(frozen=True, slots=True)
class PeerRun:
    """One load run and the CPU around it, in cores: the measured target's servers, the other (idle)
    servers of this bench, and `foreign`: everything on the machine that is not this bench."""

    run: Run
    server_cpu_share: float
    others_cpu_share: float
    foreign_cpu_share: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.run.as_dict(),
            "server_cpu_share": round(self.server_cpu_share, 4),
            "others_cpu_share": round(self.others_cpu_share, 4),
            "foreign_cpu_share": round(self.foreign_cpu_share, 4),
        }


@dataclass(frozen=True, slots=True)
class _Snapshot:
    at: float
    stats: list[ProcStat]
    busy_s: float

    @classmethod
    def take(cls) -> _Snapshot:
        return cls(time.monotonic(), proc_stats(), busy_cpu_seconds())

    def cpu(self, pids: Sequence[int] | set[int]) -> float:
        return tree_cpu_seconds(pids, self.stats)

    def own_cpu(self) -> float:
        """This process alone (the load generator), not the servers it started."""
        pid = os.getpid()
        return sum(stat.cpu_ticks for stat in self.stats if stat.pid == pid) / os.sysconf("SC_CLK_TCK")


def _cpu_shares(before: _Snapshot, after: _Snapshot, case: Case, every_pid: set[int]) -> tuple[float, float, float]:
    wall = max(after.at - before.at, 1e-9)
    others = every_pid - set(case.pids)
    server = after.cpu(case.pids) - before.cpu(case.pids)
    idle = after.cpu(others) - before.cpu(others)
    mine = after.cpu(every_pid) - before.cpu(every_pid) + after.own_cpu() - before.own_cpu()
    foreign = (after.busy_s - before.busy_s) - mine
    return max(server, 0.0) / wall, max(idle, 0.0) / wall, max(foreign, 0.0) / wall


async def measure(cases: Sequence[Case], params: PeerParams, console: Console) -> list[PeerRun]:
    """Every case at every concurrency level, `params.rounds` rotated rounds each."""
    runs: list[PeerRun] = []
    every_pid = {pid for case in cases for pid in case.pids}
    for concurrency in params.concurrency:
        for round_ in range(params.rounds):
            shift = round_ % len(cases)
            for case in [*cases[shift:], *cases[:shift]]:
                before = _Snapshot.take()
                spec = LoadSpec(
                    url=case.url,
                    body=case.body.data,
                    headers=case.body.headers,
                    concurrency=concurrency,
                    duration_s=params.duration_s,
                    warmup_s=params.warmup_s,
                    timeout_s=params.timeout_s,
                )
                result = await run_load(spec)
                server, idle, foreign = _cpu_shares(before, _Snapshot.take(), case, every_pid)
                runs.append(
                    PeerRun(Run(case.target, case.encoding, concurrency, round_ + 1, result), server, idle, foreign)
                )
                console.print(
                    f"[dim]c={concurrency:<3} {round_ + 1}/{params.rounds} {case.target:<20} {case.encoding:<6} "
                    f"p50 {result.p50_ms:8.3f} p99 {result.p99_ms:8.3f} ms {result.throughput:7.1f}/s "
                    f"err {result.errors + result.timeouts} cpu client {result.client_cpu_share:.0%} "
                    f"server {server:.0%} idle peers {idle:.0%} foreign {foreign:.0%}[/dim]",
                    highlight=False,
                )
    return runs


def _median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 4) if values else None


def aggregate_runs(runs: Sequence[PeerRun]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """`bench.summary.aggregate` medians, plus each target's server CPU (share of a core, ms per request)."""
    aggregated = aggregate([peer_run.run for peer_run in runs])
    for encoding, by_concurrency in aggregated.items():
        for level, by_target in by_concurrency.items():
            for target, figures in by_target.items():
                mine = [
                    r
                    for r in runs
                    if (r.run.encoding, str(r.run.concurrency), r.run.target) == (encoding, level, target)
                ]
                share = _median([r.server_cpu_share for r in mine])
                figures.pop("p50_over_direct_ms", None)  # no "direct" target here
                figures["server_cpu_share"] = share
                figures["others_cpu_share"] = _median([r.others_cpu_share for r in mine])
                figures["foreign_cpu_share"] = _median([r.foreign_cpu_share for r in mine])
                rps = figures["throughput"]
                figures["server_cpu_ms_per_request"] = (
                    None if share is None or not rps else round(share * 1000.0 / rps, 4)
                )
    return aggregated


def machine() -> dict[str, Any]:
    return describe_machine(aiohttp=aiohttp.__version__, onnxruntime=ort.__version__, numpy=np.__version__)


def run_notes(runs: Sequence[PeerRun]) -> list[str]:
    notes: list[str] = []
    busy = [r for r in runs if r.run.result.client_cpu_share >= _CPU_SHARE_WARNING]
    if busy:
        where = sorted({f"{r.run.target}/{r.run.encoding}/c={r.run.concurrency}" for r in busy})
        notes.append(
            f"load generator used >= {_CPU_SHARE_WARNING:.0%} of a core in {len(busy)} runs ({', '.join(where)}): "
            "those throughputs are bounded by the client"
        )
    failed = [r for r in runs if r.run.result.errors or r.run.result.timeouts]
    if failed:
        notes.append(f"{len(failed)} runs had errors or timeouts (see runs[])")
    foreign = sorted(r.foreign_cpu_share for r in runs)
    if foreign and foreign[len(foreign) // 2] > _FOREIGN_WARNING:
        notes.append(
            f"other work on this machine used {foreign[len(foreign) // 2]:.2f} cores (median over runs, up to "
            f"{foreign[-1]:.2f}): servers with more busy processes win more of the contended CPU, so the "
            "ratios are not those of a quiet machine; compare server cpu ms/req, and re-run when quiet"
        )
    return notes
