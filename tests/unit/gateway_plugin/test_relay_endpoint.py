"""`RelayEndpoint` as plain ASGI: whatever goes wrong, the caller gets problem+json."""

from __future__ import annotations

import json
from typing import Any

import pytest

import gateway_plugin.api.relay as relay
from worker.client import RawMessage


async def _call(endpoint: relay.RelayEndpoint) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "headers": [], "path_params": {"model": "m"}}
    await endpoint(scope, receive, send)
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), body


async def test_an_answer_header_that_cannot_be_sent_becomes_a_problem_not_a_bare_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression (review): the answer's headers were encoded outside the error handling."""

    async def services() -> Any:
        return object()

    async def allow(_: str | None) -> None:
        return None

    async def relayed(*_: Any) -> tuple[RawMessage, dict[str, str]]:
        return RawMessage(b"{}", "application/json; charset=\u20ac"), {"X-Request-ID": "r"}  # not latin-1

    async def small_body(*_: Any) -> bytes:
        return b"{}"

    monkeypatch.setattr(relay, "_relay", relayed)
    monkeypatch.setattr(relay, "receive_body", small_body)
    status, headers, body = await _call(relay.RelayEndpoint(services, allow, 1024))
    assert status == 500
    assert headers[b"content-type"] == b"application/problem+json"
    assert json.loads(body)["detail"]


def test_the_relay_reads_the_first_of_repeated_headers_and_only_those_it_uses() -> None:
    """As Starlette's `Headers.get`: the first value wins; pairs may come as lists (ASGI allows any iterable)."""
    scope = {
        "headers": iter(
            [
                (b"x-request-id", b"first"),
                [b"authorization", b"Bearer a"],
                (b"x-request-id", b"second"),
                (b"accept", b"*/*"),
                (b"inference-header-content-length", b"12"),
            ]
        )
    }
    assert relay._headers(scope) == {
        "x-request-id": "first",
        "authorization": "Bearer a",
        "inference-header-content-length": "12",
    }
