"""The route class every plugin endpoint uses: request ids and problem+json for every error.

Exception handlers belong to the host's app, which the plugin does not touch; a route class
travels with `include_router`, so errors are rendered the same wherever the host mounts us.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, ClassVar

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, APIRouter
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from balancer.pool import UnknownStrategy
from gateway_plugin.api.served import INFERENCE_TAG, mark_not_served
from gateway_plugin.errors import (
    BadRequest,
    DistinferError,
    MethodNotAllowed,
    NotFound,
    Unprocessable,
    from_worker,
    problem,
)
from worker.bodies import read_body
from worker.errors import WorkerError

__all__ = [
    "NotFoundRoute",
    "ProblemRoute",
    "RawRoute",
    "RouteHook",
    "add_not_found_route",
    "not_found_route",
    "problem_error",
    "problem_for",
    "problem_route",
    "raw_route",
    "request_id_of",
    "scope_request_id",
    "V2_TAG",
    "with_v2_error",
]

log = logging.getLogger(__name__)

# The OpenAPI tag of the Open Inference Protocol's routes: their errors carry the v2 `error` member.
V2_TAG = "open inference protocol"

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


_SCOPE_KEY = "distinfer.request_id"
# Our own generator, seeded from the OS: a host's random.seed() must not make ids repeat. A forked
# worker (gunicorn) reseeds it, as CPython does for the module's own.
_IDS = random.Random()
os.register_at_fork(after_in_child=_IDS.seed)


def request_id_of(request: Request) -> str:
    """The id of this request: the caller's `X-Request-ID` when it is sane, else a new one.

    Kept in the request's own ASGI scope, not in `request.state`: servers may share the lifespan
    state dict between requests (asgi-lifespan does), which once gave every request one id.
    """
    return scope_request_id(request.scope, request.headers.get("x-request-id"))


def scope_request_id(scope: Scope, given: str | None) -> str:
    """`request_id_of` for plain ASGI: `given` is the request's X-Request-ID value, if it sent one."""
    existing = scope.get(_SCOPE_KEY)
    if isinstance(existing, str):
        return existing
    # 128 random bits in hex, like `uuid4().hex`, without its system call and UUID object per
    # request (measured: 7 % of the relay's CPU). An id, not a secret: no need for the OS's entropy.
    request_id = given if given and _SAFE_ID.match(given) else f"{_IDS.getrandbits(128):032x}"
    scope[_SCOPE_KEY] = request_id
    return request_id


def _validation_problem(exc: RequestValidationError) -> DistinferError:
    errors = [
        {"loc": list(err.get("loc", ())), "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
        for err in exc.errors()
    ]
    if any(err["type"] == "json_invalid" for err in errors):
        return BadRequest("request body is not valid JSON", errors=errors[:20])
    first = errors[0] if errors else {"loc": [], "msg": "invalid"}
    where = ".".join(str(part) for part in first["loc"])
    return Unprocessable(f"{where}: {first['msg']}", errors=errors[:20])


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class ProblemRoute(APIRoute):
    """Renders every error as problem+json; with `max_body_bytes`, refuses larger bodies (413) unread."""

    max_body_bytes: int | None = None
    # Telemetry's pure-ASGI wrapper around each request of the route (timing, spans, request log).
    hook: ClassVar[RouteHook | None] = None
    # The feature flag's dependency: routes that depend on it answer any method with its 404 when off.
    gate: ClassVar[Callable[[], Awaitable[None]] | None] = None
    # Methods by route path over all routes of this class, for a 405's Allow, and the paths behind
    # the gate (`record_routes`).
    methods_by_path: ClassVar[dict[str, set[str]]] = {}
    gated_paths: ClassVar[set[str]] = set()
    # Whether this route answers inference calls whatever its tags (the v2 relay's are the protocol's).
    serves_inference: ClassVar[bool] = False
    # What the flag's and auth's dependencies check, run before the body is read, by the dependency
    # they stand for. Regression (audit): a body was read, inflated and parsed (16 MB of JSON: seconds
    # on the event loop) before the caller was known, and a bad body was a 400 where 401 was due.
    guards: ClassVar[Mapping[Callable[..., Any], Guard]] = {}
    # Each endpoint's guards, in its dependencies' order (`record_routes`): by endpoint, which every
    # FastAPI version keeps on the route that serves it (from 0.165 an included route is not copied).
    early: ClassVar[dict[Callable[..., Any], tuple[tuple[Callable[..., Any], Guard], ...]]] = {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Starlette answers a method the route lacks with the host's plain 405; ours is problem+json.
        methods = self.methods
        wrong_method = scope["type"] == "http" and bool(methods) and scope.get("method") not in (methods or ())
        serve = self._method_not_allowed if wrong_method else super().handle
        hook = type(self).hook  # read from the class: a plain function must not bind to the route
        if hook is None:
            await serve(scope, receive, send)
        else:
            await hook(self, scope, receive, send, serve)

    async def _method_not_allowed(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"x-request-id"), None)
        request_id = scope_request_id(scope, given)
        gate = type(self).gate
        if gate is not None and self.path_format in type(self).gated_paths:
            try:  # a route behind the flag is not there at all while it is off: 404 for any method
                await gate()
            except DistinferError as exc:
                await self._problem(exc, request_id)(scope, receive, send)
                return
        allowed = ", ".join(sorted(self._methods_at_path(scope)))
        method = str(scope.get("method", ""))[:16]
        error = MethodNotAllowed(f"{method} is not allowed here; allowed: {allowed}", headers={"Allow": allowed})
        await self._problem(error, request_id)(scope, receive, send)

    def _problem(self, error: DistinferError, request_id: str) -> Response:
        """An error answer of this route: an inference route's says that no node served it (CONTRACT §4);
        a v2 route's carries the v2 `error` member, which v2 clients (tritonclient) read."""
        if self.serves_inference or INFERENCE_TAG in self.tags:
            mark_not_served(error.headers)
        if V2_TAG in self.tags:
            with_v2_error(error)
        return problem(error, request_id)

    def _methods_at_path(self, scope: Scope) -> set[str]:
        """Every method served at this route's path (Starlette matched just one of its routes)."""
        return set(self.methods or ()) | set(type(self).methods_by_path.get(self.path_format, ()))

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        limit = self.max_body_bytes
        early, endpoint = type(self).early, self.endpoint

        async def handle(request: Request) -> Response:
            request_id = request_id_of(request)
            try:
                if limit is not None and request.method in _BODY_METHODS:
                    overrides = getattr(request.scope.get("app"), "dependency_overrides", None) or {}
                    for dependency, guard in early.get(endpoint, ()):
                        if dependency not in overrides:  # a host's override (tests) replaces the check
                            await guard(request)
                    # FastAPI reads bodies whole and unbounded; read it here under the cap first.
                    # Starlette's Request caches the body in `_body`, where FastAPI then finds it.
                    request._body = await read_body(request, limit)
                response = await handler(request)
            except Exception as exc:
                return self._problem(problem_error(exc, request_id), request_id)
            response.headers.setdefault("X-Request-ID", request_id)
            return response

        return handle


def problem_for(exc: Exception, request_id: str) -> Response:
    """The problem+json answer for an exception that left a handler; never a stack trace to the client."""
    return problem(problem_error(exc, request_id), request_id)


def problem_error(exc: Exception, request_id: str) -> DistinferError:
    """The problem an exception that left a handler is answered with."""
    if isinstance(exc, DistinferError):
        return exc
    if isinstance(exc, UnknownStrategy):  # from the balancer, wherever a request names a strategy
        return Unprocessable(str(exc))
    if isinstance(exc, ClientDisconnect):
        # The caller left mid-body: nobody will read an answer, and it is not our error.
        log.info("client disconnected before sending request %s in full", request_id)
        return BadRequest("client disconnected before the body was complete")
    if isinstance(exc, WorkerError):
        return from_worker(exc)
    if isinstance(exc, RequestValidationError):
        return _validation_problem(exc)
    if isinstance(exc, HTTPException) and exc.status_code == 400:  # FastAPI's "error parsing the body"
        return BadRequest(str(exc.detail))  # one code for every malformed body
    if isinstance(exc, HTTPException):
        error = DistinferError(str(exc.detail))
        error.status, error.code, error.title = exc.status_code, "http_error", "HTTP error"
        return error
    # The log keeps the trace, with the request id.
    log.error("unexpected error in request %s", request_id, exc_info=exc)
    return DistinferError("unexpected error; see the gateway log")


def with_v2_error(error: DistinferError) -> DistinferError:
    """`error` with the v2 `error` member its problem body carries, for v2 clients to show."""
    error.extra.setdefault("error", error.detail)
    return error


class RawRoute(ProblemRoute):
    """A route FastAPI knows (matching, path parameters, OpenAPI, security) whose requests go to plain ASGI.

    For the hottest path only (the v2 relay): FastAPI's request handling (dependency solving, the
    Request/Response wrapping) cost more per request than the relay's own work, measured with
    `distinfer bench overhead`. The endpoint function FastAPI is given describes the route for
    OpenAPI; `raw` serves it and must do what the router's dependencies would (flag, auth).
    """

    raw: ClassVar[ASGIApp | None] = None
    serves_inference: ClassVar[bool] = True

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = type(self).raw  # from the class: a plain function must not bind to the route
        if raw is None or (self.methods and scope.get("method") not in self.methods):
            await super().handle(scope, receive, send)  # FastAPI's own handling, and its 405
            return
        hook = type(self).hook
        if hook is None:
            await raw(scope, receive, send)
        else:
            await hook(self, scope, receive, send, raw)


def raw_route(route_class: type[ProblemRoute], raw: ASGIApp) -> type[RawRoute]:
    """A RawRoute class serving with `raw`, with `route_class`'s body cap, telemetry hook and gate."""
    attributes: dict[str, Any] = {"raw": raw, "max_body_bytes": route_class.max_body_bytes, "hook": route_class.hook}
    shared = {"gate": route_class.gate, "methods_by_path": route_class.methods_by_path}
    attributes |= shared | {"gated_paths": route_class.gated_paths}
    return type("RawRoute", (RawRoute,), attributes)


class NotFoundRoute(ProblemRoute):
    """Tried last, under the prefix: a path none of ours (nor the host's) serves is a problem+json 404.

    Without it such a request fell through to the host's default 404 (`{"detail": "Not Found"}`).
    It is one of FastAPI's low-priority routes (those of `router.frontend()`), which the app tries
    only after every other route, its 405s and its slash redirects, at no cost to the others.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        hook = type(self).hook
        if hook is None:
            await self._not_found(scope, receive, send)
        else:
            await hook(self, scope, receive, send, self._not_found)

    async def _not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"x-request-id"), None)
        request_id = scope_request_id(scope, given)
        error: DistinferError = NotFound(f"no such path: {str(scope.get('method', ''))[:16]} {scope['path'][:256]}")
        gate = type(self).gate
        if gate is not None:
            try:  # with the flag off, say so, as every other path under the prefix does
                await gate()
            except DistinferError as exc:
                error = exc
        # `path` keeps the `{path:path}` it was made with (`path_format` drops the `:path`)
        under_prefix = str(scope["path"]).partition(self.path.removesuffix(_CATCH_ALL))[2]
        if under_prefix == "/v2" or under_prefix.startswith("/v2/"):
            with_v2_error(error)  # an extension the gateway lacks (repository, statistics): tritonclient reads it
        await problem(error, request_id)(scope, receive, send)


def not_found_route(route_class: type[ProblemRoute]) -> type[NotFoundRoute]:
    """A NotFoundRoute class with `route_class`'s telemetry hook and gate."""
    attributes: dict[str, Any] = {"hook": route_class.hook, "gate": route_class.gate}
    return type("NotFoundRoute", (NotFoundRoute,), attributes)


_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_CATCH_ALL = "/{path:path}"


def add_not_found_route(router: APIRouter, route_class: type[ProblemRoute]) -> bool:
    """Give `router` its catch-all (`NotFoundRoute`) among the routes FastAPI tries last.

    False, and nothing added, on a FastAPI without such routes (before 0.165): there a catch-all
    would have to come after the host's routes too, which a plugin cannot promise, so unknown paths
    keep the host's 404.
    """
    low_priority = getattr(router, "_low_priority_routes", None)
    if not isinstance(low_priority, list):
        return False

    async def not_found(path: str) -> None:
        """Never called: `NotFoundRoute.handle` answers."""

    route = not_found_route(route_class)(
        router.prefix + _CATCH_ALL, not_found, methods=_ALL_METHODS, include_in_schema=False
    )
    low_priority.append(route)
    mark_changed = getattr(router, "_mark_routes_changed", None)
    if callable(mark_changed):
        mark_changed()  # FastAPI caches what included routers resolve to, by a routes version
    return True


# (route, scope, receive, send, the route's own ASGI handling) -> None
RouteHook = Callable[[APIRoute, Scope, Receive, Send, ASGIApp], Awaitable[None]]
# A dependency's check, run on the bare request (its headers) before the body is read.
Guard = Callable[[Request], Awaitable[Any]]


def problem_route(
    max_body_bytes: int,
    hook: RouteHook | None = None,
    gate: Callable[[], Awaitable[None]] | None = None,
    guards: Mapping[Callable[..., Any], Guard] | None = None,
) -> type[ProblemRoute]:
    """A ProblemRoute class that caps request bodies at `max_body_bytes` (and runs `hook` around
    requests); `guards`: what a dependency checks, to check before a body is read."""
    attributes: dict[str, Any] = {"max_body_bytes": max_body_bytes, "hook": hook, "gate": gate}
    attributes["guards"] = dict(guards or {})
    attributes["early"] = {}
    attributes |= {"methods_by_path": {}, "gated_paths": set()}  # its own: filled by `record_routes`
    return type("LimitedProblemRoute", (ProblemRoute,), attributes)


def record_routes(
    route_class: type[ProblemRoute],
    router: APIRouter,
    *,
    gated: bool,
    dependencies: Sequence[Callable[..., Any]] = (),
) -> None:
    """Note, for `route_class`'s 405 answers, the methods `router` serves at each path and whether
    they are behind the gate (included with its dependency); and the guards of each endpoint, from
    `dependencies` (those `router` is included with) and the route's own."""
    for route in router.routes:
        if isinstance(route, APIRoute) and route.methods:
            route_class.methods_by_path.setdefault(route.path_format, set()).update(route.methods)
            if gated:
                route_class.gated_paths.add(route.path_format)
            calls = [*dependencies, *(d.call for d in route.dependant.dependencies if d.call is not None)]
            guards = tuple(dict.fromkeys((c, route_class.guards[c]) for c in calls if c in route_class.guards))
            if guards:
                route_class.early[route.endpoint] = guards
