"""Task scenarios (CONTRACT §4 /tasks) over a real `redis-server`: Redis restarted under a two-replica
task load, and the gateway restarted with tasks queued.

A task is lost when it was accepted (202) and never reached a final state (`completed`, `error`,
`cancelled`) by the end of the drain, or vanished (404). Submissions refused while Redis is down
(503) or the queue is full (429) are counted as refused: the client was told.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.chaos.cluster import PREFIX, Cluster
from bench.chaos.scenarios import FAULTY, HEALTHY, ChaosParams, ScenarioResult, inference_body
from gateway_plugin.processes import ServerProcess, free_port

__all__ = ["TASK_SCENARIOS", "RedisServer", "TaskLoad"]

FINAL = frozenset({"completed", "error", "cancelled"})


class RedisServer:
    """A `redis-server` on a loopback port, appending every write to disk (fsync always) so a restart keeps it."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.TemporaryDirectory(prefix="distinfer-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self._dir.name]
        args += ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise TimeoutError("redis-server did not listen within 10 s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self._dir.cleanup()


@dataclass
class TaskLoad:
    """Clients submitting inference tasks round-robin over the gateway replicas, and the drain after."""

    gateways: list[str]
    headers: dict[str, str]
    concurrency: int = 4
    accepted: dict[str, float] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)

    def body(self) -> bytes:
        request = inference_body().decode()
        return f'{{"kind": "inference", "priority": "normal", "request": {request}}}'.encode()

    async def submit(self, stop: asyncio.Event, limit: int = 100_000) -> None:
        body = self.body()
        headers = {"Content-Type": "application/json", **self.headers}
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:

            async def client(offset: int) -> None:
                turn = offset
                while not stop.is_set() and len(self.accepted) + sum(self.refused.values()) < limit:
                    url = f"{self.gateways[turn % len(self.gateways)]}{PREFIX}/tasks"
                    turn += 1
                    try:
                        async with session.post(url, data=body) as response:
                            answer = await response.json(content_type=None)
                            if response.status == 202:
                                self.accepted[str(answer["task_id"])] = time.monotonic()
                            else:
                                self.refused[str(response.status)] += 1
                                await asyncio.sleep(0.05)
                    except (TimeoutError, aiohttp.ClientError, ValueError, KeyError) as exc:
                        self.refused[type(exc).__name__] += 1
                        await asyncio.sleep(0.05)

            await asyncio.gather(*(client(i) for i in range(self.concurrency)))

    async def drain(self, timeout_s: float) -> dict[str, str]:
        """Poll every accepted task (on the replicas in turn) until all are final or `timeout_s` passes."""
        states: dict[str, str] = {}
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), headers=self.headers) as session:
            while time.monotonic() < deadline:
                open_ids = [task for task in self.accepted if states.get(task) not in FINAL]
                if not open_ids:
                    break
                for index, task in enumerate(open_ids):
                    url = f"{self.gateways[index % len(self.gateways)]}{PREFIX}/tasks/{task}"
                    with contextlib.suppress(TimeoutError, aiohttp.ClientError, ValueError):
                        async with session.get(url) as response:
                            states[task] = "vanished" if response.status == 404 else (await response.json())["status"]
                await asyncio.sleep(0.2)
        return states


def _task_figures(load: TaskLoad, states: dict[str, str]) -> dict[str, Any]:
    counted = Counter(states.get(task, "unknown") for task in load.accepted)
    lost = sum(n for state, n in counted.items() if state not in FINAL)
    server_errors = sum(
        n
        for status, n in load.refused.items()
        if status.isdigit() and int(status) >= 500 and status not in ("503", "504")
    )
    return {
        "server_errors": server_errors,
        "sent": len(load.accepted) + sum(load.refused.values()),
        "accepted": len(load.accepted),
        "refused": dict(load.refused),
        "completed": counted.get("completed", 0),
        "failed": counted.get("error", 0),
        "lost": lost,
        "states": dict(counted),
    }


def _task_targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        "lost": {"value": result["lost"], "max": 0, "met": result["lost"] == 0},
        "failed": {"value": result["failed"], "max": 0, "met": result["failed"] == 0},
        "accepted": {"value": result["accepted"], "met": result["accepted"] > 0},
        # A submission the store cannot take now is a 503 (CONTRACT §5), never a 500.
        "server_errors": {"value": result["server_errors"], "max": 0, "met": result["server_errors"] == 0},
    }


def _env(redis: RedisServer) -> dict[str, str]:
    # A short lease: a stopped replica's running tasks go back to the queue within a second or two.
    return {"DISTINFER_TASK_STORE": redis.url, "DISTINFER_TASK_LEASE_S": "2", "DISTINFER_TASK_WORKERS": "4"}


def _skipped(name: str, fault: str) -> list[ScenarioResult] | None:
    if shutil.which("redis-server") is None:
        return [ScenarioResult(name, fault, status="skipped", notes=["redis-server is not installed (make setup)"])]
    return None


async def redis_restart(cluster: Cluster, params: ChaosParams) -> list[ScenarioResult]:
    """Two gateway replicas share one Redis; Redis is SIGKILLed under task load and started again."""
    fault = "SIGKILL redis-server (AOF, fsync always) under a two-replica task load, start it again"
    if (skipped := _skipped("redis_restart", fault)) is not None:
        return skipped
    redis = RedisServer()
    await asyncio.to_thread(redis.start)
    nodes = [cluster.nodes[HEALTHY].url, cluster.nodes[FAULTY].url]
    env = {**dict(params.gateway_env), **_env(redis)}
    replicas: list[ServerProcess] = []
    try:
        for _ in range(2):
            replicas.append(await asyncio.to_thread(cluster.start_gateway, nodes, extra_env=env))
        load = TaskLoad([g.url for g in replicas], cluster.auth, concurrency=params.concurrency)
        stop = asyncio.Event()
        submitting = asyncio.create_task(load.submit(stop))
        try:
            await asyncio.sleep(params.warm_s + 0.5)
            down_at = time.monotonic()
            await asyncio.to_thread(redis.kill)
            await asyncio.sleep(params.fault_s)
            await asyncio.to_thread(redis.start)
            back_at = time.monotonic()
            await asyncio.sleep(params.after_s + 0.5)
        finally:
            stop.set()
            await submitting
        states = await load.drain(params.recover_timeout_s)
    finally:
        for gateway in replicas:
            await asyncio.to_thread(cluster.stop_gateway, gateway)
        await asyncio.to_thread(redis.close)
    result = _task_figures(load, states) | {"redis_down_s": round(back_at - down_at, 3), "replicas": 2}
    return [ScenarioResult("redis_restart", fault, figures=result, targets=_task_targets(result))]


async def tasks_gateway_restart(cluster: Cluster, params: ChaosParams) -> list[ScenarioResult]:
    """A burst of tasks queued on one gateway (Redis store); the gateway is stopped and started again."""
    fault = "a burst of tasks queued, the gateway SIGTERMed and started again (Redis task store)"
    if (skipped := _skipped("tasks_gateway_restart", fault)) is not None:
        return skipped
    redis = RedisServer()
    await asyncio.to_thread(redis.start)
    nodes = [cluster.nodes[HEALTHY].url, cluster.nodes[FAULTY].url]
    env = {**dict(params.gateway_env), **_env(redis)}
    port = free_port()
    gateway = await asyncio.to_thread(cluster.start_gateway, nodes, extra_env=env, port=port)
    try:
        load = TaskLoad([gateway.url], cluster.auth, concurrency=params.concurrency)
        burst = 40 if params.fault_s < 5 else 400
        await load.submit(asyncio.Event(), limit=burst)
        exit_code = await asyncio.to_thread(cluster.stop_gateway, gateway)
        gateway = await asyncio.to_thread(cluster.start_gateway, nodes, extra_env=env, port=port)
        states = await load.drain(params.recover_timeout_s)
    finally:
        await asyncio.to_thread(cluster.stop_gateway, gateway)
        await asyncio.to_thread(redis.close)
    result = _task_figures(load, states) | {"burst": burst, "exit_code": exit_code}
    return [ScenarioResult("tasks_gateway_restart", fault, figures=result, targets=_task_targets(result))]


TASK_SCENARIOS = {"redis_restart": redis_restart, "tasks_gateway_restart": tasks_gateway_restart}
