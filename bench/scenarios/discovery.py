"""`distinfer bench discovery`: how fast routing follows nodes that join and leave.

One real gateway process (`DISTINFER_DISCOVERY=static,consul[,dns]`) in front of real nodes, with
steady traffic from this process (`workers` loops, one request at a time each). A stable node
is always listed; a second one is made to join and leave through each source in turn:

- consul: its service registered / deregistered through the agent API (the fake agent of
  `bench.fakes.consul`, or a real one with `--consul-url`);
- file: the `DISTINFER_NODES_FILE` rewritten (renamed over) with and without it;
- dns: a real dnsmasq restarted with and without its SRV record (TTL 1 s), when dnsmasq exists;
- self-registration: `distinfer node --consul-url` started (joins when its registration lands),
  stopped with SIGTERM (deregisters on the way out), and killed with SIGKILL (a crash).

Per trial: join = from the change to the first answer served by the node; leave = from the change
to the last answer served by (or, after a crash, retried away from) the node among requests sent
after it. Requests sent before a change were routed before it and do not count. The target is
under one second for Consul and file changes.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from rich.console import Console
from rich.table import Table

from bench.dnsmasq import Dnsmasq, find_dnsmasq
from bench.fakes.consul import FakeConsulThread
from bench.machine import describe_machine, load_average
from gateway_plugin.processes import ServerProcess, start_gateway, start_node
from worker.bundled import bundled_models
from worker.registration import ConsulRegistration, service_definition

__all__ = ["DiscoveryParams", "render_discovery", "run_discovery"]

PREFIX = "/api/v1/distributed"
TARGET_MS = 1000.0
_BODY = {"model": "digits", "inputs": [[0.0, 0.0, 0.3, 0.8, 0.8, 0.1, 0.0, 0.0]] * 8, "timeout_ms": 5000}


@dataclass(frozen=True, slots=True)
class DiscoveryParams:
    trials: int = 5
    node_trials: int = 3  # self-registration trials start real node processes: fewer
    workers: int = 2
    consul_url: str | None = None
    trial_timeout_s: float = 15.0
    quick: bool = False

    @classmethod
    def make(cls, *, quick: bool = False, trials: int | None = None, consul_url: str | None = None) -> DiscoveryParams:
        base = cls(trials=2, node_trials=1, quick=True) if quick else cls()
        chosen = trials or base.trials
        if not 1 <= chosen <= 50:
            raise ValueError("trials must be 1..50")
        return cls(trials=chosen, node_trials=min(base.node_trials, chosen), consul_url=consul_url, quick=quick)


@dataclass(frozen=True, slots=True)
class Sample:
    sent: float
    received: float
    status: int
    node_id: str | None
    attempts: int


@dataclass
class Traffic:
    """Steady requests through the gateway; every answer kept (bounded by the run's length)."""

    url: str
    samples: list[Sample] = field(default_factory=list)

    async def worker(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                async with session.post(f"{self.url}{PREFIX}/inference", json=_BODY) as response:
                    body = await response.json(content_type=None)
                    status = response.status
            except (aiohttp.ClientError, TimeoutError, ValueError):
                body, status = {}, 0
            node = body.get("node_id") if isinstance(body, dict) else None
            attempts = body.get("attempts", 1) if isinstance(body, dict) else 1
            self.samples.append(Sample(sent, time.monotonic(), status, node, int(attempts or 1)))

    def first_from(self, node_id: str, after: float) -> Sample | None:
        return next((s for s in self.samples if s.node_id == node_id and s.sent >= after), None)

    def last_routed_ms(self, node_id: str, after: float, *, crashed: bool = False) -> float:
        """ms from `after` to the last answer routed to the node (after a crash: retried away from it)."""
        hits = [
            s.received
            for s in self.samples
            if s.sent >= after and (s.node_id == node_id or (crashed and s.attempts > 1))
        ]
        return max(0.0, (max(hits) - after) * 1000) if hits else 0.0

    @property
    def first_ok(self) -> float:
        return min((s.sent for s in self.samples if s.status == 200), default=float("inf"))

    def served_since(self, node_id: str, after: float) -> int:
        return sum(1 for s in self.samples if s.node_id == node_id and s.sent >= after)

    def failed_since(self, after: float) -> int:
        return sum(1 for s in self.samples if s.sent >= after and s.status != 200)


def _nodes(gateway: ServerProcess) -> dict[str, str]:
    response = httpx.get(f"{gateway.url}{PREFIX}/nodes", timeout=5)
    return {n["node_id"]: n["status"] for n in response.json()}


async def _until(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.005)
    return False


def _summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50_ms": None, "max_ms": None, "values_ms": []}
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(values), 1),
        "max_ms": round(max(values), 1),
        "values_ms": [round(v, 1) for v in values],
    }


class _Run:
    def __init__(self, params: DiscoveryParams, console: Console, stack: ExitStack) -> None:
        self.params = params
        self.console = console
        self.errors: list[str] = []
        self.results: dict[str, dict[str, list[float]]] = {}
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="distinfer-discovery-")))
        self.fake: FakeConsulThread | None = None
        if params.consul_url is None:
            self.fake = FakeConsulThread(min_deregister_s=0)
            self.consul_url = self.fake.start()
            stack.callback(self.fake.stop)
        else:
            self.consul_url = params.consul_url
        self.service = f"distinfer-bench-{uuid.uuid4().hex[:8]}"
        self.dnsmasq: Dnsmasq | None = None
        if find_dnsmasq() is not None:
            self.dnsmasq = Dnsmasq(folder)
            self.dnsmasq.serve({})
            stack.callback(self.dnsmasq.stop)
        self.nodes_file = folder / "nodes.yaml"
        repository = bundled_models()
        self.stable = start_node(repository, "bench-stable", extra_args=["--models", "digits"])
        stack.callback(self.stable.stop)
        self.joiner = start_node(repository, "bench-joiner", extra_args=["--models", "digits"])
        stack.callback(self.joiner.stop)
        self.repository = repository
        self._write_file(self.stable)
        env = {
            "ENABLE_DISTRIBUTED_INFERENCE": "true",
            "DISTINFER_AUTH_DISABLED": "true",
            "DISTINFER_DISCOVERY": "static,consul" + (",dns" if self.dnsmasq else ""),
            "DISTINFER_NODES_FILE": str(self.nodes_file),
            "DISTINFER_CONSUL_URL": self.consul_url,
            "DISTINFER_CONSUL_SERVICE": self.service,
            # Even shares, so the joining node gets traffic at once and the leaving one until it is gone.
            "DISTINFER_STRATEGY": "round_robin",
        }
        if self.dnsmasq is not None:
            env |= {"DISTINFER_DNS_SRV": self.dnsmasq.srv_name, "DISTINFER_DNS_NAMESERVER": self.dnsmasq.nameserver}
        self.gateway = start_gateway(env)
        stack.callback(self.gateway.stop)
        for server in (self.stable, self.joiner, self.gateway):
            server.wait_ready(timeout_s=60)
        self.traffic = Traffic(self.gateway.url)
        self.gateway_env = {k: v for k, v in env.items() if k != "DISTINFER_CONSUL_URL"}

    def _write_file(self, *nodes: ServerProcess) -> None:
        tmp = self.nodes_file.with_suffix(".tmp")
        tmp.write_text("nodes:\n" + "".join(f"  - url: {n.url}\n" for n in nodes), encoding="utf-8")
        os.replace(tmp, self.nodes_file)

    def _consul(self, method: str, path: str, body: dict[str, Any] | None = None) -> None:
        httpx.request(method, f"{self.consul_url}{path}", json=body, timeout=5).raise_for_status()

    def _register_joiner(self) -> None:
        port = int(self.joiner.url.rsplit(":", 1)[1])
        reg = ConsulRegistration(url=self.consul_url, advertise_host="127.0.0.1", port=port, service=self.service)
        d = service_definition(reg, "bench-joiner", {"digits": "onnx"})
        check = {"HTTP": d["check"]["http"], "Interval": "1s", "Timeout": "1s", "Status": "passing"}
        body = {"Name": d["name"], "ID": d["service_id"], "Address": d["address"], "Port": d["port"]}
        self._consul(
            "PUT", "/v1/agent/service/register", {**body, "Meta": d["meta"], "Tags": d["tags"], "Check": check}
        )

    def _record(self, source: str, key: str, value: float) -> None:
        self.results.setdefault(source, {}).setdefault(key, []).append(value)

    async def _routed(self, node_id: str, since: float) -> bool:
        return await _until(lambda: self.traffic.first_from(node_id, since) is not None, self.params.trial_timeout_s)

    async def _in_rotation(self, node_id: str, since: float) -> bool:
        return await _until(lambda: self.traffic.served_since(node_id, since) >= 3, 5.0)

    async def _gone(self, node_id: str) -> bool:
        return await _until(lambda: node_id not in _nodes(self.gateway), self.params.trial_timeout_s)

    async def join_leave(self, source: str, join: Callable[[], None], leave: Callable[[], None]) -> None:
        for trial in range(self.params.trials):
            t0 = time.monotonic()
            await asyncio.to_thread(join)
            if not await self._routed("bench-joiner", t0):
                self.errors.append(f"{source} trial {trial}: the joining node was never routed to")
                return
            first = self.traffic.first_from("bench-joiner", t0)
            assert first is not None
            self._record(source, "join_ms", (first.received - t0) * 1000)
            # Leave only once the node is in rotation, so that there is something to stop routing.
            if not await self._in_rotation("bench-joiner", t0):
                self.errors.append(f"{source} trial {trial}: the joined node got fewer than 3 requests in 5 s")
            t0 = time.monotonic()
            await asyncio.to_thread(leave)
            if not await self._gone("bench-joiner"):
                self.errors.append(f"{source} trial {trial}: the leaving node was never removed")
                return
            await asyncio.sleep(0.2)  # answers still on their way come in
            self._record(source, "leave_ms", self.traffic.last_routed_ms("bench-joiner", t0))
            self._record(source, "failed", float(self.traffic.failed_since(t0)))

    async def self_registration(self, trial: int) -> None:
        node_id = f"bench-self-{trial}"
        args = ["--models", "digits", "--consul-url", self.consul_url, "--consul-service", self.service]
        node = await asyncio.to_thread(start_node, self.repository, node_id, extra_args=args)
        try:
            await asyncio.to_thread(node.wait_ready, 60)
            if not await self._routed(node_id, 0):
                self.errors.append(f"self-registration trial {trial}: never routed to")
                return
            first = self.traffic.first_from(node_id, 0)
            assert first is not None
            if self.fake is not None:
                registered = [
                    t for t in self.fake.write_times("PUT", "/v1/agent/service/register") if t <= first.received
                ]
                if registered:
                    self._record("self-registration", "join_ms", (first.received - registered[-1]) * 1000)
            await self._in_rotation(node_id, 0)
            t0 = time.monotonic()
            await asyncio.to_thread(node.stop)
            if not await self._gone(node_id):
                self.errors.append(f"self-registration trial {trial}: not removed after SIGTERM")
                return
            self._record("self-registration", "removed_ms", (time.monotonic() - t0) * 1000)
            await asyncio.sleep(0.2)
            self._record("self-registration", "leave_ms", self.traffic.last_routed_ms(node_id, t0))
            self._record("self-registration", "failed", float(self.traffic.failed_since(t0)))
        finally:
            await asyncio.to_thread(node.stop)

    async def crash(self, trial: int) -> None:
        node_id = f"bench-crash-{trial}"
        args = ["--models", "digits", "--consul-url", self.consul_url, "--consul-service", self.service]
        node = await asyncio.to_thread(start_node, self.repository, node_id, extra_args=args)
        try:
            await asyncio.to_thread(node.wait_ready, 60)
            if not await self._routed(node_id, 0):
                self.errors.append(f"crash trial {trial}: never routed to")
                return
            await self._in_rotation(node_id, 0)
            t0 = time.monotonic()
            await asyncio.to_thread(node.kill)
            out_of_rotation = await _until(
                lambda: _nodes(self.gateway).get(node_id, "gone") != "online", self.params.trial_timeout_s
            )
            if out_of_rotation:
                self._record("crash", "out_of_rotation_ms", (time.monotonic() - t0) * 1000)
            if not await self._gone(node_id):
                self.errors.append(f"crash trial {trial}: Consul never dropped the crashed node")
                return
            self._record("crash", "removed_ms", (time.monotonic() - t0) * 1000)
            await asyncio.sleep(0.2)
            self._record("crash", "leave_ms", self.traffic.last_routed_ms(node_id, t0, crashed=True))
            self._record("crash", "failed", float(self.traffic.failed_since(t0)))
        finally:
            await asyncio.to_thread(node.stop)
            await asyncio.to_thread(self._consul, "PUT", f"/v1/agent/service/deregister/{self.service}-{node_id}")

    async def measure(self) -> None:
        stop = asyncio.Event()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            workers = [asyncio.create_task(self.traffic.worker(session, stop)) for _ in range(self.params.workers)]
            try:
                if not await _until(lambda: any(s.status == 200 for s in self.traffic.samples), 15):
                    self.errors.append("the stable node was never served through the gateway")
                    return
                service_id = f"{self.service}-bench-joiner"
                self.console.print("consul: register / deregister through the agent API")
                await self.join_leave(
                    "consul",
                    self._register_joiner,
                    lambda: self._consul("PUT", f"/v1/agent/service/deregister/{service_id}"),
                )
                self.console.print("file: rewrite DISTINFER_NODES_FILE")
                await self.join_leave(
                    "file",
                    lambda: self._write_file(self.stable, self.joiner),
                    lambda: self._write_file(self.stable),
                )
                if self.dnsmasq is not None:
                    port = int(self.joiner.url.rsplit(":", 1)[1])
                    dns = self.dnsmasq
                    self.console.print("dns: restart dnsmasq with / without the SRV record")
                    await self.join_leave("dns", lambda: dns.serve({"joiner": port}), lambda: dns.serve({}))
                for trial in range(self.params.node_trials):
                    self.console.print(
                        f"node lifecycle {trial + 1}/{self.params.node_trials}: --consul-url, SIGTERM, SIGKILL"
                    )
                    await self.self_registration(trial)
                    await self.crash(trial)
            finally:
                stop.set()
                await asyncio.gather(*workers)


def run_discovery(params: DiscoveryParams, console: Console) -> dict[str, Any]:
    started = time.monotonic()
    machine = describe_machine()  # its load average: before the run
    with ExitStack() as stack:
        run = _Run(params, console, stack)
        setup_s = time.monotonic() - started
        asyncio.run(run.measure())
    results: dict[str, dict[str, Any]] = {
        source: {key: (_summary(values) if key != "failed" else int(sum(values))) for key, values in figures.items()}
        for source, figures in run.results.items()
    }
    targets = {}
    for source in ("consul", "file"):
        for key in ("join_ms", "leave_ms"):
            worst = results.get(source, {}).get(key, {}).get("max_ms")
            targets[f"{source}_{key}_max"] = {
                "value": worst,
                "target": TARGET_MS,
                "met": worst is not None and worst < TARGET_MS,
            }
    return {
        "scenario": "discovery",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "params": asdict(params),
        "consul": "real" if params.consul_url else "fake (bench.fakes.consul)",
        "dnsmasq": run.dnsmasq is not None,
        "gateway_env": run.gateway_env,
        # Everything here is a process on one machine: a busy machine adds scheduling delays.
        "machine": {**machine, "loadavg_at_end": load_average()},
        "requests": len(run.traffic.samples),
        # Before the first answer the gateway may still be probing the stable node: count from there.
        "failed_requests": run.traffic.failed_since(run.traffic.first_ok),
        "results": results,
        "targets": targets,
        "errors": run.errors,
        "setup_s": round(setup_s, 1),
        "wall_s": round(time.monotonic() - started, 1),
    }


def render_discovery(document: dict[str, Any], console: Console) -> None:
    table = Table(title="discovery: change -> routing (ms)", title_justify="left")
    for column in ("source", "measure", "n", "p50", "max", "failed requests"):
        table.add_column(column, justify="left" if column in ("source", "measure") else "right", no_wrap=True)
    for source, figures in document["results"].items():
        failed = figures.get("failed", 0)
        for key, summary in figures.items():
            if key == "failed":
                continue
            table.add_row(source, key, str(summary["n"]), str(summary["p50_ms"]), str(summary["max_ms"]), str(failed))
    console.print(table)
    for name, verdict in document["targets"].items():
        met = "met" if verdict["met"] else "[red]not met[/red]"
        console.print(f"{name}: {verdict['value']} ms (target < {verdict['target']:.0f}) {met}")
    console.print(
        f"requests {document['requests']} (failed {document['failed_requests']}), consul {document['consul']}, "
        f"wall {document['wall_s']} s (setup {document['setup_s']} s)"
    )
    for line in document["errors"]:
        console.print(f"[red]error:[/red] {line}")
