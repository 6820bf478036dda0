"""Chaos scenarios: each is a small async function of (cluster, params) that returns its figures.

A fault is a name and two callables, `inject` (make node-b bad) and `heal` (make it good again);
`fault_sequence` runs steady traffic through one gateway, applies its faults one after the other
(each healed and recovered from before the next), watches the gateway's view of node-b, and
measures each fault's window. Adding a fault to a front is one tuple in `SCENARIOS`; adding a
scenario is one function and one entry.

Every scenario keeps node-a healthy, so the targets are the issue's: no failed, lost or wrong
request while another node can serve.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench.chaos.cluster import PREFIX, Cluster, Front
from bench.chaos.traffic import NodeWatch, Sample, Traffic, figures
from gateway_plugin.processes import free_port

__all__ = ["SCENARIOS", "ChaosParams", "Fault", "Scenario", "ScenarioResult", "fault_sequence", "inference_body"]

HEALTHY = "node-a"
FAULTY = "node-b"


@dataclass(frozen=True, slots=True)
class ChaosParams:
    """How long each phase lasts. `short()` is what `make test` runs; `long()` is `distinfer bench chaos`."""

    concurrency: int = 4
    warm_s: float = 0.8
    fault_s: float = 2.0
    after_s: float = 0.5
    recover_timeout_s: float = 40.0
    timeout_s: float = 15.0
    # Gateway settings on top of `gateway_env`'s; the short run ejects for 0.5-1 s instead of the
    # default 5-120 s and forgets a slow node's latency in ~2 s instead of ~10 s, so that recovery
    # fits a test run (the long run measures the defaults).
    gateway_env: tuple[tuple[str, str], ...] = ()
    # The short run injects one or two faults per front (`short=True` in SCENARIOS), the long run all.
    quick: bool = False

    @classmethod
    def short(cls) -> ChaosParams:
        fast_ejection = (
            ("DISTINFER_EJECT_BASE_S", "0.5"),
            ("DISTINFER_EJECT_MAX_S", "1"),
            ("DISTINFER_LATENCY_DECAY_S", "0.2"),
        )
        return cls(warm_s=0.3, fault_s=1.0, after_s=0.2, gateway_env=fast_ejection, quick=True)

    @classmethod
    def long(cls) -> ChaosParams:
        return cls(concurrency=8, warm_s=3.0, fault_s=10.0, after_s=3.0, recover_timeout_s=180.0)


@dataclass
class ScenarioResult:
    name: str
    fault: str
    status: str = "done"  # done | skipped | error
    figures: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool:
        return self.status == "done" and all(target["met"] for target in self.targets.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fault": self.fault,
            "status": self.status,
            "met": self.met,
            "figures": self.figures,
            "targets": self.targets,
            "notes": self.notes,
        }


Scenario = Callable[[Cluster, ChaosParams], Awaitable[list[ScenarioResult]]]
Step = Callable[[], Awaitable[None]]


def inference_body() -> bytes:
    """One 8x8 digits image as a plain JSON value (CONTRACT §4: a one-input model's plain input)."""
    image = [[round(((row * 8 + col) * 37 % 17) / 16, 4) for col in range(8)] for row in range(8)]
    return json.dumps({"model": "digits", "inputs": image, "timeout_ms": 10000}).encode()


def _at_most(value: float | int | None, limit: float | int) -> dict[str, Any]:
    return {"value": value, "max": limit, "met": value is not None and value <= limit}


async def _until_served(traffic: Traffic, node_id: str, after: float, timeout_s: float) -> float | None:
    """When the first request that started after `after` was answered by `node_id` (None: never)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        served = [s.start for s in traffic.samples if s.node == node_id and s.status == 200 and s.start >= after]
        if served:
            return min(served)
        await asyncio.sleep(0.05)
    return None


def _seconds(later: float | None, earlier: float) -> float | None:
    return None if later is None else round(later - earlier, 3)


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault of a sequence: how to make node-b bad and good again."""

    name: str
    description: str
    inject: Step
    heal: Step


async def fault_sequence(
    cluster: Cluster, params: ChaosParams, *, faulty_url: str, faults: list[Fault]
) -> list[ScenarioResult]:
    """Steady traffic through one gateway over node-a and `faulty_url` (node-b); the faults come one
    after the other, each healed and recovered from (node-b serving again) before the next one."""
    gateway = await asyncio.to_thread(
        cluster.start_gateway, [cluster.nodes[HEALTHY].url, faulty_url], extra_env=dict(params.gateway_env)
    )
    traffic = Traffic(
        f"{gateway.url}{PREFIX}/inference",
        inference_body(),
        headers=cluster.auth,
        concurrency=params.concurrency,
        timeout_s=params.timeout_s,
    )
    watch = NodeWatch(f"{gateway.url}{PREFIX}/nodes", headers=cluster.auth)
    stop = asyncio.Event()
    phases: list[tuple[Fault, float, float, float | None, float]] = []
    try:
        await asyncio.to_thread(cluster.wait_serving, gateway, {HEALTHY, FAULTY})
        runs = [asyncio.create_task(traffic.run(stop)), asyncio.create_task(watch.run(stop))]
        try:
            for fault in faults:
                begin = time.monotonic()
                await asyncio.sleep(params.warm_s)
                fault_at = time.monotonic()
                await fault.inject()
                await asyncio.sleep(params.fault_s)
                heal_at = time.monotonic()
                await fault.heal()
                recovered_at = await _until_served(traffic, FAULTY, heal_at, params.recover_timeout_s)
                await asyncio.sleep(params.after_s)
                phases.append((fault, fault_at, heal_at, recovered_at, begin))
                if recovered_at is None:
                    break  # node-b never came back: later faults would measure nothing
        finally:
            stop.set()
            await asyncio.gather(*runs)
    finally:
        await asyncio.to_thread(cluster.stop_gateway, gateway)
    results = []
    for index, (fault, fault_at, heal_at, recovered_at, begin) in enumerate(phases):
        end = phases[index + 1][4] if index + 1 < len(phases) else time.monotonic()
        samples = [s for s in traffic.samples if begin <= s.start < end]
        result = _fault_figures(samples, watch, fault_at, heal_at, recovered_at)
        results.append(ScenarioResult(fault.name, fault.description, figures=result, targets=_targets(result)))
        if not results[-1].met:
            results[-1].notes.append("gateway log tail: " + _warnings(gateway.output()))
    return results


def _fault_figures(
    samples: list[Sample], watch: NodeWatch, fault_at: float, heal_at: float, recovered_at: float | None
) -> dict[str, Any]:
    window_end = recovered_at if recovered_at is not None else heal_at
    result = figures(samples, window=(fault_at, window_end))
    ejected_at = watch.first(FAULTY, in_rotation=False, after=fault_at)  # only while the fault lasted counts
    served_late = [s.end for s in samples if s.node == FAULTY and fault_at <= s.start <= heal_at]
    return result | {
        "fault_s": round(heal_at - fault_at, 3),
        "time_to_eject_s": _seconds(ejected_at if ejected_at is not None and ejected_at <= heal_at else None, fault_at),
        "last_answer_from_faulty_s": _seconds(max(served_late, default=None), fault_at),
        "time_to_recover_s": _seconds(recovered_at, heal_at),
        "recovered": recovered_at is not None,
    }


def _targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        "failed": _at_most(result["failed"], 0),
        "lost": _at_most(result["lost"], 0),
        "wrong_answers": _at_most(result["wrong_answers"], 0),
        "recovered": {"value": result["recovered"], "met": result["recovered"]},
    }


def _warnings(log: str) -> str:
    lines = [line for line in log.splitlines() if '"warning"' in line or '"error"' in line or "Error" in line]
    return "\n".join(lines[-8:])[-1500:]


# ---------------------------------------------------------------- the scenarios


async def node_killed(cluster: Cluster, params: ChaosParams) -> list[ScenarioResult]:
    async def inject() -> None:
        await asyncio.to_thread(cluster.kill_node, FAULTY)

    async def heal() -> None:
        await asyncio.to_thread(cluster.start_nodes, FAULTY)  # same port: the gateway's static entry

    fault = Fault("node_killed", "SIGKILL node-b under load, restart it on the same port", inject, heal)
    return await fault_sequence(cluster, params, faulty_url=cluster.nodes[FAULTY].url, faults=[fault])


def _front_faults(kind: str, all_modes: list[tuple[str, str, str, float]], quick: int) -> Scenario:
    """node-b behind one fault front (`bench.chaos.front`), switched to each mode in turn and back to pass;
    a quick run takes the first `quick` modes."""

    async def scenario(cluster: Cluster, params: ChaosParams) -> list[ScenarioResult]:
        modes = all_modes[:quick] if params.quick else all_modes
        front: Front = await asyncio.to_thread(cluster.start_front, kind, cluster.nodes[FAULTY].url)

        def switch(mode: str, delay_ms: float) -> Step:
            async def step() -> None:
                await asyncio.to_thread(front.set_mode, mode, delay_ms)

            return step

        faults = [Fault(name, text, switch(mode, delay), switch("pass", 0)) for name, text, mode, delay in modes]
        try:
            results = await fault_sequence(cluster, params, faulty_url=front.url, faults=faults)
            seen = (await asyncio.to_thread(front.stats))["seen"]
        finally:
            await asyncio.to_thread(front.stop)
        for result, (_, _, mode, _) in zip(results, modes, strict=False):
            # How many requests the gateway sent into the fault: few means it steered around it early.
            result.figures["attempts_into_fault"] = sum(n for key, n in seen.items() if key.endswith(f":{mode}"))
        return results

    return scenario


async def gateway_restart(cluster: Cluster, params: ChaosParams) -> list[ScenarioResult]:
    """SIGTERM the gateway under load (in-flight requests must finish), start it again on its port."""
    port = free_port()
    nodes = [cluster.nodes[HEALTHY].url, cluster.nodes[FAULTY].url]
    env = dict(params.gateway_env)
    gateway = await asyncio.to_thread(cluster.start_gateway, nodes, port=port, extra_env=env)
    await asyncio.to_thread(cluster.wait_serving, gateway, {HEALTHY, FAULTY})
    traffic = Traffic(
        f"{gateway.url}{PREFIX}/inference",
        inference_body(),
        headers=cluster.auth,
        concurrency=params.concurrency,
        timeout_s=params.timeout_s,
    )
    stop = asyncio.Event()
    run = asyncio.create_task(traffic.run(stop))
    try:
        await asyncio.sleep(params.warm_s)
        stop_at = time.monotonic()
        exit_code = await asyncio.to_thread(cluster.stop_gateway, gateway)
        stopped_at = time.monotonic()
        gateway = await asyncio.to_thread(cluster.start_gateway, nodes, port=port, extra_env=env)
        back_at = time.monotonic()
        await asyncio.to_thread(cluster.wait_serving, gateway, {HEALTHY, FAULTY})
        await asyncio.sleep(max(params.after_s, params.fault_s / 2))
    finally:
        stop.set()
        await run
        await asyncio.to_thread(cluster.stop_gateway, gateway)
    in_flight = [s for s in traffic.samples if s.start < stop_at < s.end]
    result = figures(traffic.samples, window=(stop_at, back_at))
    result |= {
        "exit_code": exit_code,
        "shutdown_s": round(stopped_at - stop_at, 3),
        "downtime_s": round(back_at - stop_at, 3),
        "in_flight_at_sigterm": len(in_flight),
        "in_flight_answered": sum(s.status == 200 for s in in_flight),
    }
    targets = {
        "in_flight_lost": _at_most(len(in_flight) - result["in_flight_answered"], 0),
        "failed": _at_most(result["failed"], 0),
        "clean_exit": {"value": exit_code, "met": exit_code in (0, -15)},
    }
    notes = ["requests refused while no gateway listens are counted as refused, not lost: the client is told"]
    return [
        ScenarioResult(
            "gateway_restart",
            "SIGTERM the gateway under load, restart it",
            figures=result,
            targets=targets,
            notes=notes,
        )
    ]


SCENARIOS: dict[str, Scenario] = {
    "node_killed": node_killed,
    "http_faults": _front_faults(
        "http",
        [
            ("node_hangs", "node-b answers health but never answers an inference request", "hang", 0),
            ("node_truncated", "node-b's binary tensor answers cut in half", "truncated", 0),
            ("node_garbage", "node-b answers inference with random bytes", "garbage", 0),
            ("node_bad_json", "node-b answers 200 JSON that is not v2", "badjson", 0),
            ("node_errors", "node-b answers every inference with 500", "error500", 0),
        ],
        quick=2,
    ),
    "tcp_faults": _front_faults(
        "tcp",
        [
            ("node_blackhole", "node-b accepts connections and never answers (health too)", "blackhole", 0),
            ("slow_link", "200 ms each way on node-b's link (TCP delay proxy)", "delay", 200),
        ],
        quick=1,
    ),
    "gateway_restart": gateway_restart,
}
