"""Reading a request body with a hard cap, so an oversized body is refused before it is held."""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import Receive

from worker.errors import InvalidInput, PayloadTooLarge

__all__ = ["read_body", "receive_body"]


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, or PayloadTooLarge as soon as it (declared or streamed) passes `max_bytes`."""
    return await receive_body(request.receive, max_bytes, request.headers.get("content-length"))


async def receive_body(receive: Receive, max_bytes: int, declared: str | None) -> bytes:
    """`read_body` for plain ASGI: `declared` is the request's Content-Length value, if it sent one."""
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
