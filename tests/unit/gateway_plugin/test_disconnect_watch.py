"""`unless_disconnected`: cancel on a real disconnect only, whatever a host's middleware does to `receive`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway_plugin.api.disconnect import ClientLeft, unless_disconnected


async def _work(seconds: float = 0.05) -> str:
    await asyncio.sleep(seconds)
    return "answer"


async def test_the_work_is_cancelled_when_the_client_leaves() -> None:
    cancelled = asyncio.Event()

    async def long_work() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    async def leaves() -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"type": "http.disconnect"}

    with pytest.raises(ClientLeft) as left:
        await asyncio.wait_for(unless_disconnected(leaves, long_work()), 5)
    assert cancelled.is_set()
    assert left.value.status == 499


async def _replays() -> dict[str, Any]:
    """A host middleware's receive that hands the read body out again on every call (never suspends)."""
    return {"type": "http.request", "body": b"{}", "more_body": False}


async def _raises() -> dict[str, Any]:
    """BaseHTTPMiddleware with the 'set_body' recipe once the body is read."""
    raise RuntimeError("Unexpected message received: http.request")


@pytest.mark.parametrize("receive", [_replays, _raises], ids=["replaying receive", "raising receive"])
async def test_a_receive_that_says_nothing_of_the_client_never_cancels_nor_spins(receive: Any) -> None:
    """Regression: the watcher looped on receive (a replaying one never yielded: the event loop froze)
    and took an exception from it for a disconnect (the client, still there, got a 400)."""
    ticks = 0

    async def ticking() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    ticker = asyncio.create_task(ticking())
    try:
        assert await asyncio.wait_for(unless_disconnected(receive, _work()), 5) == "answer"
    finally:
        ticker.cancel()
    assert ticks >= 3  # the loop kept running other tasks meanwhile
