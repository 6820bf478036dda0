"""The gateway plugin mounted in a FastAPI app, routing to real node processes over loopback."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from gateway_plugin import DistributedInference
from gateway_plugin.processes import ServerProcess, free_port
from gateway_plugin.settings import BalancerSettings, DispatchSettings, LimitSettings
from tests.integration.conftest import STARTUP_TIMEOUT_S, TEST_JWT_SECRET, bearer, mounted, settings_for

PREFIX = "/api/v1/distributed"
StartNodes = Callable[..., list[ServerProcess]]


def _logits(body: dict[str, object]) -> np.ndarray:
    (out,) = body["outputs"]  # type: ignore[misc]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def _problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail", "request_id"} <= set(body)
    assert body["status"] == status
    assert response.headers["X-Request-ID"] == body["request_id"]
    return body  # type: ignore[no-any-return]


async def test_round_robin_spreads_over_both_nodes_and_matches_onnxruntime(
    two_nodes: list[ServerProcess], digits_images: np.ndarray, onnx_digits: Callable[[np.ndarray], np.ndarray]
) -> None:
    async with mounted(settings_for([n.url for n in two_nodes])) as (client, _):
        served: Counter[str] = Counter()
        for image in digits_images.repeat(4, axis=0):
            request = {"model": "digits", "inputs": image[0].tolist(), "strategy": "round_robin"}
            response = await client.post(f"{PREFIX}/inference", json=request)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["mode"] == "distributed"
            assert response.headers["X-Inference-Mode"] == "distributed"
            assert response.headers["X-Inference-Node"] == body["node_id"]
            np.testing.assert_allclose(_logits(body), onnx_digits(image[None]), atol=1e-5)
            served[body["node_id"]] += 1
        assert served == {"node-a": 10, "node-b": 10}


@pytest.mark.parametrize("binary", [True, False])
async def test_v2_tensor_inputs_json_or_binary_to_nodes(
    two_nodes: list[ServerProcess],
    digits_images: np.ndarray,
    onnx_digits: Callable[[np.ndarray], np.ndarray],
    binary: bool,
) -> None:
    settings = settings_for([n.url for n in two_nodes], dispatch=DispatchSettings(binary_to_nodes=binary))
    tensor = {"name": "image", "shape": [5, 1, 8, 8], "datatype": "FP32", "data": digits_images.ravel().tolist()}
    async with mounted(settings) as (client, _):
        response = await client.post(
            f"{PREFIX}/inference", json={"model": "digits", "inputs": [tensor], "request_id": "abc-1"}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == "abc-1"
    assert response.headers["X-Request-ID"] == "abc-1"
    np.testing.assert_allclose(_logits(body), onnx_digits(digits_images), atol=1e-5)


async def test_least_loaded_uses_both_nodes_under_concurrency(
    two_nodes: list[ServerProcess], digits_images: np.ndarray
) -> None:
    async with mounted(settings_for([n.url for n in two_nodes])) as (client, _):
        body = {"model": "digits", "inputs": digits_images[0, 0].tolist(), "strategy": "least_loaded"}
        responses = await asyncio.gather(*(client.post(f"{PREFIX}/inference", json=body) for _ in range(40)))
    assert all(r.status_code == 200 for r in responses)
    served = Counter(r.json()["node_id"] for r in responses)
    assert set(served) == {"node-a", "node-b"}


async def test_models_nodes_and_health_describe_the_cluster(two_nodes: list[ServerProcess]) -> None:
    async with mounted(settings_for([n.url for n in two_nodes])) as (client, _):
        models = {m["name"]: m for m in (await client.get(f"{PREFIX}/models")).json()}
        nodes = (await client.get(f"{PREFIX}/nodes")).json()
        health = (await client.get(f"{PREFIX}/health")).json()
        ready = await client.get(f"{PREFIX}/health/ready")
    assert models["digits"]["ready_nodes"] == 2
    assert sorted(models["digits"]["nodes"]) == ["node-a", "node-b"]
    assert models["digits"]["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert [(n["node_id"], n["status"], n["binary"]) for n in nodes] == [
        ("node-a", "online", True),
        ("node-b", "online", True),
    ]
    assert health["status"] == "ok"
    assert health["nodes"]["online"] == 2
    assert ready.status_code == 200


async def test_killed_node_is_retried_on_the_other(start_nodes: StartNodes, digits_images: np.ndarray) -> None:
    first, second = start_nodes("node-1", "node-2")
    # A long probe interval: the gateway learns of the death only from failed attempts.
    settings = settings_for([first.url, second.url], probe_interval_s=60)
    async with mounted(settings) as (client, _):
        body = {"model": "digits", "inputs": digits_images[0, 0].tolist(), "strategy": "round_robin"}
        warm = [await client.post(f"{PREFIX}/inference", json=body) for _ in range(2)]
        assert {r.json()["node_id"] for r in warm} == {"node-1", "node-2"}
        first.kill()
        responses = [await client.post(f"{PREFIX}/inference", json=body) for _ in range(10)]
        nodes = {n["node_id"]: n for n in (await client.get(f"{PREFIX}/nodes")).json()}
    assert [r.status_code for r in responses] == [200] * 10
    assert {r.json()["node_id"] for r in responses} == {"node-2"}
    assert max(r.json()["attempts"] for r in responses) == 2
    assert nodes["node-1"]["status"] == "offline"


async def test_local_fallback_when_no_node_can_serve(
    repository: Path, digits_images: np.ndarray, onnx_digits: Callable[[np.ndarray], np.ndarray]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with mounted(settings_for([dead], local=repository)) as (client, _):
        response = await client.post(
            f"{PREFIX}/inference", json={"model": "digits", "inputs": digits_images[1, 0].tolist()}
        )
        ready = await client.get(f"{PREFIX}/health/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "local"
    assert body["node_id"] is None
    assert response.headers["X-Inference-Mode"] == "local"
    assert response.headers["X-Inference-Node"] == "local"
    np.testing.assert_allclose(_logits(body), onnx_digits(digits_images[1:2]), atol=1e-5)
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded"


async def test_local_fallback_after_every_node_dies(start_nodes: StartNodes, repository: Path) -> None:
    (node,) = start_nodes("node-solo")
    async with mounted(settings_for([node.url], local=repository, probe_interval_s=60)) as (client, _):
        body = {"model": "digits", "inputs": [[0.0] * 8] * 8}
        before = await client.post(f"{PREFIX}/inference", json=body)
        node.kill()
        after = await client.post(f"{PREFIX}/inference", json=body)
    assert before.json()["mode"] == "distributed"
    assert after.status_code == 200
    assert after.json()["mode"] == "local"
    assert after.json()["attempts"] == 1


async def test_no_node_and_no_local_copy_is_503() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    tensor = {"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}
    async with mounted(settings_for([dead])) as (client, _):
        response = await client.post(f"{PREFIX}/inference", json={"model": "digits", "inputs": [tensor]})
        relayed = await client.post(f"{PREFIX}/v2/models/digits/infer", json={"inputs": [tensor]})
        parallel = await client.post(f"{PREFIX}/inference/parallel", json={"models": ["digits"], "inputs": [tensor]})
        ready = await client.get(f"{PREFIX}/health/ready")
    _problem(response, 503)
    assert ready.status_code == 503
    # CONTRACT §4, headers on every response: an answer nobody served says so.
    for failed in (response, relayed, parallel):
        assert failed.status_code == 503
        assert failed.headers["X-Request-ID"]
        assert (failed.headers["X-Inference-Node"], failed.headers["X-Inference-Mode"]) == ("none", "none")


async def test_plain_inputs_during_an_outage_are_503_like_tensors() -> None:
    """Regression (review): a plain value needs the model's metadata, which no reachable node gave,
    and the client was told its valid request was malformed (400)."""
    dead = f"http://127.0.0.1:{free_port()}"
    image = [[0.0] * 8] * 8
    async with mounted(settings_for([dead])) as (client, _):
        single = await client.post(f"{PREFIX}/inference", json={"model": "digits", "inputs": image})
        pipeline = await client.post(
            f"{PREFIX}/inference/pipeline", json={"stages": [{"id": "a", "model": "digits", "inputs": image}]}
        )
    assert _problem(single, 503)["code"] == "no_capacity"
    assert _problem(pipeline, 503)["code"] == "no_capacity"


async def test_flag_off_answers_404_everywhere(two_nodes: list[ServerProcess]) -> None:
    async with mounted(settings_for([n.url for n in two_nodes], enabled=False)) as (client, _):
        for method, path in [("POST", "/inference"), ("GET", "/models"), ("GET", "/nodes"), ("GET", "/health")]:
            response = await client.request(method, PREFIX + path, json={"model": "digits", "inputs": [1]})
            body = _problem(response, 404)
            assert "disabled" in str(body["detail"])


async def test_unknown_model_is_404_when_nodes_are_up(two_nodes: list[ServerProcess]) -> None:
    """Whatever form the inputs take: a plain value was a 400 ("metadata not known") before."""
    tensor = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}
    async with mounted(settings_for([n.url for n in two_nodes])) as (client, _):
        for inputs in ([tensor], [[0.0] * 8] * 8, "some text"):
            response = await client.post(f"{PREFIX}/inference", json={"model": "no_such_model", "inputs": inputs})
            assert _problem(response, 404)["code"] == "unknown_model", inputs


async def test_input_values_a_model_refuses_are_400_and_leave_the_nodes_in_rotation(
    two_nodes: list[ServerProcess],
) -> None:
    """Regression: the node answered 500 (InferenceFailed), the gateway retried it on every node,
    tripped their breakers and ejected them, and the client got a 503 for its own bad token id."""
    inputs = [
        {"name": "token", "shape": [1, 1], "datatype": "INT64", "data": [100_000]},
        {"name": "state", "shape": [1, 192], "datatype": "FP32", "data": [0.0] * 192},
    ]
    async with mounted(settings_for([n.url for n in two_nodes])) as (client, _):
        answers = [
            await client.post(f"{PREFIX}/inference", json={"model": "charlm", "inputs": inputs}) for _ in range(6)
        ]
        nodes = (await client.get(f"{PREFIX}/nodes")).json()
    for response in answers:
        assert "input values" in _problem(response, 400)["detail"]
    assert {(node["status"], node["breaker"]) for node in nodes} == {("online", "closed")}


async def test_two_inputs_with_one_name_are_refused_at_once(two_nodes: list[ServerProcess]) -> None:
    """Regression: accepted on /inference (the local runtime kept one, a node refused after an attempt)."""
    image = {"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}
    async with mounted(settings_for([n.url for n in two_nodes])) as (client, _):
        response = await client.post(f"{PREFIX}/inference", json={"model": "digits", "inputs": [image, image]})
        metrics = (await client.get("/metrics")).text
    assert "unique" in _problem(response, 400)["detail"]
    assert "distinfer_gateway_attempts_total{" not in metrics  # no node was asked


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"inputs": [1]}', 422, "model"),
        (b'{"model": "digits", "inputs": [1], "surprise": 1}', 422, "surprise"),
        (b'{"model": "digits", "inputs": [[1, 2], [3]]}', 400, "ragged"),
        (b'{"model": "digits", "inputs": [[1, 2, 3]]}', 400, "does not fit"),
        (b'{"model": "digits", "inputs": {"a": 1}}', 400, "inputs must be"),
        (b'{"model": "digits", "inputs": [[0.5]], "strategy": "fastest"}', 400, "does not fit"),
        (
            b'{"model": "digits", "inputs": ['
            + b"[0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5]," * 7
            + b'[0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5]], "strategy": "fastest"}',
            422,
            "strategy",
        ),
        (
            b'{"model": "digits", "inputs": [{"name": "image", "shape": [1,1,8,8], "datatype": "INT32", "data": ['
            + b"1," * 63
            + b"1]}]}",
            400,
            "datatype",
        ),
        (
            b'{"model": "digits", "inputs": [{"name": "image", "shape": [1,1,4,4], "datatype": "FP32", "data": ['
            + b"1," * 15
            + b"1]}]}",
            400,
            "shape",
        ),
        (
            b'{"model": "digits", "inputs": [{"name": "image", "shape": [1,1,8,8], "datatype": "FP32", "data": [1]}]}',
            400,
            "elements",
        ),
        (
            b'{"model": "digits", "inputs": [{"name": "image", "shape": [1,1,8,8], "datatype": "FP99", "data": [1]}]}',
            400,
            "datatype",
        ),
        (b'{"model": "digits", "inputs": [], "timeout_ms": -1}', 422, "timeout_ms"),
    ],
)
async def test_malformed_inference_requests_get_problem_json(
    two_nodes: list[ServerProcess], body: bytes, status: int, words: str
) -> None:
    async with mounted(settings_for([n.url for n in two_nodes])) as (client, _):
        response = await client.post(f"{PREFIX}/inference", content=body, headers={"Content-Type": "application/json"})
    problem = _problem(response, status)
    assert words in str(problem["detail"])


async def test_oversized_body_and_tensor_are_413(two_nodes: list[ServerProcess]) -> None:
    limits = LimitSettings(max_body_bytes=4096, max_tensor_elements=1000)
    async with mounted(settings_for([n.url for n in two_nodes], limits=limits)) as (client, _):
        big_body = await client.post(f"{PREFIX}/inference", json={"model": "digits", "inputs": [[0.0] * 8] * 8 * 20})
        big_tensor = await client.post(
            f"{PREFIX}/inference",
            json={
                "model": "digits",
                "inputs": [{"name": "image", "shape": [100000, 1, 8, 8], "datatype": "FP32", "data": []}],
            },
        )
    _problem(big_body, 413)
    _problem(big_tensor, 413)


async def test_from_env_and_include_router_is_all_a_host_needs(
    two_nodes: list[ServerProcess], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENABLE_DISTRIBUTED_INFERENCE", "true")
    monkeypatch.setenv("DISTINFER_NODES", ",".join(n.url for n in two_nodes))
    monkeypatch.setenv("DISTINFER_JWT_SECRET", TEST_JWT_SECRET)
    app = FastAPI()

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    distributed = DistributedInference.from_env()
    app.include_router(distributed.router)
    async with LifespanManager(app, startup_timeout=STARTUP_TIMEOUT_S) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://host", headers=bearer()) as client:
            assert (await client.get("/hello")).json() == {"hello": "world"}
            nodes = (await client.get(f"{PREFIX}/nodes")).json()
            paths = (await client.get("/openapi.json")).json()["paths"]
    # The host's lifespan started our probes: the nodes are known and online.
    assert {n["status"] for n in nodes} == {"online"}
    assert f"{PREFIX}/inference" in paths


async def test_not_started_plugin_answers_503_not_500(two_nodes: list[ServerProcess]) -> None:
    app = FastAPI()
    app.include_router(DistributedInference(settings=settings_for([two_nodes[0].url])).router)
    transport = httpx.ASGITransport(app=app)  # no lifespan: the host forgot to run it
    async with httpx.AsyncClient(transport=transport, base_url="http://host", headers=bearer()) as client:
        response = await client.get(f"{PREFIX}/nodes")
        live = await client.get(f"{PREFIX}/health/live")
        v2_live = await client.get(f"{PREFIX}/v2/health/live")  # the v2 twin says the same
    _problem(response, 503)
    _problem(live, 503)
    _problem(v2_live, 503)


async def test_probes_bring_a_restarted_node_back(start_nodes: StartNodes, repository: Path) -> None:
    (node,) = start_nodes("node-back")
    settings = settings_for([node.url], balancer=BalancerSettings(probe_interval_s=0.1, probe_timeout_s=0.5))
    async with mounted(settings) as (client, _):
        node.kill()
        for _ in range(50):
            if (await client.get(f"{PREFIX}/nodes")).json()[0]["status"] == "offline":
                break
            await asyncio.sleep(0.05)
        assert (await client.get(f"{PREFIX}/nodes")).json()[0]["status"] == "offline"
        port = int(node.url.rsplit(":", 1)[1])
        start_nodes("node-back", port=port)
        for _ in range(50):
            if (await client.get(f"{PREFIX}/nodes")).json()[0]["status"] == "online":
                break
            await asyncio.sleep(0.05)
        response = await client.post(f"{PREFIX}/inference", json={"model": "digits", "inputs": [[0.0] * 8] * 8})
    assert response.status_code == 200
    assert response.json()["mode"] == "distributed"


async def test_response_cache_answers_a_repeated_request_without_a_node(two_nodes: list[ServerProcess]) -> None:
    from gateway_plugin.settings import CacheSettings

    settings = settings_for([n.url for n in two_nodes], cache=CacheSettings(models=["digits"]))
    body = {"model": "digits", "inputs": [[0.5] * 8] * 8}
    async with mounted(settings) as (client, _):
        first = (await client.post(f"{PREFIX}/inference", json=body)).json()
        second = (await client.post(f"{PREFIX}/inference", json=body)).json()
        other = (await client.post(f"{PREFIX}/inference", json={**body, "inputs": [[0.25] * 8] * 8})).json()
    assert first["attempts"] == 1
    assert second["attempts"] == 0
    assert second["outputs"] == first["outputs"]
    assert other["attempts"] == 1


async def test_every_request_gets_its_own_request_id(two_nodes: list[ServerProcess]) -> None:
    """Regression: the id was cached in request.state, which asgi-lifespan shares between requests."""
    async with mounted(settings_for([n.url for n in two_nodes])) as (client, _):
        ids = [(await client.get(f"{PREFIX}/models")).headers["X-Request-ID"] for _ in range(3)]
        echoed = (await client.get(f"{PREFIX}/models", headers={"X-Request-ID": "mine-1"})).headers["X-Request-ID"]
    assert len(set(ids)) == 3
    assert echoed == "mine-1"
