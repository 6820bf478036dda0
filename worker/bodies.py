"""Reading a request body with a hard cap, so an oversized body is refused before it is held."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

from worker.errors import InvalidInput, PayloadTooLarge

__all__ = ["read_body"]


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, or PayloadTooLarge as soon as it (declared or streamed) passes `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidInput("Content-Length must be a non-negative integer")
        if int(declared) > max_bytes:
            raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"body is over the limit of {max_bytes} bytes")
            chunks.append(chunk)
    except ClientDisconnect as exc:
        # The caller went away mid-body: a bad request of theirs, not a server error.
        raise InvalidInput(f"client disconnected after {size} bytes of the body") from exc
    return b"".join(chunks)
