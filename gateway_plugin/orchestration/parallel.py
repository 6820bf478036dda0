"""The same input through several models at once, stopped as soon as the quorum is met or time is up.

Calls that are still out when the answer is known are cancelled (their node requests with them)
and reported as `cancelled`; models that could not even be called are reported with their error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gateway_plugin.dispatch import InferenceCall, Outcome
from gateway_plugin.errors import DeadlineExceeded, DistinferError
from gateway_plugin.orchestration.aggregations import Answer
from gateway_plugin.orchestration.calls import call_safely
from gateway_plugin.orchestration.coalesce import Infer

__all__ = ["FanOut", "fan_out"]


@dataclass(frozen=True, slots=True)
class FanOut:
    answers: list[Answer]  # in the order the models were listed
    timed_out: bool


async def fan_out(
    infer: Infer,
    order: Sequence[str],
    calls: Mapping[str, InferenceCall],
    failed: Mapping[str, DistinferError],
    *,
    reached: Callable[[list[Answer]], bool],
    timeout_s: float,
) -> FanOut:
    """Run `calls` concurrently until `reached(answers so far)` or `timeout_s`; cancel the rest."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    answers: dict[str, Answer] = {m: Answer(m, "error", error=e) for m, e in failed.items()}
    tasks = {asyncio.create_task(call_safely(infer, call)): model for model, call in calls.items()}
    pending = set(tasks)
    timed_out = False
    rank = 0
    try:
        while pending and not reached(list(answers.values())):
            remaining = deadline - loop.time()
            if remaining <= 0:
                timed_out = True
                break
            done, pending = await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                model = tasks[task]
                result = task.result()
                if isinstance(result, Outcome):
                    answers[model] = Answer(model, "ok", outcome=result, rank=rank)
                    rank += 1
                else:
                    answers[model] = Answer(model, "error", error=result)
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for task in pending:
        model = tasks[task]
        if timed_out:
            answers[model] = Answer(
                model, "error", error=DeadlineExceeded(f"no answer within {timeout_s * 1000:.0f} ms")
            )
        else:
            answers[model] = Answer(model, "cancelled")  # the answer was known without it
    return FanOut([answers[m] for m in order if m in answers], timed_out)
