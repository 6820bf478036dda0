"""At most N inference requests at a time on one node; the rest wait their turn in arrival order.

`distinfer node --max-concurrency 1` makes a node serve one inference at a time, as a node with
one accelerator (or one model instance) does. A request beyond the limit is not refused: it waits,
first come first served (asyncio's semaphore is FIFO and lets no newcomer jump the queue), and a
request whose client goes away while it waits gives up its place. Health probes, metadata and
`/metrics` are never held back, so a saturated node still reads as up. The gateway's side of the
same limit is `DISTINFER_NODE_MAX_IN_FLIGHT`: at it the node counts as `busy` and new requests go
to a node with a free slot.

The slot is held from the moment the request is admitted until its response is sent, and the
limiter wraps the fault knobs (`worker.faults`), so an added `--fault-latency-ms` is model time
that the slot covers. Pure ASGI middleware; the shared state is one `InferenceSlots` per app.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SLOT_RELEASE", "ConcurrencyLimiter", "InferenceSlots"]

# Scope key of the current request's "give my slot back now" callable (idempotent), when limited.
SLOT_RELEASE = "distinfer.slot_release"

_INFERENCE = re.compile(r"^/v2/models/[^/]+(?:/versions/[^/]+)?/(?:infer|generate_stream)$")


class InferenceSlots:
    """`limit` slots, handed out in arrival order; counts what runs and what waits (for tests and metrics)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a concurrency limit must be at least 1")
        self.limit = limit
        self.active = 0
        self.waiting = 0
        self.peak = 0  # most requests ever admitted at once: never above `limit`
        self._semaphore: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _slots(self) -> asyncio.Semaphore:
        # One semaphore per event loop: an app served by a second loop (a test client) starts afresh.
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._loop is not loop:
            self._semaphore, self._loop = asyncio.Semaphore(self.limit), loop
            self.active = self.waiting = 0
        return self._semaphore

    async def acquire(self) -> None:
        slots = self._slots()
        self.waiting += 1
        try:
            await slots.acquire()
        finally:
            self.waiting -= 1
        self.active += 1
        self.peak = max(self.peak, self.active)

    def release(self) -> None:
        self.active -= 1
        if self._semaphore is not None:
            self._semaphore.release()


class ConcurrencyLimiter:
    def __init__(self, app: ASGIApp, *, slots: InferenceSlots) -> None:
        self.app = app
        self.slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not _INFERENCE.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        admitted, receive = await self._admit(receive)
        if not admitted:  # the client left while waiting: nobody to answer, no slot to hold
            return
        released = False

        def release_slot() -> None:
            nonlocal released
            if not released:
                released = True
                self.slots.release()

        # A request that waits on another node (a forwarded chain's next hop) gives its slot back
        # early: holding it, a chain that comes back to this node would wait for itself.
        scope[SLOT_RELEASE] = release_slot
        try:
            await self.app(scope, receive, send)
        finally:
            release_slot()

    async def _admit(self, receive: Receive) -> tuple[bool, Receive]:
        """Wait for a slot while listening for the client leaving; what is read meanwhile is replayed.

        ASGI servers do not cancel a request whose client disconnects: a request left waiting would
        keep its place, then run and hold the slot for nobody. Its `http.disconnect` is the only sign.
        """
        acquire: asyncio.Future[Any] = asyncio.ensure_future(self.slots.acquire())
        read: list[Message] = []
        listen: asyncio.Future[Any] | None = None
        try:
            while not acquire.done():
                listen = listen or asyncio.ensure_future(receive())
                await asyncio.wait({acquire, listen}, return_when=asyncio.FIRST_COMPLETED)
                if not listen.done():
                    continue
                message, listen = listen.result(), None
                if message["type"] == "http.disconnect":
                    acquire.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await acquire
                    if not acquire.cancelled():  # granted in the same turn: give it back
                        self.slots.release()
                    return False, receive
                read.append(message)
        except BaseException:
            acquire.cancel()
            raise
        finally:
            if listen is not None:
                listen.cancel()  # a pending receive loses nothing: the server keeps the message
        return True, _replaying(read, receive)


def _replaying(read: list[Message], receive: Receive) -> Receive:
    """`receive` that first hands out the messages read while the request waited."""
    if not read:
        return receive
    pending = list(read)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay
