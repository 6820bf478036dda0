"""A caller cannot send the gateway's own node instructions (`distinfer_*` parameters).

Regression: `parameters.distinfer_forward` went through `/inference` and the v2 relay untouched, so
a caller with only `infer` made a node started with `--forward-peers '*'` POST the activations,
with the node token, to a URL of the caller's choosing, and answer with what came back.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway_plugin.auth import INFER
from gateway_plugin.settings import AuthSettings
from tests.integration.conftest import TEST_JWT_SECRET, bearer, mounted, settings_for
from tests.integration.legacy_service import serving
from worker.bundled import bundled_models
from worker.server import NodeConfig, create_node_app

PREFIX = "/api/v1/distributed"
NODE_TOKEN = "node-token-for-reserved-parameter-tests"
IMAGE = [[0.25] * 8] * 8
TENSOR = {"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.25] * 64}


def _trap() -> tuple[Starlette, list[dict[str, str]]]:
    """A server that records every call it gets (the caller's chosen forwarding target)."""
    calls: list[dict[str, str]] = []

    async def record(request: Request) -> JSONResponse:
        calls.append({"path": request.url.path, "auth": request.headers.get("authorization", "")})
        return JSONResponse({"model_name": "stolen", "outputs": []})

    return Starlette(routes=[Route("/{rest:path}", record, methods=["POST"])]), calls


def _binary(parameters: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    header = {
        "inputs": [{**{k: v for k, v in TENSOR.items() if k != "data"}, "parameters": {"binary_data_size": 256}}],
        "parameters": parameters,
    }
    head = json.dumps(header).encode()
    body = head + struct.pack("<64f", *([0.25] * 64))
    return body, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}


async def test_a_callers_forwarding_plan_is_refused_on_every_route_and_reaches_no_one() -> None:
    trap, calls = _trap()
    node = create_node_app(
        NodeConfig(
            bundled_models(),
            node_id="forwarder",
            threads=1,
            models=frozenset({"digits"}),
            node_token=NODE_TOKEN,
            forward_peers=frozenset({"*"}),
        )
    )
    async with serving(trap) as trap_url, serving(node) as node_url:
        plan = {"distinfer_forward": {"hops": [{"url": trap_url, "model": "anything", "send": ["logits"]}]}}
        # The node obeys a plan from whoever holds its token: the trap is a real target.
        async with httpx.AsyncClient(base_url=node_url, headers={"Authorization": f"Bearer {NODE_TOKEN}"}) as direct:
            obeyed = await direct.post("/v2/models/digits/infer", json={"inputs": [TENSOR], "parameters": plan})
        assert obeyed.status_code == 200, obeyed.text
        assert calls == [{"path": "/v2/models/anything/infer", "auth": f"Bearer {NODE_TOKEN}"}]
        calls.clear()

        auth = AuthSettings(jwt_secret=TEST_JWT_SECRET, node_token=NODE_TOKEN)
        async with mounted(settings_for([node_url], auth=auth), headers=bearer(INFER)) as (client, _):
            plain = {"model": "digits", "inputs": IMAGE}
            assert (await client.post(f"{PREFIX}/inference", json=plain)).status_code == 200
            bodies = {
                "/inference": {**plain, "parameters": plan},
                "/inference/batch": {"requests": [{**plain, "parameters": plan}]},
                "/inference/parallel": {"models": ["digits"], "inputs": IMAGE, "parameters": plan},
                "/inference/pipeline": {
                    "stages": [{"id": "a", "model": "digits", "inputs": IMAGE, "parameters": plan}]
                },
                "/inference/stream/digits": {"inputs": IMAGE, "parameters": plan},
                "/tasks": {"request": {**plain, "parameters": plan}},
            }
            for path, body in bodies.items():
                answer = await client.post(PREFIX + path, json=body)
                assert answer.status_code == 422, (path, answer.status_code, answer.text)
                assert answer.headers["content-type"] == "application/problem+json"
                assert "'distinfer_forward' is reserved" in answer.text, (path, answer.text)
            relayed = await client.post(
                f"{PREFIX}/v2/models/digits/infer", json={"inputs": [TENSOR], "parameters": plan}
            )
            body, headers = _binary(plan)
            relayed_binary = await client.post(f"{PREFIX}/v2/models/digits/infer", content=body, headers=headers)
            other = await client.post(
                f"{PREFIX}/v2/models/digits/infer", json={"inputs": [TENSOR], "parameters": {"distinfer_x": 1}}
            )
            for answer in (relayed, relayed_binary, other):
                assert answer.status_code == 400, answer.text
                assert "is reserved" in answer.json()["error"]
            # Parameters of the caller's own (a session id, generation options) still pass.
            fine = await client.post(
                f"{PREFIX}/v2/models/digits/infer", json={"inputs": [TENSOR], "parameters": {"session_id": "s"}}
            )
            assert fine.status_code == 200, fine.text
    assert calls == []
