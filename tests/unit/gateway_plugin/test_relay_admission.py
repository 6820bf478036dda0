"""The v2 relay takes its admission place once the body is in, as every other route does."""

from __future__ import annotations

import asyncio
from typing import Any

from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from gateway_plugin import DistributedInference
from gateway_plugin.settings import AuthSettings, FlagSettings, LimitSettings, Settings

RELAY = "/api/v1/distributed/v2/models/digits/infer"


async def test_stalled_uploads_hold_no_place() -> None:
    """Regression: the relay counted a request from before its body was read: two clients trickling
    bodies held both places of DISTINFER_MAX_INFLIGHT=2 and everyone else got 429."""
    settings = Settings(
        flags=FlagSettings(enabled=True), auth=AuthSettings(disabled=True), limits=LimitSettings(max_inflight=2)
    )
    distributed = DistributedInference(settings=settings)
    app = FastAPI()
    app.include_router(distributed.router)

    async def stalled_upload(asgi: Any) -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b'{"inputs": [', "more_body": True}
            await asyncio.Event().wait()  # the rest never comes
            return {}

        async def send(message: dict[str, Any]) -> None:
            return None

        headers = [(b"content-type", b"application/json"), (b"content-length", b"100000")]
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST"}
        scope |= {"scheme": "http", "path": RELAY, "raw_path": RELAY.encode(), "query_string": b"", "root_path": ""}
        scope |= {"headers": headers, "client": ("127.0.0.1", 1), "server": ("test", 80)}
        await asgi(scope, receive, send)

    async with LifespanManager(app) as manager:
        svc = await distributed.services()
        assert svc.admission is not None
        stalls = [asyncio.create_task(stalled_upload(manager.app)) for _ in range(2)]
        await asyncio.sleep(0.2)
        try:
            assert svc.admission.in_flight == 0
        finally:
            for stall in stalls:
                stall.cancel()
            await asyncio.gather(*stalls, return_exceptions=True)
