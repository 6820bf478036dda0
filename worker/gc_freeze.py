"""`FreezeAfterStartup`: the objects alive once an app has started leave the garbage collector's sight.

A server's startup leaves ~125,000 long-lived objects (modules, models, routes, settings) that
every full collection then walks again: 45-90 ms with the gateway's heap, every second or two
under load, and every request in flight waits it out (found as the p99 spikes of `distinfer
bench balance`). `gc.freeze()` moves them to a permanent generation once startup is complete,
which is what CPython documents it for. Our own servers (`distinfer node`, `distinfer gateway`)
wrap their app with it; a host app that mounts the plugin decides this for itself.
"""

from __future__ import annotations

import gc

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["FreezeAfterStartup"]


class FreezeAfterStartup:
    """Pure ASGI: passes everything through, and calls `gc.freeze()` when the lifespan startup completes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_frozen(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                gc.collect()  # what is garbage now should not be kept forever
                gc.freeze()
            await send(message)

        await self.app(scope, receive, send_frozen)
