"""`DistributedInference.fast_lane(app)`: the v2 relay served ahead of the host app's middleware.

The lane must change where relay requests are handled and nothing else: the same answers, the
plugin's own flag and auth, every other path (and other methods on the relay path) to the app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import numpy as np
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, Request
from starlette.responses import Response

from gateway_plugin import DistributedInference, Settings
from gateway_plugin.auth import INFER
from gateway_plugin.processes import ServerProcess
from tests.integration.conftest import STARTUP_TIMEOUT_S, bearer, settings_for
from worker.protocol import HEADER_LENGTH, Limits, Tensor, decode_response, encode_request

PREFIX = "/api/v1/distributed"
RELAY = f"{PREFIX}/v2/models/digits/infer"


@asynccontextmanager
async def host_with_lane(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, list[str]]]:
    """A host app with its own middleware (which records the paths it sees), wrapped in the lane."""
    seen: list[str] = []
    app = FastAPI()

    @app.middleware("http")
    async def record(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        seen.append(request.url.path)
        return await call_next(request)

    distributed = DistributedInference(settings=settings)
    app.include_router(distributed.router)
    async with LifespanManager(distributed.fast_lane(app), startup_timeout=STARTUP_TIMEOUT_S) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", headers=bearer(INFER)) as client:
            yield client, seen


def _binary(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    encoded = encode_request([Tensor.of("image", images)], binary=True)
    return encoded.body, {"Content-Type": encoded.content_type, HEADER_LENGTH: str(encoded.header_length)}


async def test_relay_requests_take_the_lane_and_everything_else_the_app(
    two_nodes: list[ServerProcess], digits_images: np.ndarray, onnx_digits: Callable[[np.ndarray], np.ndarray]
) -> None:
    body, headers = _binary(digits_images)
    async with host_with_lane(settings_for([n.url for n in two_nodes])) as (client, seen):
        relayed = await client.post(RELAY, content=body, headers=headers)
        versioned = await client.post(f"{PREFIX}/v2/models/digits/versions/1/infer", content=body, headers=headers)
        nodes = await client.get(f"{PREFIX}/nodes")
        wrong_method = await client.get(RELAY)
    assert relayed.status_code == 200, relayed.text
    assert versioned.status_code == 200, versioned.text
    outputs = decode_response(relayed.content, int(relayed.headers[HEADER_LENGTH]), Limits()).outputs
    np.testing.assert_allclose(outputs[0].data, onnx_digits(digits_images), atol=1e-5)
    assert nodes.status_code == 200
    assert wrong_method.status_code == 405
    assert seen == [f"{PREFIX}/nodes", RELAY]  # the host's middleware saw only what the lane passed on


async def test_the_lane_keeps_the_plugins_auth_and_flag() -> None:
    async with host_with_lane(settings_for([])) as (client, seen):
        anonymous = await client.post(RELAY, json={"inputs": []}, headers={"Authorization": ""})
    async with host_with_lane(settings_for([], enabled=False)) as (client, _):
        disabled = await client.post(RELAY, json={"inputs": []})
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/problem+json"
    assert disabled.status_code == 404
    assert seen == []
