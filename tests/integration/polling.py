"""Polling with a deadline for integration tests: wait for a condition instead of sleeping a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["eventually", "until"]

T = TypeVar("T")


async def until(check: Callable[[], Any], *, timeout_s: float = 10.0, every_s: float = 0.02) -> float:
    """Poll `check` (sync or async) until truthy; the seconds it took. Fails the test at the deadline."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - began
        await asyncio.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s}s")


async def eventually(probe: Callable[[], Awaitable[T | None]], *, timeout_s: float = 20.0, every_s: float = 0.05) -> T:
    """Poll until `probe()` returns something (not None), or fail after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while True:
            found = await probe()
            if found is not None:
                return found
            await asyncio.sleep(every_s)
