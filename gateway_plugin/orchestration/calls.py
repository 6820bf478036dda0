"""One call made on behalf of a batch or pipeline, and the whole request's deadline that bounds it.

`call_safely` turns every failure into the gateway's error for that one call, so one call never
fails the others. `call_within` cuts a call's own `timeout_s` to what is left of the whole, so the
dispatcher ends it in time with its own 504; a short grace on top only stops a call that ignores it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, replace

from gateway_plugin.dispatch import InferenceCall, Outcome
from gateway_plugin.errors import DeadlineExceeded, DistinferError, from_worker
from gateway_plugin.orchestration.coalesce import Infer
from worker.errors import WorkerError

__all__ = ["Deadline", "ItemResult", "call_safely", "call_within"]

log = logging.getLogger(__name__)

GRACE_S = 0.25

ItemResult = Outcome | DistinferError


async def call_safely(infer: Infer, call: InferenceCall) -> ItemResult:
    """`infer(call)` with every failure turned into the gateway's error for that one call."""
    try:
        return await infer(call)
    except DistinferError as exc:
        return exc
    except WorkerError as exc:
        return from_worker(exc)
    except Exception:
        log.exception("unexpected error in call %s", call.request_id)
        return DistinferError("unexpected error; see the gateway log")


@dataclass(frozen=True, slots=True)
class Deadline:
    """`timeout_s` after `start` (a clock reading); None: no deadline beyond each call's own."""

    what: str  # "batch", "pipeline": for the error's wording
    start: float
    timeout_s: float | None

    def remaining(self, now: float) -> float:
        return math.inf if self.timeout_s is None else self.start + self.timeout_s - now

    def spent(self) -> DeadlineExceeded:
        limit = (self.timeout_s or 0) * 1000
        return DeadlineExceeded(f"the {self.what}'s deadline of {limit:.0f} ms was spent before this ran")


async def call_within(infer: Infer, call: InferenceCall, remaining_s: float) -> ItemResult:
    """`call_safely(infer, call)` with the call's deadline cut to `remaining_s`, and held to it."""
    if remaining_s == math.inf:
        return await call_safely(infer, call)
    if remaining_s < call.timeout_s:
        call = replace(call, timeout_s=remaining_s)
    try:
        async with asyncio.timeout(remaining_s + GRACE_S):
            return await call_safely(infer, call)
    except TimeoutError:
        return DeadlineExceeded(f"no answer within {remaining_s * 1000:.0f} ms")
