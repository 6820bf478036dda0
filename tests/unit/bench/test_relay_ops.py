"""`bench.relay_ops`: opcodes are counted per request, split at the moment the answer's body goes out."""

from __future__ import annotations

from typing import Any

from bench.relay_ops import count


def _busy(rounds: int) -> int:
    total = 0
    for value in range(rounds):
        total += value
    return total


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Works 50 rounds before answering and 200 after, like a route with deferred bookkeeping."""
    if scope["type"] != "http":
        return
    _busy(50)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})
    _busy(200)


async def test_work_after_the_answer_is_counted_apart() -> None:
    counts = await count(_app, "binary", requests=3)
    # A loop round is a handful of opcodes: 50 rounds before, 200 after, per request.
    assert 3 * 50 * 3 <= counts.before < counts.after
    assert counts.after >= 3 * 200 * 3
    top, _ = counts.by_function.most_common(1)[0]
    assert top == "test_relay_ops.py:_busy"
    assert counts.python_calls >= 3 * 3  # the app and its two helpers, per request
