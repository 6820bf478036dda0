"""How `NodeClient` reads a node's error statuses, and how the gateway words them for clients."""

from __future__ import annotations

import numpy as np
import pytest
from aiohttp import ClientSession, web

from gateway_plugin.errors import from_worker
from tests.unit.worker.test_client_large_response import _serving
from worker.client import NodeClient
from worker.errors import (
    ModelNotFound,
    ModelNotReady,
    NodeBusy,
    NodeCallError,
    NodeRejected,
    NodeServerError,
    NodeTimeout,
)
from worker.protocol import Tensor


async def test_a_busy_answer_carries_the_nodes_retry_after() -> None:
    """The pool leaves a busy node alone for as long as it asked (its Retry-After), infer and streams."""
    from worker.stream_client import open_generate_stream

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"error": "busy"}, status=429, headers={"Retry-After": "3"})

    async def no_header(request: web.Request) -> web.Response:
        return web.json_response({"error": "busy"}, status=429)

    app = web.Application()
    app.router.add_post("/v2/models/m/infer", answer)
    app.router.add_post("/v2/models/m/generate_stream", answer)
    app.router.add_post("/v2/models/quiet/infer", no_header)
    tensor = [Tensor.of("x", np.zeros((1, 1), np.float32))]
    async with _serving(app) as url, ClientSession() as session:
        with pytest.raises(NodeBusy) as infer_busy:
            await NodeClient(session).infer(url, "m", tensor, timeout_s=5)
        with pytest.raises(NodeBusy) as quiet_busy:
            await NodeClient(session).infer(url, "quiet", tensor, timeout_s=5)
        with pytest.raises(NodeBusy) as stream_busy:
            async with open_generate_stream(
                session, f"{url}/v2/models/m/generate_stream", {}, headers={}, connect_timeout_s=5, idle_timeout_s=5
            ):
                pass
    assert infer_busy.value.retry_after_s == 3.0
    assert stream_busy.value.retry_after_s == 3.0
    assert quiet_busy.value.retry_after_s is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),  # 30 s after `now` below
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # a date already past: no wait, never negative
        ("-5", None),
        ("soon", None),
        ("1.5", None),  # delay-seconds is an integer (RFC 9110 §10.2.3)
        ("", None),
        (None, None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(value: str | None, seconds: float | None) -> None:
    from worker.errors import retry_after_s

    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert retry_after_s(value, now=now) == seconds


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [(429, NodeBusy, True), (408, NodeBusy, True), (400, NodeRejected, False), (503, NodeServerError, True)],
)
async def test_a_busy_node_is_retried_elsewhere_a_refused_request_is_not(
    status: int, kind: type[NodeCallError], retryable: bool
) -> None:
    """Regression: a 429 or 408 (a v2 server behind a proxy sends them) was a verdict on the request:
    400 "Malformed request" to the client, never retried on another node."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"error": "too many requests"}, status=status)

    app = web.Application()
    app.router.add_post("/v2/models/m/infer", answer)
    async with _serving(app) as url, ClientSession() as session:
        with pytest.raises(NodeCallError) as caught:
            await NodeClient(session).infer(url, "m", [Tensor.of("x", np.zeros((1, 1), np.float32))], timeout_s=5)
    assert type(caught.value) is kind
    assert caught.value.retryable is retryable
    assert caught.value.status == status


async def test_a_busy_node_is_retryable_for_token_streams_too() -> None:
    """Regression: `generate_stream` still read a 429 as the request's fault: a 400, never retried."""
    from worker.stream_client import open_generate_stream

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"error": "busy"}, status=429)

    app = web.Application()
    app.router.add_post("/v2/models/m/generate_stream", answer)
    async with _serving(app) as url, ClientSession() as session:
        with pytest.raises(NodeBusy) as caught:
            async with open_generate_stream(
                session, f"{url}/v2/models/m/generate_stream", {}, headers={}, connect_timeout_s=5, idle_timeout_s=5
            ):
                pass
    assert caught.value.retryable
    assert caught.value.status == 429


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (NodeBusy("queue full", node_url="http://n:1", status=429), 429, "too_many_requests"),
        (ModelNotFound("no model 'x'"), 404, "unknown_model"),
        (ModelNotReady("model 'x' is loading"), 503, "no_capacity"),
        (NodeTimeout("no answer within 1s", node_url="http://n:1"), 504, "deadline_exceeded"),
    ],
)
def test_worker_errors_keep_their_meaning_for_the_client(error: Exception, status: int, code: str) -> None:
    """Regression: these kept their status but became code "internal", title "Internal error"."""
    mapped = from_worker(error)  # type: ignore[arg-type]
    assert (mapped.status, mapped.code) == (status, code)
    assert mapped.detail == error.args[0]
