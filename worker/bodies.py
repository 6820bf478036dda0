"""Reading a request body with a hard cap, so an oversized body is refused before it is held.

A body sent with a `Content-Encoding` (gzip, deflate) comes back decoded, under the same cap
(`worker.content_coding`).
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.types import Receive

from worker.content_coding import decode_content
from worker.errors import InvalidInput, PayloadTooLarge

__all__ = ["read_body", "receive_body"]


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, decoded, or PayloadTooLarge as soon as it (declared, streamed or decoded) passes `max_bytes`."""
    headers = request.headers
    return await receive_body(
        request.receive, max_bytes, headers.get("content-length"), headers.get("content-encoding")
    )


async def receive_body(receive: Receive, max_bytes: int, declared: str | None, encoding: str | None = None) -> bytes:
    """`read_body` for plain ASGI: `declared` and `encoding` are the request's Content-Length and
    Content-Encoding values, if it sent them."""
    body = await _receive(receive, max_bytes, declared)
    if encoding is None:
        return body
    if len(body) > _INFLATE_OFF_LOOP_BYTES:  # 64 KB of gzip can be 64 MB: 0.1 s of inflating
        return await asyncio.to_thread(decode_content, body, encoding, max_bytes)
    return decode_content(body, encoding, max_bytes)


# Compressed bodies above this are inflated in a thread: judged by what was sent, which says little of
# what it inflates to (gzip reaches ~1000:1), so low. Below it, at most a few MB: a thread hop costs more.
_INFLATE_OFF_LOOP_BYTES = 2 * 1024


async def _receive(receive: Receive, max_bytes: int, declared: str | None) -> bytes:
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):  # not '²': int() refuses it
            raise InvalidInput("Content-Length must be a non-negative integer")
        if int(declared) > max_bytes:
            raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {max_bytes}")
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):  # the usual body: one message
        body: bytes = message.get("body", b"")
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"body is over the limit of {max_bytes} bytes")
        return body
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] == "http.disconnect":
            # The caller went away mid-body: a bad request of theirs, not a server error.
            raise InvalidInput(f"client disconnected after {size} bytes of the body")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        message = await receive()
