"""`LegacyInferenceMiddleware`: the service's existing inference endpoint, served by the cluster.

    app.add_middleware(LegacyInferenceMiddleware, distributed=distributed, path="/api/inference")

Pure ASGI (no BaseHTTPMiddleware: bodies stream, contextvars survive). Per request, in order:

1. not the path (or method), or the flag off: the original app gets the untouched `receive` and
   `send`: the same request in, the same bytes out;
2. a caller the cluster may not serve: the same, so the host's own auth answers as it always did.
   By default that is any caller without a verified bearer token carrying the `infer` scope (as
   every `/api/v1/distributed` route asks; nobody is refused when the plugin's auth is disabled).
   A host whose endpoint checks callers another way passes `authorize=`, an async check of the
   request's scope (for an endpoint open to all: one that always says yes);
3. the caller outside the rollout (sticky: hash of the verified JWT `sub`, else the client
   address): the same;
4. mode `shadow`: the original handler answers as always while the request and its answer are
   copied (bounded); once the answer is sent, a background task asks the cluster and compares
   (`distributed.shadow`); skipped, never queued, when too many are running;
5. mode `serve`: the body is read (bounded), the adapter maps it to a cluster request, the
   cluster answers in the endpoint's own shape (`X-Inference-Mode: distributed`). When the
   cluster cannot (no node has the model, every attempt failed, deadline spent, bad input, an
   adapter that declines) the original handler runs on the same body, and its answer goes out
   with `X-Inference-Mode: local-fallback`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from compat.adapters import JsonInferenceAdapter, LegacyAdapter, LegacyRequest, compare_outputs, outcome_arrays
from gateway_plugin import DistinferError, DistributedInference
from gateway_plugin.api.served import node_header
from gateway_plugin.auth import INFER
from gateway_plugin.flags import FeatureFlags

__all__ = ["MODE_HEADER", "Authorize", "LegacyInferenceMiddleware"]

log = logging.getLogger(__name__)

MODE_HEADER = b"x-inference-mode"

# Whether the caller of this request may be served by the cluster (see `authorize=`).
Authorize = Callable[[Scope], Awaitable[bool]]


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the already-read body once, then defers to the real one (disconnects)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _with_mode(send: Send, mode: bytes) -> Send:
    async def marked(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != MODE_HEADER]
            message = {**message, "headers": [*headers, (MODE_HEADER, mode)]}
        await send(message)

    return marked


async def _read_body(receive: Receive, limit: int) -> tuple[list[bytes], bool, bool]:
    """The body's chunks, whether it is complete (False: over `limit`, or the client left), and
    whether more of it is still to come after those chunks."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return chunks, False, False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        more = bool(message.get("more_body", False))
        if size > limit:
            return chunks, False, more
        if not more:
            return chunks, True, False


def _replay_partial(chunks: list[bytes], more: bool, receive: Receive) -> Receive:
    """A `receive` that gives the chunks read so far, then the rest of the stream.

    The last chunk keeps the `more_body` it came with: a body that went over the limit in its
    final chunk is complete, and a handler told there is more would wait for it forever.
    """
    pending = list(chunks)

    async def replayed() -> Message:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": more if not pending else True}
        return await receive()

    return replayed


class LegacyInferenceMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        distributed: DistributedInference,
        path: str = "/api/inference",
        methods: Collection[str] = ("POST",),
        adapter: LegacyAdapter | None = None,
        rtol: float = 1e-3,
        atol: float = 1e-4,
        authorize: Authorize | None = None,
    ) -> None:
        self.app = app
        self.distributed = distributed
        self.authorize: Authorize = authorize or self._bearer_with_infer
        self.path = path
        self.methods = frozenset(method.upper() for method in methods)
        self.adapter: LegacyAdapter = adapter or JsonInferenceAdapter()
        self.rtol, self.atol = rtol, atol
        self.limit = distributed.settings.limits.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] not in self.methods:
            await self.app(scope, receive, send)
            return
        flags = self.distributed.flags.current()
        if not flags.enabled:
            await self.app(scope, receive, send)
            return
        if not await self.authorize(scope):
            # Regression (audit): the cluster answered callers the host's own auth would have refused.
            await self.app(scope, receive, send)
            return
        if not FeatureFlags.in_rollout(await self._caller(scope), flags.rollout_percent):
            await self.app(scope, receive, send)
            return
        if flags.mode == "shadow":
            await self._shadow(scope, receive, send)
        else:
            await self._serve(scope, receive, send)

    async def _bearer_with_infer(self, scope: Scope) -> bool:
        try:
            await self.distributed.auth.authorize(Headers(scope=scope).get("authorization"), INFER)
        except DistinferError:  # no token, a bad one, no `infer` scope, or the JWKS out of reach
            return False
        return True

    async def _caller(self, scope: Scope) -> str:
        headers = Headers(scope=scope)
        sub = await self.distributed.auth.subject(headers.get("authorization"))
        if sub is not None:
            return f"sub:{sub}"
        client = scope.get("client")
        return f"addr:{client[0]}" if client else "addr:unknown"

    def _request(self, scope: Scope, body: bytes) -> LegacyRequest:
        return LegacyRequest(scope["method"], scope["path"], scope.get("query_string", b""), Headers(scope=scope), body)

    # ------------------------------------------------------------------ serve

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks, complete, more = await _read_body(receive, self.limit)
        if not complete:  # too big for us (or the client left): the original handler deals with it
            await self._fallback(scope, _replay_partial(chunks, more, receive), send, "body over the plugin's limit")
            return
        body = b"".join(chunks)
        request = self._request(scope, body)
        try:
            cluster_request = self.adapter.to_cluster(request)
        except Exception as exc:  # an adapter's failure only means: not for the cluster
            log.debug("adapter declined %s: %s", scope["path"], exc)
            cluster_request = None
        if cluster_request is None:
            await self._fallback(scope, _replay(body, receive), send, "the adapter declined the request")
            return
        try:
            outcome = await self.distributed.infer(cluster_request, local_fallback=False)
            answer = self.adapter.to_response(outcome, request)
        except DistinferError as exc:
            await self._fallback(scope, _replay(body, receive), send, f"{exc.code}: {exc.detail}")
            return
        except Exception:  # never let the cluster path break an endpoint that worked before
            log.exception("cluster path failed on %s", scope["path"])
            await self._fallback(scope, _replay(body, receive), send, "unexpected error on the cluster path")
            return
        self.distributed.shadow.served += 1
        headers = [
            (b"content-type", answer.media_type.encode()),
            (b"content-length", str(len(answer.body)).encode()),
            (MODE_HEADER, b"distributed"),
            # as every route sends it: percent-encoded where a header cannot carry the id as it is
            (b"x-inference-node", node_header(outcome.node_id).encode("latin-1")),
        ]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    async def _fallback(self, scope: Scope, receive: Receive, send: Send, why: str) -> None:
        log.info("%s %s answered by the original handler: %s", scope["method"], scope["path"], why)
        self.distributed.shadow.fallbacks += 1
        await self.app(scope, receive, _with_mode(send, b"local-fallback"))

    # ------------------------------------------------------------------ shadow

    async def _shadow(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limit
        request_chunks: list[bytes] = []
        response_chunks: list[bytes] = []
        state: dict[str, Any] = {"in": 0, "out": 0, "complete": False, "status": 0, "fits": True}

        async def tee_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and state["fits"]:
                chunk = message.get("body", b"")
                state["in"] += len(chunk)
                request_chunks.append(chunk)
                state["fits"] = state["in"] <= limit
                state["complete"] = not message.get("more_body", False)
            return message

        async def tee_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body" and state["fits"]:
                chunk = message.get("body", b"")
                state["out"] += len(chunk)
                response_chunks.append(chunk)
                state["fits"] = state["out"] <= limit
            await send(message)

        started = time.perf_counter()
        await self.app(scope, tee_receive, tee_send)  # the real answer, exactly as without us
        local_ms = (time.perf_counter() - started) * 1000
        shadow = self.distributed.shadow
        if not (state["fits"] and state["complete"]):
            shadow.record_skipped()
            return
        request = self._request(scope, b"".join(request_chunks))
        work = self._compare(request, state["status"], b"".join(response_chunks), local_ms)
        if not self.distributed.background.spawn(work, "shadow-compare"):
            shadow.record_skipped()

    async def _compare(self, request: LegacyRequest, status: int, body: bytes, local_ms: float) -> None:
        shadow = self.distributed.shadow
        try:
            cluster_request = self.adapter.to_cluster(request)
            local = self.adapter.local_outputs(status, body)
        except Exception as exc:  # the adapter cannot read one side: nothing to compare
            log.debug("shadow comparison skipped: %s", exc)
            cluster_request, local = None, None
        if cluster_request is None or local is None:
            shadow.record_skipped()
            return
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        started = time.perf_counter()
        try:
            # No admission place: shadow copies are background work (bounded by BackgroundWork),
            # never to take places from real traffic.
            outcome = await self.distributed.infer(cluster_request, local_fallback=False, admit=False, shadow=True)
        except DistinferError as exc:
            shadow.record_error(request_id=request_id, model=cluster_request.model, detail=f"{exc.code}: {exc.detail}")
            return
        except Exception as exc:
            log.exception("shadow call failed")
            shadow.record_error(request_id=request_id, model=cluster_request.model, detail=type(exc).__name__)
            return
        cluster_ms = (time.perf_counter() - started) * 1000
        divergence = compare_outputs(local, outcome_arrays(outcome), rtol=self.rtol, atol=self.atol)
        if divergence is not None:
            log.warning("shadow divergence on %s: %s", cluster_request.model, divergence)
        shadow.record(
            request_id=request_id,
            model=cluster_request.model,
            local_ms=local_ms,
            cluster_ms=cluster_ms,
            divergence=divergence,
        )
