"""The gateway's side of `generate_stream`: open a node's SSE stream and read its events.

`open_generate_stream` connects and checks the answer (status, content type) before handing out
the events, so a failure to start is a `NodeCallError` the caller may retry elsewhere. Events are
the JSON `data` of each SSE event; comments (pings) are skipped. A cut connection, a read that
waits longer than `idle_timeout_s`, or an oversized line end the iteration with a `NodeCallError`.
Leaving the context closes the connection (not back to the pool), which the node sees as a
disconnect and cancels its generation.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from worker.errors import NodeBusy, NodeRejected, NodeServerError, NodeTimeout, NodeUnreachable, retry_after_s

__all__ = ["open_generate_stream"]

_MAX_EVENT_BYTES = 1 << 20


async def _events(response: aiohttp.ClientResponse, url: str) -> AsyncIterator[dict[str, Any]]:
    data: list[bytes] = []
    size = 0
    try:
        async for raw in response.content:
            line = raw.rstrip(b"\r\n")
            if not line:
                if data:
                    payload = b"\n".join(data)
                    data, size = [], 0
                    try:
                        event = json.loads(payload)
                    except ValueError as exc:
                        raise NodeServerError(f"{url}: an event is not JSON", node_url=url) from exc
                    if isinstance(event, dict):
                        yield event
                continue
            if line.startswith(b"data:"):
                size += len(line)
                if size > _MAX_EVENT_BYTES:
                    raise NodeServerError(f"{url}: an event is over {_MAX_EVENT_BYTES} bytes", node_url=url)
                data.append(line[5:].removeprefix(b" "))
    except TimeoutError as exc:
        raise NodeTimeout(f"{url}: the stream stalled", node_url=url) from exc
    except (aiohttp.ClientError, ValueError) as exc:  # ValueError: aiohttp's "line too long"
        # The node answered, then the stream broke: its failure (the breaker counts it), but not proof
        # that nothing listens there, which would take the node out for every model at once.
        raise NodeServerError(f"{url}: stream cut: {type(exc).__name__}: {exc}", node_url=url) from exc


@asynccontextmanager
async def open_generate_stream(
    session: aiohttp.ClientSession,
    url: str,
    payload: Mapping[str, Any],
    *,
    headers: Mapping[str, str],
    connect_timeout_s: float,
    idle_timeout_s: float,
) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
    timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_read=idle_timeout_s)
    send = {"Accept": "text/event-stream", **headers}
    try:
        response = await session.post(url, json=dict(payload), headers=send, timeout=timeout)
    except TimeoutError as exc:
        raise NodeTimeout(f"{url}: no answer within {connect_timeout_s:.3g}s", node_url=url) from exc
    except aiohttp.ClientError as exc:
        raise NodeUnreachable(f"{url}: {type(exc).__name__}: {exc}", node_url=url) from exc
    try:
        if response.status >= 400:
            body = await response.content.read(4096)
            text = _error_text(body)
            if response.status in (408, 429):  # busy, as for infer (worker.client): another node may
                wait = retry_after_s(response.headers.get("Retry-After"))
                raise NodeBusy(
                    f"{url}: {response.status} {text}", node_url=url, status=response.status, retry_after_s=wait
                )
            if response.status >= 500 or response.status in (401, 403):
                raise NodeServerError(f"{url}: {response.status} {text}", node_url=url, status=502)
            raise NodeRejected(text, node_url=url, status=response.status)
        if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
            raise NodeServerError(f"{url}: answer is not an event stream", node_url=url)
        yield _events(response, url)
    finally:
        response.close()


def _error_text(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return str(parsed["error"])
    return str(parsed)[:200]
