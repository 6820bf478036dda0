"""The node token: when a node is given one, every call but health and metrics must carry it.

Gateways send it as `Authorization: Bearer <token>` (so a node behind an auth proxy, or any v2
server that checks bearer tokens, works the same). Compared in constant time. Health probes
(`/v2/health/live`, `/v2/health/ready`) and `/metrics` stay open for orchestrators and scrapers.
Pure ASGI, so streamed bodies and SSE pass through untouched.
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["OPEN_PATHS", "NodeTokenMiddleware"]

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})


class NodeTokenMiddleware:
    def __init__(self, app: ASGIApp, *, token: str) -> None:
        if not token:
            raise ValueError("an empty node token would accept anyone")
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        if hmac.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "this node requires its node token"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="distinfer-node"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
