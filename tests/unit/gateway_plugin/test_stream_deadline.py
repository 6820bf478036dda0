"""A stream whose attempts spent the deadline is a 504, whichever way the last one failed (as for calls)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any

import pytest

from balancer.pool import NodePool
from balancer.strategies import default_strategies
from discovery.node import ModelInfo, NodeSpec, NodeStatus
from discovery.registry import NodeRegistry
from gateway_plugin.errors import DeadlineExceeded, NoCapacity
from gateway_plugin.streaming import StreamCall, StreamRelay
from tests.fake_clock import FakeClock
from worker.errors import NodeUnreachable

INFO = ModelInfo("m", "1", "onnx", (), ())


class UnreachableClient:
    """Every stream fails to connect after `takes_s` of the fake clock."""

    def __init__(self, clock: FakeClock, takes_s: float) -> None:
        self.clock, self.takes_s, self.calls = clock, takes_s, 0

    def generate_stream(self, url: str, model: str, payload: Any, **_: Any) -> Any:
        @asynccontextmanager
        async def connect() -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
            self.calls += 1
            self.clock.now += self.takes_s
            raise NodeUnreachable("connect timed out", node_url=url)
            yield  # pragma: no cover (a generator, for asynccontextmanager)

        return connect()


def _relay(clock: FakeClock, client: UnreachableClient) -> StreamRelay:
    registry = NodeRegistry()
    pool = NodePool(registry, default_strategies(), default_strategy="round_robin", rng=random.Random(0))
    registry.reset("static", [NodeSpec("http://n0:1", node_id="n0")])
    registry.update("http://n0:1", status=NodeStatus.ONLINE, models=MappingProxyType({"m": INFO}))
    return StreamRelay(pool, client, max_attempts=2, clock=clock)  # type: ignore[arg-type]


async def test_a_connect_that_spends_the_deadline_is_a_504_not_a_503() -> None:
    """Regression: a node unreachable until the deadline ran out made the stream a 503 (no capacity),
    where the dispatcher, for the same failure of a call, answers 504 (deadline spent)."""
    clock = FakeClock(100.0)
    client = UnreachableClient(clock, takes_s=2.0)
    with pytest.raises(DeadlineExceeded):
        await _relay(clock, client).open(StreamCall("m", "hello", {"max_tokens": 2}, "req-1", 1.0))
    assert client.calls == 1


async def test_an_unreachable_node_with_time_left_is_still_no_capacity() -> None:
    clock = FakeClock(100.0)
    client = UnreachableClient(clock, takes_s=0.01)
    with pytest.raises(NoCapacity) as caught:
        await _relay(clock, client).open(StreamCall("m", "hello", {"max_tokens": 2}, "req-1", 1.0))
    assert not isinstance(caught.value, DeadlineExceeded)
    assert caught.value.status == 503
