"""The token stream relay, on scripted event sources (no node)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

from gateway_plugin.errors import DeadlineExceeded
from gateway_plugin.streaming import StreamEnd, StreamInterrupted, StreamToken, TokenStream


async def buffered(count: int, *, end: bool = True) -> AsyncIterator[dict[str, Any]]:
    """Events that are all there already: reading them never suspends, like a full socket buffer."""
    for index in range(1, count):
        yield {"text_output": "a", "index": index}
    if end:
        yield {"text_output": "", "finish_reason": "length", "tokens": count}


def stream(events: AsyncIterator[dict[str, Any]], *, timeout_s: float = 30.0) -> TokenStream:
    return TokenStream(
        model="m",
        model_version="1",
        node_id="n1",
        mode="distributed",
        attempts=1,
        _first={"text_output": "a", "index": 0},
        _events=events,
        _stack=AsyncExitStack(),
        _deadline=time.monotonic() + timeout_s,
        _timeout_s=timeout_s,
    )


async def test_relaying_buffered_events_still_lets_other_tasks_run() -> None:
    # Regression: with every event already buffered, the relay never suspended, so a client's
    # disconnect was only seen after the whole backlog had been written to a dead socket.
    seen_at: list[int] = []
    relayed = 0

    async def watcher() -> None:
        seen_at.append(relayed)

    task = asyncio.create_task(watcher())  # runs at the relay's first suspension
    async for item in stream(buffered(5000)).items():
        relayed += isinstance(item, StreamToken)
    await task
    assert seen_at[0] < 10


async def test_items_end_with_the_end_event_and_a_cut_stream_is_interrupted() -> None:
    items = [item async for item in stream(buffered(3)).items()]
    assert items[-1] == StreamEnd("length", 3)
    assert [i.index for i in items if isinstance(i, StreamToken)] == [0, 1, 2]
    with pytest.raises(StreamInterrupted, match="stopped mid-stream"):
        async for _ in stream(buffered(3, end=False)).items():
            pass


async def test_an_error_event_and_a_spent_deadline_end_the_stream() -> None:
    async def failing() -> AsyncIterator[dict[str, Any]]:
        yield {"error": "out of memory"}

    with pytest.raises(StreamInterrupted, match="out of memory"):
        async for _ in stream(failing()).items():
            pass

    async def stalled() -> AsyncIterator[dict[str, Any]]:
        await asyncio.Event().wait()
        yield {}

    with pytest.raises(DeadlineExceeded):
        async for _ in stream(stalled(), timeout_s=0.05).items():
            pass


@pytest.mark.parametrize(
    "bad", [{"text_output": "b", "index": "two"}, {"text_output": "", "finish_reason": "x", "tokens": [1]}]
)
async def test_an_event_with_a_count_that_is_not_one_interrupts_the_stream_as_the_nodes_fault(
    bad: dict[str, Any],
) -> None:
    """Regression (audit): `int()` of a node's string or list raised ValueError/TypeError: the
    client's stream was cut with no `error` or `done` event."""

    async def garbage() -> AsyncIterator[dict[str, Any]]:
        yield bad

    with pytest.raises(StreamInterrupted, match="is not a count"):
        async for _ in stream(garbage()).items():
            pass
