"""FreezeAfterStartup freezes the heap exactly when the app's startup completes, and passes all else."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from worker.gc_freeze import YOUNG_THRESHOLD, FreezeAfterStartup


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    """Each test starts unfrozen at the interpreter's thresholds, and leaves them so."""
    threshold = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


async def test_freezes_when_startup_completes_not_before() -> None:
    frozen_when_startup_began: list[int] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        frozen_when_startup_began.append(gc.get_freeze_count())
        await send({"type": "lifespan.startup.complete"})

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        sent.append({**message, "frozen": gc.get_freeze_count()})

    await FreezeAfterStartup(app)({"type": "lifespan"}, receive, send)
    assert frozen_when_startup_began == [0]
    assert sent[0]["type"] == "lifespan.startup.complete"
    assert sent[0]["frozen"] > 0


async def test_http_passes_untouched_and_freezes_nothing() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await send({"type": "http.response.start", "status": 204, "headers": []})

    messages: list[Any] = []

    async def send(message: Any) -> None:
        messages.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/"}
    await FreezeAfterStartup(app)(scope, receive, send)
    assert seen == [scope]
    assert messages == [{"type": "http.response.start", "status": 204, "headers": []}]
    assert gc.get_freeze_count() == 0


async def test_startup_raises_the_young_generation_threshold() -> None:
    before = gc.get_threshold()
    assert before[0] < YOUNG_THRESHOLD  # the fixture restored the interpreter's

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        assert gc.get_threshold() == before  # not before startup completes
        await send({"type": "lifespan.startup.complete"})

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        pass

    await FreezeAfterStartup(app)({"type": "lifespan"}, receive, send)
    assert gc.get_threshold() == (YOUNG_THRESHOLD, *before[1:])
