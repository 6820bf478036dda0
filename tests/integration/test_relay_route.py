"""The v2 relay route, which is served as plain ASGI (RawRoute) rather than through FastAPI's handling.

Everything FastAPI and the router's dependencies give the other routes must hold here too: the
flag, the body cap, 405 for other methods, request ids, the OpenAPI entry with its security.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from aiohttp import ClientSession, web

from bench.chaos.cluster import Cluster
from gateway_plugin.api import relay as relay_module
from gateway_plugin.processes import ServerProcess, free_port
from gateway_plugin.settings import CacheSettings, LimitSettings
from tests.integration.conftest import mounted, settings_for
from worker.protocol import HEADER_LENGTH, Limits, Tensor, decode_response, encode_request
from worker.protocol.codec import json_tensor

PREFIX = "/api/v1/distributed"
RELAY = f"{PREFIX}/v2/models/digits/infer"


def _binary_request(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    encoded = encode_request([Tensor.of("image", images)], request_id="r-1", binary=True)
    assert encoded.header_length is not None
    return encoded.body, {"Content-Type": encoded.content_type, HEADER_LENGTH: str(encoded.header_length)}


async def test_relay_serves_binary_and_keeps_the_request_id(two_nodes: list[ServerProcess]) -> None:
    body, headers = _binary_request(np.zeros((2, 1, 8, 8), dtype=np.float32))
    async with mounted(settings_for([n.url for n in two_nodes])) as (client, _):
        response = await client.post(RELAY, content=body, headers={**headers, "X-Request-ID": "abc-123"})
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-ID"] == "abc-123"
    assert response.headers["X-Inference-Mode"] == "distributed"
    assert response.headers["X-Inference-Node"] in {"node-a", "node-b"}
    head = response.content[: int(response.headers[HEADER_LENGTH])]
    assert b'"id":"r-1"' in head.replace(b" ", b"")


async def test_relay_is_not_found_with_the_flag_off() -> None:
    async with mounted(settings_for([], enabled=False)) as (client, _):
        response = await client.post(RELAY, json={"inputs": []})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert "ENABLE_DISTRIBUTED_INFERENCE" in response.json()["detail"]


async def test_relay_refuses_a_body_over_the_cap_with_413() -> None:
    async with mounted(settings_for([], limits=LimitSettings(max_body_bytes=1024))) as (client, _):
        response = await client.post(RELAY, content=b"{" + b" " * 4096 + b"}")
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["error"] == response.json()["detail"]


async def test_other_methods_are_405_in_problem_json_with_allow() -> None:
    """Regression: Starlette's own 405 ({"detail": ...}, application/json) came out of every plugin route."""
    # Allow names every method served at the path, not only the one route Starlette matched.
    cases = [
        ("GET", RELAY, {"POST"}),
        ("GET", f"{PREFIX}/inference", {"POST"}),
        ("DELETE", f"{PREFIX}/flags", {"GET", "PUT"}),
        ("GET", f"{PREFIX}/nodes/x", {"PATCH", "DELETE"}),
        ("POST", f"{PREFIX}/tasks/abc", {"GET", "DELETE"}),
    ]
    async with mounted(settings_for([])) as (client, _):
        for method, path, allowed in cases:
            response = await client.request(method, path, headers={"X-Request-ID": "wrong-method-1"})
            assert response.status_code == 405, (method, path)
            assert response.headers["content-type"] == "application/problem+json"
            assert allowed <= set(response.headers["allow"].split(", ")), (path, response.headers["allow"])
            body = response.json()
            assert (body["status"], body["request_id"]) == (405, "wrong-method-1")
            assert method in body["detail"]
    # With the flag off, the plugin's routes are not there: 404 whatever the method; /flags stays.
    async with mounted(settings_for([], enabled=False)) as (client, _):
        assert (await client.get(f"{PREFIX}/inference")).status_code == 404
        assert (await client.get(RELAY)).status_code == 404
        assert (await client.delete(f"{PREFIX}/flags")).status_code == 405


async def test_relay_is_in_openapi_with_bearer_security() -> None:
    async with mounted(settings_for([])) as (client, _):
        schema = (await client.get("/openapi.json")).json()
    operation = schema["paths"][f"{PREFIX}/v2/models/{{model}}/infer"]["post"]
    assert {"bearer": []} in operation["security"]
    assert "versions" not in "".join(schema["paths"])  # the versioned twin stays out of the schema


@pytest.mark.parametrize("mode", ["garbage", "truncated", "badjson"])
def test_relay_never_passes_on_a_broken_node_answer(
    repository: Path, digits_images: np.ndarray, onnx_digits: Callable[[np.ndarray], np.ndarray], mode: str
) -> None:
    """The relay forwards node answers unread; one that is 200 but not a v2 message is retried elsewhere."""
    with Cluster(repository).running() as cluster:
        healthy, sick = cluster.start_nodes("node-a", "node-b")
        front = cluster.start_front("http", sick.url, mode=mode)
        gateway = cluster.start_gateway([healthy.url, front.url], extra_env={"DISTINFER_STRATEGY": "round_robin"})
        cluster.wait_serving(gateway, {"node-a", "node-b"})
        body, headers = _binary_request(digits_images)
        with httpx.Client(base_url=gateway.url, headers=cluster.auth, timeout=10) as client:
            answers = [client.post(RELAY, content=body, headers=headers) for _ in range(6)]
        assert front.stats()["seen"].get(f"infer:{mode}", 0) >= 1  # the sick node was asked at least once
    for response in answers:
        assert response.status_code == 200, response.text
        assert response.headers["X-Inference-Node"] == "node-a"
        decoded = decode_response(response.content, int(response.headers[HEADER_LENGTH]), Limits())
        np.testing.assert_allclose(decoded.outputs[0].data, onnx_digits(digits_images), atol=1e-5)


async def test_relay_answers_each_caller_in_its_own_encoding_from_the_cache(two_nodes: list[ServerProcess]) -> None:
    """A cached answer is re-encoded per caller: a forwarded (binary) one must not reach a JSON caller."""
    images = np.zeros((1, 1, 8, 8), dtype=np.float32)
    body, headers = _binary_request(images)
    settings = settings_for([n.url for n in two_nodes], cache=CacheSettings(models=["digits"]))
    async with mounted(settings) as (client, distributed):
        binary = await client.post(RELAY, content=body, headers=headers)
        as_json = await client.post(RELAY, json={"id": "j", "inputs": [json_tensor(Tensor.of("image", images))]})
        cache = (await distributed.services()).dispatcher.cache  # type: ignore[attr-defined]
        assert (cache.misses, cache.hits) == (1, 1)  # the JSON caller was answered from the cache
    assert binary.status_code == 200, binary.text
    assert as_json.status_code == 200, as_json.text
    assert HEADER_LENGTH in binary.headers
    assert HEADER_LENGTH not in as_json.headers
    assert as_json.headers["content-type"].startswith("application/json")
    assert as_json.json()["id"] == "j"
    first = decode_response(binary.content, int(binary.headers[HEADER_LENGTH]), Limits()).outputs[0].data
    np.testing.assert_allclose(np.asarray(as_json.json()["outputs"][0]["data"]).reshape(first.shape), first, rtol=1e-6)


async def test_a_node_content_type_the_gateway_cannot_send_is_replaced(
    two_nodes: list[ServerProcess], digits_images: np.ndarray
) -> None:
    """Regression (review): a node answering with a non-Latin-1 Content-Type made the relay fail
    with a 500 (the header could not be encoded), though the answer itself was sound."""
    node = two_nodes[0]

    async def odd_content_type(request: web.Request) -> web.Response:
        """The node as it is (discovery, metadata), but its answers' Content-Type."""
        async with (
            ClientSession() as session,
            session.request(
                request.method, f"{node.url}{request.path_qs}", data=await request.read(), headers={**request.headers}
            ) as upstream,
        ):
            body = await upstream.read()
            keep = {key: value for key, value in upstream.headers.items() if key.lower() == HEADER_LENGTH.lower()}
            content_type = upstream.headers.get("Content-Type", "")
        if request.path.endswith("/infer"):
            content_type += "; charset=€"
        return web.Response(body=body, status=upstream.status, headers={**keep, "Content-Type": content_type})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", odd_content_type)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with mounted(settings_for([f"http://127.0.0.1:{port}"])) as (client, _):
            body, headers = _binary_request(digits_images)
            answer = await client.post(RELAY, content=body, headers=headers)
    finally:
        await runner.cleanup()
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/octet-stream"
    decoded = decode_response(answer.content, int(answer.headers[HEADER_LENGTH]), Limits())
    assert decoded.outputs[0].data.shape == (len(digits_images), 10)


async def test_an_unexpected_error_in_the_relay_is_a_500_that_says_no_node_served(
    two_nodes: list[ServerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (review): the relay's 500 had no X-Inference-Node/Mode, unlike every other error."""

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(relay_module, "_relay", broken)
    async with mounted(settings_for([two_nodes[0].url])) as (client, _):
        answer = await client.post(RELAY, json={"inputs": []})
    assert answer.status_code == 500
    assert "a bug" not in answer.text  # never the exception to the client
    assert (answer.headers["X-Inference-Node"], answer.headers["X-Inference-Mode"]) == ("none", "none")
    assert answer.json()["error"] == "unexpected error; see the gateway log"  # the v2 member, as on every error
