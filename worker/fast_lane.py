"""`FastLane`: hot POST paths served ahead of a FastAPI app's own stack and router.

In a FastAPI app every request passes the app's stack (server errors, exceptions, body limits,
exit stacks), its router, and then FastAPI's request handling (dependency solving, request and
response wrapping) before the endpoint runs. Measured with `distinfer bench overhead`, that costs
as much CPU per request as a relay's or a small model's whole work. A FastLane sends requests on
a few named paths straight to plain ASGI handlers, and everything else on to the app.

Used by the node for its `infer` route (as the innermost middleware, so the node's own token,
fault and concurrency middleware still apply), by the standalone gateway for the v2 relay, and by
hosts that opt in with `DistributedInference.fast_lane(app)`. A handler in the lane must do what
the app would have done for it: errors in the app's format, its limits, its checks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from starlette.convertors import Convertor
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["FastLane"]


class FastLane:
    """Pure ASGI: POSTs whose path matches one of `routes` go to that handler, with `path_params`; the rest to `app`."""

    def __init__(self, app: ASGIApp, routes: Sequence[tuple[str, ASGIApp]]) -> None:
        self.app = app
        self._routes: list[tuple[re.Pattern[str], dict[str, Convertor[object]], ASGIApp]] = []
        for path, handler in routes:
            pattern, _, convertors = compile_path(path)
            self._routes.append((pattern, convertors, handler))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            path = _route_path(scope)
            for pattern, convertors, handler in self._routes:
                match = pattern.match(path)
                if match is not None:
                    params = {name: convertors[name].convert(value) for name, value in match.groupdict().items()}
                    scope["path_params"] = params  # in place, as Starlette's router sets what a match found
                    await handler(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path below the app's mount point, as Starlette's router sees it (its helper is private)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
