"""The response cache: a hit only when everything that decides the answer is the same."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from gateway_plugin.cache import CachingDispatcher, ResponseCache, cache_key, outcome_bytes
from gateway_plugin.dispatch import InferenceCall, Outcome
from tests.fake_clock import FakeClock
from worker.protocol import Tensor


class CountingDispatcher:
    """Answers every call with a fresh outcome and counts the calls that reached it."""

    def __init__(self, mode: str = "distributed") -> None:
        self.calls = 0
        self.mode = mode

    async def infer(self, call: InferenceCall) -> Outcome:
        self.calls += 1
        doubled = Tensor.of("y", call.inputs[0].data * 2)
        return Outcome(call.model, "1", [doubled], "node-1", self.mode, 1, 5.0)  # type: ignore[arg-type]


def _call(values: list[float], **changes: object) -> InferenceCall:
    fields: dict[str, object] = {
        "model": "digits",
        "inputs": [Tensor.of("x", np.asarray(values, dtype=np.float32))],
        "request_id": "r",
        "timeout_s": 1.0,
    }
    fields.update(changes)
    return InferenceCall(**fields)  # type: ignore[arg-type]


def _dispatcher(inner: CountingDispatcher, clock: FakeClock | None = None, version: str = "1") -> CachingDispatcher:
    cache = ResponseCache(max_entries=2, ttl_s=10, clock=clock or FakeClock(100.0))
    return CachingDispatcher(inner, cache, models=frozenset({"digits"}), version_of=lambda _: version)


async def test_the_same_call_twice_reaches_the_cluster_once() -> None:
    inner = CountingDispatcher()
    cached = _dispatcher(inner)
    first = await cached.infer(_call([1, 2]))
    second = await cached.infer(_call([1, 2], request_id="another id"))
    assert inner.calls == 1
    assert second.attempts == 0
    np.testing.assert_array_equal(second.outputs[0].data, first.outputs[0].data)
    assert (cached.cache.hits, cached.cache.misses) == (1, 1)


@pytest.mark.parametrize(
    "other",
    [
        _call([1, 3]),
        _call([1, 2], outputs=["y"]),
        _call([1, 2], parameters={"temperature": 0.5}),
        _call([1, 2], inputs=[Tensor.of("x", np.asarray([1, 2], dtype=np.float64))]),
        _call([1, 2], inputs=[Tensor.of("x", np.asarray([[1, 2]], dtype=np.float32))]),
    ],
)
async def test_anything_that_changes_the_answer_is_a_miss(other: InferenceCall) -> None:
    inner = CountingDispatcher()
    cached = _dispatcher(inner)
    await cached.infer(_call([1, 2]))
    await cached.infer(other)
    assert inner.calls == 2


def test_bytes_elements_are_framed_so_they_cannot_run_together() -> None:
    def strings(*items: bytes) -> InferenceCall:
        array = np.empty(len(items), dtype=object)
        array[:] = list(items)
        return _call([0], inputs=[Tensor("s", "BYTES", array)])

    assert cache_key(strings(b"ab", b"c"), "1") != cache_key(strings(b"a", b"bc"), "1")


async def test_a_new_model_version_is_a_miss() -> None:
    inner = CountingDispatcher()
    cache = ResponseCache(max_entries=4, ttl_s=10)
    version = {"now": "1"}
    cached = CachingDispatcher(inner, cache, models=frozenset({"digits"}), version_of=lambda _: version["now"])
    await cached.infer(_call([1]))
    version["now"] = "2"
    await cached.infer(_call([1]))
    assert inner.calls == 2


async def test_an_answer_from_another_version_than_the_keys_is_not_kept() -> None:
    """Two versions serve side by side; the catalog names "2", a node of version "1" answers: that
    answer must not be served as version 2's (nor outlive version 1's withdrawal)."""
    inner = CountingDispatcher()  # its nodes answer as version "1"
    cached = _dispatcher(inner, version="2")
    await cached.infer(_call([1]))
    await cached.infer(_call([1]))
    assert inner.calls == 2
    assert len(cached.cache) == 0
    same = _dispatcher(CountingDispatcher(), version="1")
    await same.infer(_call([1]))
    assert len(same.cache) == 1
    unnamed = CountingDispatcher()
    unnamed_cache = _dispatcher(unnamed, version="2")

    async def no_version(call: InferenceCall) -> Outcome:
        return replace(await CountingDispatcher.infer(unnamed, call), model_version=None)

    unnamed.infer = no_version  # type: ignore[method-assign]
    await unnamed_cache.infer(_call([1]))
    assert len(unnamed_cache.cache) == 1  # a server that names no version is cached as before


async def test_entries_expire_and_the_oldest_is_evicted() -> None:
    inner, clock = CountingDispatcher(), FakeClock(100.0)
    cached = _dispatcher(inner, clock)
    await cached.infer(_call([1]))
    clock.now += 11  # past the 10 s TTL
    await cached.infer(_call([1]))
    assert inner.calls == 2
    await cached.infer(_call([2]))
    await cached.infer(_call([3]))  # max_entries=2: [1] is evicted
    assert len(cached.cache) == 2
    await cached.infer(_call([1]))
    assert inner.calls == 5


async def test_models_not_opted_in_and_local_answers_are_never_cached() -> None:
    inner = CountingDispatcher()
    cached = _dispatcher(inner)
    for _ in range(2):
        await cached.infer(_call([1], model="other"))
    local_inner = CountingDispatcher(mode="local")
    local = _dispatcher(local_inner)
    for _ in range(2):
        await local.infer(_call([1]))
    assert (inner.calls, local_inner.calls) == (2, 2)


async def test_every_lookup_of_a_cacheable_model_is_observed_as_hit_or_miss() -> None:
    seen: list[tuple[str, bool]] = []
    cache = ResponseCache(max_entries=4, ttl_s=10, clock=FakeClock(100.0))
    cached = CachingDispatcher(
        CountingDispatcher(),
        cache,
        models=frozenset({"digits"}),
        version_of=lambda _: "1",
        observe=lambda model, hit: seen.append((model, hit)),
    )
    for call in (_call([1]), _call([1]), _call([2]), _call([1], model="other")):
        await cached.infer(call)
    assert seen == [("digits", False), ("digits", True), ("digits", False)]  # "other" is not cacheable
    assert (cache.hits, cache.misses) == (1, 2)


def _outcome(values: int) -> Outcome:
    data = Tensor.of("y", np.zeros(values, dtype=np.float32))
    return Outcome("digits", "1", [data], "node-1", "distributed", 1, 5.0)


def test_the_cache_is_bounded_in_bytes_too() -> None:
    """Regression (audit): only entries were counted: 10,000 large answers (the default) could hold
    gigabytes of a gateway's memory."""
    cache = ResponseCache(max_entries=100, ttl_s=10, max_bytes=10_000, clock=FakeClock(100.0))
    for index in range(10):
        cache.put(bytes([index]), _outcome(1000))  # ~4 KB each
    assert len(cache) == 2
    assert cache.bytes <= 10_000
    assert cache.get(bytes([9])) is not None  # the newest stay
    assert cache.get(bytes([0])) is None
    cache.put(b"huge", _outcome(100_000))  # bigger than the whole cache: not kept, nothing evicted
    assert cache.get(b"huge") is None
    assert len(cache) == 2


def test_expired_entries_are_freed_as_traffic_passes_not_only_when_asked_again() -> None:
    """Regression (audit): an expired entry was dropped only when its own key was looked up: one-off
    requests (most of them, for varied inputs) stayed in memory until the entry count evicted them."""
    clock = FakeClock(100.0)
    cache = ResponseCache(max_entries=100, ttl_s=10, clock=clock)
    for index in range(5):
        cache.put(bytes([index]), _outcome(10))
    assert cache.get(bytes([0])) is not None  # a hit moves it in LRU order, not in expiry order
    clock.now += 11
    cache.put(b"new", _outcome(10))
    assert len(cache) == 1
    assert cache.bytes == cache_bytes_of(1)


def test_putting_a_key_again_replaces_it_once() -> None:
    clock = FakeClock(100.0)
    cache = ResponseCache(max_entries=100, ttl_s=10, clock=clock)
    cache.put(b"k", _outcome(10))
    before = cache.bytes
    clock.now += 5
    cache.put(b"k", _outcome(10))
    assert (len(cache), cache.bytes) == (1, before)
    clock.now += 6  # the first put's expiry passes: the second's entry stays
    assert cache.get(b"k") is not None
    clock.now += 5
    assert cache.get(b"k") is None
    assert cache.bytes == 0


def cache_bytes_of(entries: int) -> int:
    return entries * outcome_bytes(_outcome(10))


async def test_shadow_copies_neither_look_up_nor_fill_the_cache() -> None:
    inner = CountingDispatcher()
    cached = _dispatcher(inner)
    await cached.infer(_call([1], shadow=True))
    await cached.infer(_call([1], shadow=True))
    assert (inner.calls, len(cached.cache), cached.cache.hits, cached.cache.misses) == (2, 0, 0, 0)


def test_the_expiry_queue_stays_bounded_by_the_entries() -> None:
    """Regression (review): every put queued its expiry, and evicted keys' stayed queued for the whole
    TTL: unique requests grew the queue past max_entries and max_bytes."""
    clock = FakeClock(100.0)
    cache = ResponseCache(max_entries=10, ttl_s=3600, clock=clock)
    for index in range(5000):
        cache.put(index.to_bytes(4, "big"), _outcome(1))
        clock.now += 0.001
    assert len(cache) == 10
    assert len(cache._expiring) <= 2 * 10 + 64 + 1  # the private queue is what grew
    clock.now += 3601
    cache.put(b"last", _outcome(1))
    assert len(cache) == 1
