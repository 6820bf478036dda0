"""Regression tests for what the reliability suite found, one per finding, named after what broke."""

from __future__ import annotations

import shutil

import httpx
import pytest

from bench.chaos.cluster import PREFIX, Cluster
from bench.chaos.scenarios import HEALTHY
from bench.chaos.tasks import RedisServer

pytestmark = pytest.mark.timeout(60)


def test_stream_with_an_unknown_strategy_is_a_422_not_a_500(cluster: Cluster) -> None:
    """schemathesis: GET/POST /inference/stream/{model}?strategy=<unknown> answered 500 (UnknownStrategy
    escaped gateway_plugin/streaming.py `StreamService.open`); /inference answers 422 for the same input."""
    gateway = cluster.start_gateway([cluster.nodes[HEALTHY].url])
    try:
        cluster.wait_serving(gateway, {HEALTHY})
        with httpx.Client(base_url=gateway.url + PREFIX, headers=cluster.auth, timeout=10) as client:
            plain = client.post("/inference", json={"model": "digits", "inputs": [0.0] * 64, "strategy": "fastest"})
            got = client.get("/inference/stream/digits", params={"prompt": "hi", "strategy": "fastest"})
            posted = client.post("/inference/stream/digits", json={"prompt": "hi", "strategy": "fastest"})
    finally:
        cluster.stop_gateway(gateway)
    assert plain.status_code == 422
    assert got.status_code == 422, got.text
    assert posted.status_code == 422, posted.text


def test_tasks_answer_503_not_500_while_redis_is_down(cluster: Cluster) -> None:
    """redis_restart: with DISTINFER_TASK_STORE=redis://... and Redis down, POST /tasks and GET /tasks
    answered 500 (redis.exceptions.ConnectionError escaped the Redis task store); CONTRACT §5 says 503."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make setup)")
    redis = RedisServer()
    redis.start()
    gateway = cluster.start_gateway([cluster.nodes[HEALTHY].url], extra_env={"DISTINFER_TASK_STORE": redis.url})
    try:
        body = {"kind": "inference", "request": {"model": "digits", "inputs": [0.0] * 64}}
        with httpx.Client(base_url=gateway.url + PREFIX, headers=cluster.auth, timeout=10) as client:
            assert client.post("/tasks", json=body).status_code == 202
            redis.kill()
            submitted = client.post("/tasks", json=body)
            listed = client.get("/tasks")
    finally:
        cluster.stop_gateway(gateway)
        redis.close()
    assert submitted.status_code == 503, submitted.text
    assert listed.status_code == 503, listed.text
