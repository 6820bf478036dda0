"""Token streams from generative models: pick a node, open its `generate_stream`, relay the tokens.

`StreamRelay.open()` returns only once the first event has arrived, so everything that can go
wrong before the first token (no node, connection refused, a node that answers 5xx, an error
event, a stream that ends at once) is retried on another node, falls back to a local generator,
or becomes an HTTP error with its own status. After the first token the stream is committed: a
node that dies, stalls past the deadline or sends garbage ends it with `StreamInterrupted` /
`DeadlineExceeded`, raised from the iteration, never a hang. Closing the stream (a client that
went away) closes the node connection, which cancels the generation on the node.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Literal

import anyio.lowlevel

from balancer.pool import Lease, NodePool
from gateway_plugin.errors import DeadlineExceeded, NoCapacity, UnknownModel, from_worker
from gateway_plugin.local import LocalInference
from gateway_plugin.telemetry.observer import NO_OBSERVER, DispatchObserver
from worker.client import NodeClient
from worker.errors import NodeCallError, NodeServerError, NodeTimeout, NodeUnreachable, WorkerError
from worker.generate import GenerateParams

__all__ = ["StreamCall", "StreamEnd", "StreamInterrupted", "StreamRelay", "StreamToken", "TokenStream"]

log = logging.getLogger(__name__)


class StreamInterrupted(NoCapacity):
    code, title = "stream_interrupted", "The stream was cut off"


@dataclass(frozen=True, slots=True)
class StreamCall:
    model: str
    prompt: str
    parameters: Mapping[str, Any]
    request_id: str
    timeout_s: float
    strategy: str | None = None


@dataclass(frozen=True, slots=True)
class StreamToken:
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class StreamEnd:
    finish_reason: str
    tokens: int


Event = dict[str, Any]


@dataclass
class TokenStream:
    """One opened stream: where it runs, and its items (tokens, then one `StreamEnd`)."""

    model: str
    model_version: str | None
    node_id: str | None
    mode: Literal["distributed", "local"]
    attempts: int
    _first: Event
    _events: AsyncIterator[Event]
    _stack: AsyncExitStack
    _deadline: float
    _timeout_s: float
    _lease: Lease | None = None
    _clock: Callable[[], float] = time.monotonic
    _first_s: float = 0.0  # time to the first event: what the balancer learns as this node's latency
    _closed: bool = False

    async def items(self) -> AsyncIterator[StreamToken | StreamEnd]:
        event: Event | None = self._first
        error: NodeCallError | None = None
        try:
            while event is not None:
                item = _item(event, self.node_id)
                yield item
                if isinstance(item, StreamEnd):
                    return
                event = await self._next()
            error = NodeUnreachable("the stream ended before its last event", node_url=self.node_id or "local")
            raise StreamInterrupted(f"{self._where()} stopped mid-stream")
        except NodeCallError as exc:
            error = exc
            raise StreamInterrupted(f"{self._where()} failed mid-stream: {exc.message}") from exc
        finally:
            if self._lease is not None:
                self._lease.report(self._first_s, error)

    async def _next(self) -> Event | None:
        # Events already buffered are read without suspending; without this checkpoint a fast node
        # keeps the loop busy, and the client's disconnect (and pings) would wait for a lull.
        await anyio.lowlevel.checkpoint()
        remaining = self._deadline - self._clock()
        if remaining <= 0:
            raise DeadlineExceeded(f"deadline of {self._timeout_s * 1000:.0f} ms spent mid-stream")
        try:
            async with asyncio.timeout(remaining):
                return await anext(self._events, None)
        except TimeoutError as exc:
            raise DeadlineExceeded(f"deadline of {self._timeout_s * 1000:.0f} ms spent mid-stream") from exc

    def _where(self) -> str:
        return f"node {self.node_id}" if self.node_id else "the local generator"

    async def aclose(self) -> None:
        """Close the node connection (the node then cancels its work) and release the node; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._stack.aclose()
        finally:
            if self._lease is not None:
                self._lease.done()


def _item(event: Event, where: str | None) -> StreamToken | StreamEnd:
    if isinstance(event.get("error"), str):
        raise NodeServerError(f"the node reported: {event['error']}", node_url=where or "local")
    if "finish_reason" in event:
        return StreamEnd(str(event["finish_reason"]), _count(event, "tokens", where))
    text = event.get("text_output")
    if not isinstance(text, str):
        raise NodeServerError("an event has no text_output", node_url=where or "local")
    return StreamToken(_count(event, "index", where), text)


def _count(event: Event, key: str, where: str | None) -> int:
    """A whole number the node sent; anything else is the node's fault (Regression, audit: `int()`
    of a string or a list was a 500 before the first token and a cut-off stream after it)."""
    value = event.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise NodeServerError(f"an event's {key!r} is not a count: {str(value)[:40]!r}", node_url=where or "local")
    return value


class StreamRelay:
    def __init__(
        self,
        pool: NodePool,
        client: NodeClient,
        *,
        max_attempts: int,
        connect_timeout_s: float = 5.0,
        local: LocalInference | None = None,
        max_new_tokens: int = 1024,
        clock: Callable[[], float] = time.monotonic,
        observer: DispatchObserver = NO_OBSERVER,
    ) -> None:
        self._pool = pool
        self._observer = observer  # the dispatcher's: metrics, spans, stats and trace context, up to the first token
        self._client = client
        self._max_attempts = max_attempts
        self._connect_timeout_s = connect_timeout_s
        self._local = local
        self._max_new_tokens = max_new_tokens
        self._clock = clock

    def check(self, call: StreamCall) -> GenerateParams:
        """The generation parameters, checked before any node is called (BadRequest when wrong)."""
        try:
            return GenerateParams.parse(
                call.prompt, dict(call.parameters), max_tokens=self._max_new_tokens, max_prompt=16_384
            )
        except WorkerError as exc:
            raise from_worker(exc) from exc

    async def open(self, call: StreamCall) -> TokenStream:
        params = self.check(call)
        strategy = self._pool.check_strategy(call.strategy)
        # Seen as one logical call whose attempts end at the first token (what is picked and retried).
        with self._observer.dispatch(call.model, call.request_id, strategy) as seen:
            stream = await self._open(call, params, strategy)
            seen.finished(stream.node_id, stream.mode, stream.attempts)
        return stream

    async def _open(self, call: StreamCall, params: GenerateParams, strategy: str) -> TokenStream:
        deadline = self._clock() + call.timeout_s
        payload = {"text_input": params.prompt, "parameters": dict(call.parameters), "id": call.request_id}
        tried: set[str] = set()
        attempts = 0
        last_error: NodeCallError | None = None
        while attempts < self._max_attempts and (
            lease := self._pool.pick(call.model, strategy=strategy, exclude=frozenset(tried))
        ):
            picked = self._clock()
            attempts += 1
            tried.add(lease.node.key)
            stack = AsyncExitStack()
            try:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise DeadlineExceeded(f"deadline of {call.timeout_s * 1000:.0f} ms spent before the stream began")
                with self._observer.attempt(call.model, lease.node.node_id, attempts) as observed:
                    events = await stack.enter_async_context(
                        self._client.generate_stream(
                            lease.node.url,
                            call.model,
                            payload,
                            connect_timeout_s=min(self._connect_timeout_s, remaining),
                            idle_timeout_s=remaining,
                            request_id=call.request_id,
                            headers=observed.headers,
                        )
                    )
                    async with asyncio.timeout(remaining):
                        first = await anext(events, None)
                    if first is None:
                        raise NodeServerError("the stream ended before its first event", node_url=lease.node.url)
                    _item(first, lease.node.node_id)  # an error event before any token counts as a failed attempt
            except TimeoutError as exc:
                await _abandon(stack, lease, error=None)
                raise DeadlineExceeded(f"no first token within {call.timeout_s * 1000:.0f} ms") from exc
            except NodeCallError as exc:
                await _abandon(stack, lease, error=exc)
                last_error = exc
                log.warning(
                    "stream attempt %d of %s on %s failed: %s",
                    attempts,
                    call.request_id,
                    lease.node.node_id,
                    exc.message,
                )
                if isinstance(exc, NodeUnreachable):
                    self._pool.report_unreachable(lease.node.key, exc.message)
                if not exc.retryable:
                    raise from_worker(exc) from exc
                continue
            except BaseException:
                await _abandon(stack, lease, error=None)
                raise
            version = first.get("model_version")
            return TokenStream(
                model=call.model,
                model_version=version if isinstance(version, str) else None,
                node_id=lease.node.node_id,
                mode="distributed",
                attempts=attempts,
                _first=first,
                _events=events,
                _stack=stack,
                _deadline=deadline,
                _timeout_s=call.timeout_s,
                _lease=lease,
                _clock=self._clock,
                _first_s=self._clock() - picked,
            )
        return await self._locally(call, params, deadline, attempts, last_error)

    async def _locally(
        self, call: StreamCall, params: GenerateParams, deadline: float, attempts: int, last_error: NodeCallError | None
    ) -> TokenStream:
        generator = self._local.generator(call.model) if self._local is not None else None
        if generator is None:
            # As the dispatcher: attempts that spent the deadline (however the last one failed), or a
            # node that timed out at it, are a 504, not a lack of capacity (503).
            remaining = deadline - self._clock()
            if remaining <= 0 or (remaining < 0.001 and (last_error is None or isinstance(last_error, NodeTimeout))):
                raise DeadlineExceeded(f"no first token within {call.timeout_s * 1000:.0f} ms")
            if last_error is None and not self._pool.knows(call.model) and self._pool.any_online():
                raise UnknownModel(f"no node and no local copy has model {call.model!r}")
            reason = last_error.message if last_error else "no healthy node serves it"
            raise NoCapacity(f"model {call.model!r} cannot stream now: {reason}")
        events = _local_events(generator.config.name, generator.config.version, generator.stream(params), params)
        stack = AsyncExitStack()
        stack.push_async_callback(events.aclose)
        try:
            async with asyncio.timeout(max(deadline - self._clock(), 0.001)):
                first = await anext(events)
        except TimeoutError as exc:
            await stack.aclose()
            raise DeadlineExceeded(f"no first token within {call.timeout_s * 1000:.0f} ms") from exc
        except BaseException:
            await stack.aclose()
            raise
        return TokenStream(
            model=generator.config.name,
            model_version=generator.config.version,
            node_id=None,
            mode="local",
            attempts=attempts,
            _first=first,
            _events=events,
            _stack=stack,
            _deadline=deadline,
            _timeout_s=call.timeout_s,
            _clock=self._clock,
        )


async def _abandon(stack: AsyncExitStack, lease: Lease, *, error: NodeCallError | None) -> None:
    try:
        await stack.aclose()
    finally:
        if error is not None:
            lease.report(0.0, error)
        lease.done()


async def _local_events(
    name: str, version: str, tokens: AsyncGenerator[str, None], params: GenerateParams
) -> AsyncGenerator[Event, None]:
    """The local generator's tokens in the node's event shape, so both relay the same way."""
    text, count = "", 0
    try:
        async for token in tokens:
            text += token
            yield {"model_name": name, "model_version": version, "text_output": token, "index": count}
            count += 1
    finally:
        await tokens.aclose()
    finish = "stop" if params.stop and any(text.endswith(stop) for stop in params.stop) else "length"
    yield {"model_name": name, "model_version": version, "text_output": "", "finish_reason": finish, "tokens": count}
