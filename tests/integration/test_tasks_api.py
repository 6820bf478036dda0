"""Tasks over real nodes: priorities, 429s, cancelling running work, owners; Redis shared by replicas."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from gateway_plugin import DistributedInference
from gateway_plugin.auth import ADMIN, INFER
from gateway_plugin.processes import ServerProcess, start_gateway
from gateway_plugin.settings import LimitSettings, TaskSettings
from tests.integration.conftest import TEST_JWT_SECRET, bearer, mounted, settings_for
from tests.integration.orchestration_helpers import SLOW_MODEL, eventually, set_latency, slow_node_fixture
from tests.integration.redis_server import RedisServer

API = "/api/v1/distributed"
IMAGE = [[0.0] * 8] * 8


@pytest.fixture(scope="module")
def slow_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from slow_node_fixture(tmp_path_factory)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def _inference(model: str = "digits", **extra: Any) -> dict[str, Any]:
    return {"kind": "inference", "request": {"model": model, "inputs": IMAGE, "timeout_ms": 20_000}, **extra}


async def _submit(client: httpx.AsyncClient, body: dict[str, Any], **kwargs: Any) -> str:
    response = await client.post(f"{API}/tasks", json=body, **kwargs)
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"{API}/tasks/{response.json()['task_id']}"
    return str(response.json()["task_id"])


async def _task(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    response = await client.get(f"{API}/tasks/{task_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _until(client: httpx.AsyncClient, task_id: str, *statuses: str, timeout_s: float = 30) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        task = await _task(client, task_id)
        return task if task["status"] in statuses else None

    return await eventually(probe, timeout_s=timeout_s)


@pytest.fixture
async def gateway(
    two_nodes: list[ServerProcess], slow_node: ServerProcess
) -> AsyncIterator[tuple[httpx.AsyncClient, DistributedInference]]:
    urls = [node.url for node in [*two_nodes, slow_node]]
    settings = settings_for(urls, tasks=TaskSettings(workers=1, queue_size=3), limits=LimitSettings(max_inflight=2))
    async with mounted(settings) as pair:
        yield pair


async def test_priorities_order_the_queue_and_a_full_queue_answers_429(
    gateway: tuple[httpx.AsyncClient, DistributedInference], slow_node: ServerProcess
) -> None:
    client, _ = gateway
    set_latency(slow_node, 2500)
    blocker = await _submit(client, _inference(SLOW_MODEL))
    await _until(client, blocker, "running")
    ids = {p: await _submit(client, _inference(priority=p)) for p in ("low", "normal", "high")}
    full = await client.post(f"{API}/tasks", json=_inference())
    assert full.status_code == 429
    assert full.json()["code"] == "queue_full"
    assert 1 <= int(full.headers["Retry-After"]) <= 60
    listing = (await client.get(f"{API}/tasks", params={"status": "pending"})).json()
    assert sorted(t["task_id"] for t in listing["tasks"]) == sorted(ids.values())
    assert listing["queue"]["depth"] == 3
    assert listing["queue"]["by_priority"] == {"high": 1, "normal": 1, "low": 1}
    done = {p: await _until(client, task_id, "completed") for p, task_id in ids.items()}
    assert done["high"]["started_at"] < done["normal"]["started_at"] < done["low"]["started_at"]
    assert done["high"]["result"]["outputs"][0]["shape"] == [1, 10]
    assert all(task["attempts"] == 1 for task in done.values())


async def test_inference_answers_429_when_the_gateway_is_saturated(
    gateway: tuple[httpx.AsyncClient, DistributedInference], slow_node: ServerProcess
) -> None:
    client, _ = gateway
    set_latency(slow_node, 3000)  # the first two are still running when the other four arrive
    body = {"model": SLOW_MODEL, "inputs": IMAGE, "timeout_ms": 20_000}
    responses = await asyncio.gather(*(client.post(f"{API}/inference", json=body) for _ in range(6)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200, 429, 429, 429, 429]  # DISTINFER_MAX_INFLIGHT=2
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["code"] == "saturated"


async def test_every_synchronous_route_answers_429_when_the_gateway_is_saturated(
    gateway: tuple[httpx.AsyncClient, DistributedInference], slow_node: ServerProcess
) -> None:
    """DISTINFER_MAX_INFLIGHT holds for every route that answers while the client waits: the
    streams and the v2 relay once took no place and were never refused."""
    client, distributed = gateway
    svc = await distributed.services()
    assert svc.admission is not None
    set_latency(slow_node, 3000)
    slow = {"model": SLOW_MODEL, "inputs": IMAGE, "timeout_ms": 20_000}
    blockers = [asyncio.create_task(client.post(f"{API}/inference", json=slow)) for _ in range(2)]
    await eventually(lambda: _some(svc.admission is not None and svc.admission.in_flight == 2))
    one = {"model": "digits", "inputs": IMAGE}
    v2 = {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]}
    refused = {
        "batch": client.post(f"{API}/inference/batch", json={"requests": [one]}),
        "batch stream": client.post(f"{API}/inference/batch", params={"stream": "true"}, json={"requests": [one]}),
        "parallel": client.post(f"{API}/inference/parallel", json={"models": ["digits"], "inputs": IMAGE}),
        "pipeline": client.post(f"{API}/inference/pipeline", json={"stages": [{"id": "a", **one}]}),
        "token stream": client.get(f"{API}/inference/stream/charlm", params={"prompt": "def "}),
        "result stream": client.post(f"{API}/inference/stream/digits", json={"inputs": IMAGE}),
        "v2 relay": client.post(f"{API}/v2/models/digits/infer", json=v2),
    }
    for route, call in refused.items():
        response = await call
        assert response.status_code == 429, (route, response.status_code, response.text)
        assert response.json()["code"] == "saturated", route
        assert response.headers["Retry-After"] == "1", route
    assert [(await blocker).status_code for blocker in blockers] == [200, 200]
    assert svc.admission.in_flight == 0
    # Served once there is room, and each gives its place back when it ends.
    tokens = await client.get(f"{API}/inference/stream/charlm", params={"prompt": "def ", "max_tokens": 4})
    assert tokens.status_code == 200
    assert "event: done" in tokens.text
    result = await client.post(f"{API}/inference/stream/digits", json={"inputs": IMAGE})
    assert result.status_code == 200
    assert "event: result" in result.text
    relayed = await client.post(f"{API}/v2/models/digits/infer", json=v2)
    assert relayed.status_code == 200, relayed.text
    unknown = await client.get(f"{API}/inference/stream/no_such_model", params={"prompt": "def "})
    assert unknown.status_code == 404  # its node stream never opened: the place goes back at once
    assert svc.admission.in_flight == 0


async def test_cancelling_a_running_task_cancels_its_node_call(
    gateway: tuple[httpx.AsyncClient, DistributedInference], slow_node: ServerProcess
) -> None:
    client, distributed = gateway
    set_latency(slow_node, 10_000)
    task_id = await _submit(client, _inference(SLOW_MODEL))
    await _until(client, task_id, "running")
    await eventually(lambda: _some(distributed.pool.in_flight(slow_node.url) == 1))
    started = time.monotonic()
    response = await client.delete(f"{API}/tasks/{task_id}")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    await eventually(lambda: _some(distributed.pool.in_flight(slow_node.url) == 0), timeout_s=5)
    assert time.monotonic() - started < 5  # long before the node would have answered (10 s)
    assert (await _task(client, task_id))["status"] == "cancelled"


async def _some(condition: bool) -> bool | None:
    return True if condition else None


async def test_tasks_are_checked_when_submitted_and_visible_only_to_their_owner(
    gateway: tuple[httpx.AsyncClient, DistributedInference],
) -> None:
    client, _ = gateway
    alice, bob, admin = bearer(INFER, sub="alice"), bearer(INFER, sub="bob"), bearer(INFER, ADMIN, sub="root")
    task_id = await _submit(client, _inference(), headers=alice)
    assert (await client.get(f"{API}/tasks/{task_id}", headers=bob)).status_code == 404
    assert (await client.delete(f"{API}/tasks/{task_id}", headers=bob)).status_code == 404
    assert (await client.get(f"{API}/tasks", headers=bob)).json()["tasks"] == []
    assert (await client.get(f"{API}/tasks/{task_id}", headers=admin)).status_code == 200
    mine = (await client.get(f"{API}/tasks", headers=alice)).json()["tasks"]
    assert [t["task_id"] for t in mine] == [task_id]
    cycle = [{"id": "a", "model": "digits", "inputs": IMAGE, "depends_on": ["a"]}]
    bad = [
        ({"kind": "pipeline", "request": {"stages": cycle}}, 422),
        ({"kind": "inference", "request": {"model": "digits", "inputs": [[1, 2]]}}, 400),
        ({"kind": "inference", "request": {"model": "digits"}}, 422),
        ({"kind": "shell", "request": {}}, 422),
    ]
    for body, status in bad:
        response = await client.post(f"{API}/tasks", json=body, headers=alice)
        assert response.status_code == status, response.text
    assert (await client.get(f"{API}/tasks/{'f' * 32}", headers=admin)).status_code == 404


async def test_parallel_tasks_are_refused_at_submission_as_the_endpoint_refuses_them(
    gateway: tuple[httpx.AsyncClient, DistributedInference],
) -> None:
    """Regression (audit): a parallel task was checked only for its number of models, so inputs or a
    strategy that `/inference/parallel` refuses at once were 202, and failed later."""
    client, _ = gateway
    bad = [
        {"models": ["digits", "digits_a"], "inputs": IMAGE, "strategy": "no_such_strategy"},
        {"models": ["digits"], "inputs": {"x": 1}},
        {"models": ["digits", "digits_a"], "inputs": [1, 2]},
    ]
    for request in bad:
        now = await client.post(f"{API}/inference/parallel", json=request)
        submitted = await client.post(f"{API}/tasks", json={"kind": "parallel", "request": request})
        assert 400 <= now.status_code < 500, now.text
        assert submitted.status_code == now.status_code, submitted.text
        assert submitted.json()["detail"] == now.json()["detail"]
    good = {"models": ["digits", "digits_a"], "inputs": IMAGE, "aggregation": "majority_vote"}
    done = await _until(client, await _submit(client, {"kind": "parallel", "request": good}), "completed")
    assert done["result"]["answered"] == 2


async def test_a_task_the_local_fallback_refuses_ends_with_that_refusal_not_a_500(repository: Path) -> None:
    """Regression (audit): a running task's WorkerError (the local copy's 400) was an unexpected 500."""
    settings = settings_for([], local=repository, tasks=TaskSettings(workers=1))
    request = {"model": "digits", "inputs": IMAGE, "outputs": ["no_such_output"]}
    async with mounted(settings) as (client, _):
        now = await client.post(f"{API}/inference", json=request)
        task = await _until(client, await _submit(client, {"kind": "inference", "request": request}), "error")
    assert now.status_code == 400, now.text
    assert task["error"]["status"] == 400
    assert task["error"]["detail"] == now.json()["detail"]


async def test_the_requests_waiting_in_memory_are_bounded_in_bytes_and_a_cancel_frees_them() -> None:
    """Regression (audit): 1,000 pending batch tasks of 15 MB each could take the gateway down."""
    items = [{"model": "digits", "inputs": IMAGE}] * 20
    body = json.dumps({"kind": "batch", "request": {"requests": items}}).encode()
    tasks = TaskSettings(workers=0, max_pending_bytes=int(len(body) * 2.5))  # room for two
    sent = {"content": body, "headers": {"Content-Type": "application/json"}}
    async with mounted(settings_for([], tasks=tasks)) as (client, _):
        first, _second = [(await client.post(f"{API}/tasks", **sent)).json()["task_id"] for _ in range(2)]
        refused = await client.post(f"{API}/tasks", **sent)
        small = await client.post(f"{API}/tasks", json={"kind": "batch", "request": {"requests": items[:1]}})
        assert (await client.delete(f"{API}/tasks/{first}")).status_code == 200
        again = await client.post(f"{API}/tasks", **sent)
    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"]
    assert small.status_code == 202, small.text
    assert again.status_code == 202, again.text


async def test_tokens_without_a_subject_are_refused_rather_than_pooled(
    gateway: tuple[httpx.AsyncClient, DistributedInference],
) -> None:
    """Two tokens with no `sub` are two callers nobody can tell apart: neither may use tasks."""
    client, _ = gateway

    def subjectless(*scopes: str) -> dict[str, str]:
        claims = {"scope": " ".join(scopes), "exp": int(time.time()) + 600}
        return {"Authorization": f"Bearer {jwt.encode(claims, TEST_JWT_SECRET, algorithm='HS256')}"}

    owner = bearer(INFER, sub="anonymous")  # a real subject, whatever it is called
    task_id = await _submit(client, _inference(), headers=owner)
    for headers in (subjectless(INFER), subjectless(INFER, ADMIN)):
        submitted = await client.post(f"{API}/tasks", json=_inference(), headers=headers)
        read = await client.get(f"{API}/tasks/{task_id}", headers=headers)
        listed = await client.get(f"{API}/tasks", headers=headers)
        for response in (submitted, read, listed):
            assert response.status_code == 403, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert "sub" in response.json()["detail"]
    assert (await client.get(f"{API}/tasks/{task_id}", headers=owner)).status_code == 200


async def test_two_gateways_share_one_redis_submit_on_one_poll_and_cancel_on_the_other(
    two_nodes: list[ServerProcess], slow_node: ServerProcess, redis_server: RedisServer
) -> None:
    urls = [node.url for node in [*two_nodes, slow_node]]
    front = settings_for(urls, tasks=TaskSettings(store=redis_server.url, workers=0))  # takes tasks, runs none
    back = settings_for(urls, tasks=TaskSettings(store=redis_server.url, workers=1, lease_s=3))
    async with mounted(front) as (a, _), mounted(back) as (b, runner):
        set_latency(slow_node, 200)
        task_id = await _submit(
            a, {"kind": "batch", "request": {"requests": [{"model": "digits", "inputs": IMAGE}] * 3}}
        )
        done = await _until(b, task_id, "completed")
        assert done["result"]["succeeded"] == 3
        assert (await _task(a, task_id))["status"] == "completed"

        set_latency(slow_node, 10_000)
        running = await _submit(a, _inference(SLOW_MODEL))
        await _until(a, running, "running")  # B runs it; A sees it
        waiting = await _submit(a, _inference())  # B's only worker is busy: this one waits
        assert (await b.delete(f"{API}/tasks/{waiting}")).json()["status"] == "cancelled"
        started = time.monotonic()
        assert (await a.delete(f"{API}/tasks/{running}")).json()["status"] == "cancelled"
        # A cancelled it; B notices and cancels its node call long before the node would answer.
        await eventually(lambda: _some(runner.pool.in_flight(slow_node.url) == 0), timeout_s=5)
        assert time.monotonic() - started < 5
        assert (await _task(b, running))["status"] == "cancelled"
        assert (await _task(b, waiting))["started_at"] is None  # it never ran


async def test_results_expire_after_their_ttl(two_nodes: list[ServerProcess], redis_server: RedisServer) -> None:
    settings = settings_for([n.url for n in two_nodes], tasks=TaskSettings(store=redis_server.url, ttl_s=1))
    async with mounted(settings) as (client, _):
        task_id = await _submit(client, _inference())
        await _until(client, task_id, "completed")

        async def gone() -> bool | None:
            response = await client.get(f"{API}/tasks/{task_id}")
            return True if response.status_code == 404 else None

        await eventually(gone, timeout_s=15)
        assert (await client.get(f"{API}/tasks")).json()["tasks"] == []


def _gateway_env(node: ServerProcess, redis_url: str) -> dict[str, str]:
    return {
        "ENABLE_DISTRIBUTED_INFERENCE": "true",
        "DISTINFER_AUTH_DISABLED": "true",
        "DISTINFER_NODES": node.url,
        "DISTINFER_TASK_STORE": redis_url,
        "DISTINFER_TASK_WORKERS": "1",
        "DISTINFER_TASK_LEASE_S": "1",
        "DISTINFER_PROBE_INTERVAL_S": "0.5",
    }


async def test_pending_tasks_survive_a_gateway_crash_and_a_redis_restart(
    slow_node: ServerProcess, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path, aof=True).start()
    first = second = None
    try:
        set_latency(slow_node, 3000)
        first = start_gateway(_gateway_env(slow_node, redis.url))
        first.wait_ready(timeout_s=120)
        async with httpx.AsyncClient(base_url=first.url, timeout=10) as client:
            ids = [await _submit(client, _inference(SLOW_MODEL)) for _ in range(3)]
            await _until(client, ids[0], "running")
        first.kill()  # a crash: no goodbye, the running task's lease simply stops being renewed
        redis.stop()
        redis.start()  # same port and directory: the append-only file brings every task back
        set_latency(slow_node, 100)
        second = start_gateway(_gateway_env(slow_node, redis.url))
        second.wait_ready(timeout_s=120)
        async with httpx.AsyncClient(base_url=second.url, timeout=10) as client:
            done = [await _until(client, task_id, "completed", timeout_s=60) for task_id in ids]
        assert [task["attempts"] for task in done] == [2, 1, 1]  # at least once: the interrupted one ran again
        assert all(task["result"]["outputs"][0]["shape"] == [1, 10] for task in done)
    finally:
        for process in (first, second):
            if process is not None:
                process.stop()
        redis.stop()


async def test_an_unreachable_task_store_is_503_not_500(
    two_nodes: list[ServerProcess], redis_server: RedisServer
) -> None:
    settings = settings_for([n.url for n in two_nodes], tasks=TaskSettings(store=redis_server.url, workers=1))
    async with mounted(settings) as (client, _):
        task_id = await _submit(client, _inference())
        redis_server.stop()
        for response in (
            await client.get(f"{API}/tasks/{task_id}"),
            await client.post(f"{API}/tasks", json=_inference()),
            await client.get(f"{API}/tasks"),
        ):
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "task_store_unavailable"
        assert (await client.post(f"{API}/inference", json=_inference()["request"])).status_code == 200


def _sample(text: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


async def test_task_queue_wait_and_depth_reach_the_metrics(two_nodes: list[ServerProcess]) -> None:
    """The queue's wait histogram and depth gauge are fed by the task service (they stayed 0 before)."""
    async with mounted(settings_for([node.url for node in two_nodes])) as (client, _):
        before = (await client.get("/metrics")).text
        task_id = await _submit(client, _inference(priority="high"))
        await _until(client, task_id, "completed")
        after = (await client.get("/metrics")).text
    waited = "distinfer_gateway_queue_wait_seconds_count"
    assert _sample(after, waited) == _sample(before, waited) + 1
    assert "distinfer_gateway_queue_depth" in after
