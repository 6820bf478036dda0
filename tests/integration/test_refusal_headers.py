"""CONTRACT §4: `X-Inference-Node` and `X-Inference-Mode` on every inference response, refusals included.

A request refused before its route serves it (no token, a missing scope, the flag off, a body over
the cap, a body that does not fit the schema, a method the path does not serve) says `none` in both,
as an error raised while serving does. Regression: those refusals carried only `X-Request-ID`.
"""

from __future__ import annotations

import httpx
import pytest

from gateway_plugin.processes import free_port
from gateway_plugin.settings import LimitSettings
from tests.integration.conftest import bearer, mounted, settings_for

PREFIX = "/api/v1/distributed"
TENSOR = {"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}
# (method, path, a valid body): every route that answers inference calls
INFERENCE_ROUTES: list[tuple[str, str, dict[str, object] | None]] = [
    ("POST", "/inference", {"model": "digits", "inputs": [TENSOR]}),
    ("POST", "/inference/batch", {"requests": [{"model": "digits", "inputs": [TENSOR]}]}),
    ("POST", "/inference/parallel", {"models": ["digits"], "inputs": [TENSOR]}),
    ("POST", "/inference/pipeline", {"stages": [{"id": "a", "model": "digits", "inputs": [TENSOR]}]}),
    ("GET", "/inference/stream/digits", None),
    ("POST", "/inference/stream/digits", {"prompt": "hi"}),
    ("POST", "/v2/models/digits/infer", {"inputs": [TENSOR]}),
]


def _dead() -> list[str]:
    return [f"http://127.0.0.1:{free_port()}"]  # nothing listens: nothing here may reach a node


def _says_none(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["X-Request-ID"]
    assert (response.headers.get("X-Inference-Node"), response.headers.get("X-Inference-Mode")) == ("none", "none")


@pytest.mark.parametrize(("method", "path", "body"), INFERENCE_ROUTES)
async def test_auth_refusals_say_no_node_served(method: str, path: str, body: dict[str, object] | None) -> None:
    async with mounted(settings_for(_dead()), headers={}) as (client, _):
        anonymous = await client.request(method, PREFIX + path, json=body)
        unscoped = await client.request(method, PREFIX + path, json=body, headers=bearer("metrics"))
    _says_none(anonymous, 401)
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    _says_none(unscoped, 403)


@pytest.mark.parametrize(("method", "path", "body"), INFERENCE_ROUTES)
async def test_flag_off_and_wrong_method_say_no_node_served(
    method: str, path: str, body: dict[str, object] | None
) -> None:
    async with mounted(settings_for(_dead(), enabled=False)) as (client, _):
        off = await client.request(method, PREFIX + path, json=body)
        off_wrong_method = await client.request("PUT", PREFIX + path, json=body)
    async with mounted(settings_for(_dead())) as (client, _):
        wrong_method = await client.request("PUT", PREFIX + path, json=body)
    _says_none(off, 404)
    _says_none(off_wrong_method, 404)
    _says_none(wrong_method, 405)
    assert "PUT" not in wrong_method.headers["Allow"]
    assert method in wrong_method.headers["Allow"]


@pytest.mark.parametrize(("method", "path", "body"), [route for route in INFERENCE_ROUTES if route[0] == "POST"])
async def test_body_refusals_say_no_node_served(method: str, path: str, body: dict[str, object] | None) -> None:
    limits = LimitSettings(max_body_bytes=4096)
    async with mounted(settings_for(_dead(), limits=limits)) as (client, _):
        json = {"Content-Type": "application/json"}
        too_big = await client.request(method, PREFIX + path, content=b"[" + b"0," * 4096 + b"0]", headers=json)
        unparsable = await client.request(method, PREFIX + path, content=b"{not json", headers=json)
        off_schema = await client.request(method, PREFIX + path, json={**(body or {}), "inputs": 5, "no_such_field": 1})
    _says_none(too_big, 413)
    _says_none(unparsable, 400)
    # the v2 relay checks its body as the protocol says (a 400), the others by their schema (422)
    _says_none(off_schema, 400 if path.startswith("/v2/") else 422)


async def test_a_stream_that_no_node_can_serve_says_so() -> None:
    """The stream routes raised their errors without the headers, before they were the route's."""
    async with mounted(settings_for(_dead())) as (client, _):
        got = await client.get(f"{PREFIX}/inference/stream/digits", params={"prompt": "hi"})
        posted = await client.post(f"{PREFIX}/inference/stream/digits", json={"inputs": [TENSOR]})
    _says_none(got, 503)
    _says_none(posted, 503)


async def test_routes_that_are_no_inference_call_do_not_claim_one() -> None:
    """The headers say which node served an inference; `/nodes` or `/tasks` serve none (nor `none`)."""
    async with mounted(settings_for(_dead()), headers={}) as (client, _):
        refusals = [await client.get(PREFIX + path) for path in ("/nodes", "/tasks", "/stats", "/models")]
    for refusal in refusals:
        assert refusal.status_code == 401
        assert refusal.headers["X-Request-ID"]
        assert "X-Inference-Node" not in refusal.headers
        assert "X-Inference-Mode" not in refusal.headers
