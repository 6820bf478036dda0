"""`receive_body`: the body under a cap, whatever Content-Length claims."""

from __future__ import annotations

from typing import Any

import pytest

from worker.bodies import receive_body
from worker.errors import InvalidInput, PayloadTooLarge


def _receiver(*chunks: bytes) -> Any:
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


async def test_chunks_are_joined_under_the_cap() -> None:
    assert await receive_body(_receiver(b"ab", b"cd"), 4, "4") == b"abcd"


@pytest.mark.parametrize("declared", ["²", "١٢", "-1", "1e3", ""])
async def test_a_content_length_that_is_not_ascii_digits_is_invalid_input(declared: str) -> None:
    """Regression: '²' passed str.isdigit() and then broke int() (a 500 instead of a 400)."""
    with pytest.raises(InvalidInput):
        await receive_body(_receiver(b"x"), 10, declared)


async def test_a_declared_or_streamed_body_over_the_cap_is_refused() -> None:
    with pytest.raises(PayloadTooLarge):
        await receive_body(_receiver(b"x"), 10, "11")
    with pytest.raises(PayloadTooLarge):
        await receive_body(_receiver(b"123456", b"78901"), 10, None)


async def test_a_client_gone_mid_body_is_invalid_input() -> None:
    receive = _receiver(b"12")

    async def then_gone() -> dict[str, Any]:
        message = await receive()
        message["more_body"] = True  # the rest never comes
        return message

    calls = 0

    async def gone_after_first() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return await then_gone() if calls == 1 else {"type": "http.disconnect"}

    with pytest.raises(InvalidInput, match="disconnected after 2 bytes"):
        await receive_body(gone_after_first, 10, None)
