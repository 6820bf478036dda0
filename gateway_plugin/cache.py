"""Response cache for deterministic models: same model, version, inputs and asks -> same answer.

Opt-in per model (`DISTINFER_CACHE_MODELS`), bounded in entries, in bytes and in time (LRU + TTL;
expired entries are freed as traffic passes, not only when their key is asked again). The key
hashes everything that decides the answer: model, the model version the cluster serves now,
requested outputs, parameters and every input tensor's name, datatype, shape and bytes. It wraps
the dispatcher, so every caller of `infer` (single, relay, batch items) shares it. Each lookup is
reported to an injected `observe(model, hit)` (the plugin's Prometheus counters).
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from gateway_plugin.dispatch import InferenceCall, Outcome
from gateway_plugin.services import InferenceDispatcher
from gateway_plugin.telemetry.observer import NO_OBSERVER, DispatchObserver
from worker.protocol import Tensor

__all__ = ["CachingDispatcher", "ResponseCache", "cache_key", "outcome_bytes"]

_LENGTH = struct.Struct("<Q")


def _tensor_digest(digest: hashlib.blake2b, tensor: Tensor) -> None:
    header = json.dumps([tensor.name, tensor.datatype, tensor.shape]).encode()
    digest.update(_LENGTH.pack(len(header)) + header)
    if tensor.datatype == "BYTES":
        for item in tensor.data.ravel().tolist():
            raw = item if isinstance(item, bytes) else str(item).encode()
            digest.update(_LENGTH.pack(len(raw)) + raw)
    else:
        raw = np.ascontiguousarray(tensor.data).tobytes()
        digest.update(_LENGTH.pack(len(raw)) + raw)


def cache_key(call: InferenceCall, version: str | None) -> bytes:
    """A digest of everything that decides the answer; lengths are framed so fields cannot run together."""
    digest = hashlib.blake2b(digest_size=32)
    head = json.dumps(
        [call.model, version, list(call.outputs) if call.outputs else None, dict(call.parameters)],
        sort_keys=True,
        default=str,
    ).encode()
    digest.update(_LENGTH.pack(len(head)) + head)
    for tensor in sorted(call.inputs, key=lambda t: t.name):
        _tensor_digest(digest, tensor)
    return digest.digest()


@dataclass(slots=True)
class _Entry:
    outcome: Outcome
    expires: float
    size: int


def outcome_bytes(outcome: Outcome) -> int:
    """What an answer holds in memory, about: its tensors' data (a BYTES item by its length)."""
    size = len(outcome.raw.data) if outcome.raw is not None else 0
    for tensor in outcome.outputs:
        if tensor.datatype == "BYTES":
            size += sum(len(item) if isinstance(item, bytes | str) else 8 for item in tensor.data.ravel().tolist())
        else:
            size += int(tensor.data.nbytes)
    return size + 256  # the records around it


class ResponseCache:
    """LRU bounded in entries and bytes, with a TTL; counts hits and misses for metrics."""

    def __init__(
        self,
        *,
        max_entries: int,
        ttl_s: float,
        max_bytes: int = 256 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        # Keys in the order they expire (one TTL for all: the order they were put), so that expired
        # entries are freed as traffic passes; a stale pair (key put again, or evicted) is skipped.
        self._expiring: deque[tuple[float, bytes]] = deque()
        self._max = max_entries
        self._max_bytes = max_bytes
        self._ttl = ttl_s
        self._clock = clock
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: bytes) -> None:
        self.bytes -= self._entries.pop(key).size

    def _expire(self, now: float) -> None:
        while self._expiring and self._expiring[0][0] <= now:
            expires, key = self._expiring.popleft()
            entry = self._entries.get(key)
            if entry is not None and entry.expires == expires:
                self._drop(key)

    def get(self, key: bytes) -> Outcome | None:
        now = self._clock()
        self._expire(now)
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry.outcome

    def put(self, key: bytes, outcome: Outcome) -> None:
        size = outcome_bytes(outcome)
        if size > self._max_bytes:
            return  # one answer bigger than the whole cache: kept, it would evict everything else
        now = self._clock()
        self._expire(now)
        if key in self._entries:
            self._drop(key)
        entry = self._entries[key] = _Entry(outcome, now + self._ttl, size)
        self.bytes += size
        self._expiring.append((entry.expires, key))
        if len(self._expiring) > 2 * len(self._entries) + 64:
            # Pairs of evicted or replaced keys wait for their expiry: unique keys at a high rate
            # would grow the queue past every bound. Rebuilt from the live entries, in expiry order.
            self._expiring = deque(sorted((live.expires, live_key) for live_key, live in self._entries.items()))
        while len(self._entries) > self._max or self.bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))


class CachingDispatcher:
    """A Dispatcher that answers repeated requests for cacheable models from the cache."""

    def __init__(
        self,
        inner: InferenceDispatcher,
        cache: ResponseCache,
        *,
        models: frozenset[str],
        version_of: Callable[[str], str | None],
        observe: Callable[[str, bool], None] = lambda model, hit: None,
        observer: DispatchObserver = NO_OBSERVER,
    ) -> None:
        self._inner = inner
        self._observer = observer  # a hit is a logical call too: requests_total, latency, /stats
        self.cache = cache
        self._models = models
        self._version_of = version_of
        self._observe = observe  # (model, hit), once per lookup

    async def infer(self, call: InferenceCall) -> Outcome:
        if call.model not in self._models or call.shadow:  # a shadow copy would count as a hit or miss
            return await self._inner.infer(call)
        # Cached answers are tensors, encoded per caller: a forwarded one keeps its first caller's encoding.
        call = replace(call, raw=None)
        started = time.perf_counter()
        version = self._version_of(call.model)
        key = cache_key(call, version)
        cached = self.cache.get(key)
        self._observe(call.model, cached is not None)
        if cached is not None:
            with self._observer.dispatch(call.model, call.request_id, "cache") as seen:
                seen.finished(None, "cache", 0)  # mode `cache`: no node was asked
            return replace(cached, attempts=0, latency_ms=(time.perf_counter() - started) * 1000)
        outcome = await self._inner.infer(call)
        # Only cluster answers are kept: a local-fallback answer must not outlive the outage. And
        # not those of another version than the key's: while two versions serve side by side, the
        # other version's answer kept under this key would outlive its version's withdrawal (a
        # rollback). An answer that names no version (v2 makes it optional) cannot be told apart.
        named = outcome.model_version
        if outcome.mode == "distributed" and (named is None or named == version):
            self.cache.put(key, outcome)
        return outcome
