"""A coroutine run as a task for the duration of a block (a server's background loop in a test)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

__all__ = ["in_background"]


@contextlib.asynccontextmanager
async def in_background(coroutine: Coroutine[Any, Any, Any]) -> AsyncIterator[asyncio.Task[Any]]:
    """Cancelled when the block ends; anything it raised other than its cancellation fails the test."""
    task = asyncio.create_task(coroutine)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
