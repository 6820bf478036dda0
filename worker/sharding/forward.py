"""Node-to-node hops for sharded models: run this node's stage, then hand the activations on directly.

The gateway normally relays every stage's activations itself (stage -> gateway -> next stage). With
forwarding, it sends the first stage a request whose parameter `distinfer_forward` lists the hops
that follow; each node runs its stage, sends the next node the tensors that hop needs (its own
outputs, plus anything later stages need that came with the request), and answers with what the
last stage returned. A node forwards only to the peers it was started with
(`distinfer node --forward-peers URL,...`; `*` trusts any), so a request cannot make it call
arbitrary addresses. Off by default.

    {"distinfer_forward": {"timeout_ms": 5000,
                           "hops": [{"url": "http://10.0.0.2:8001", "model": "m.stage1of2",
                                     "send": ["hidden", "mask"]}]}}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import aiohttp
from opentelemetry.propagate import inject
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from worker.client import NodeClient
from worker.config import ModelConfig
from worker.engine import InferenceEngine
from worker.errors import ERROR_CODE_HEADER, FORWARD_FAILED, InvalidInput, NodeCallError, NodeRejected, WorkerError
from worker.protocol import DecodedRequest, Tensor

__all__ = ["FORWARD_PARAMETER", "ForwardFailed", "ForwardPlan", "Forwarder", "Hop", "onward_headers"]

FORWARD_PARAMETER = "distinfer_forward"
MAX_HOPS = 64


class ForwardFailed(WorkerError):
    """The next stage's node did not answer: a fault of the chain, so the caller may try another way."""

    status = 502
    code = FORWARD_FAILED
    headers: ClassVar[Mapping[str, str]] = MappingProxyType({ERROR_CODE_HEADER: FORWARD_FAILED})


class Hop(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(pattern=r"^https?://[^/\s]+$", max_length=256)
    model: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=128)
    send: tuple[str, ...] = Field(min_length=1, max_length=256)


class ForwardPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hops: tuple[Hop, ...] = Field(min_length=1, max_length=MAX_HOPS)
    timeout_ms: int = Field(default=30_000, gt=0, le=600_000)

    @field_validator("hops")
    @classmethod
    def _trimmed(cls, hops: tuple[Hop, ...]) -> tuple[Hop, ...]:
        return tuple(hop.model_copy(update={"url": hop.url.rstrip("/")}) for hop in hops)

    def rest(self) -> dict[str, Any] | None:
        """The parameter value for the next node: the hops after it, or None when it is the last."""
        if len(self.hops) == 1:
            return None
        return {"hops": [hop.model_dump() for hop in self.hops[1:]], "timeout_ms": self.timeout_ms}


_TRACE_HEADERS = ("traceparent", "tracestate")


def onward_headers(incoming: Mapping[str, str]) -> dict[str, str]:
    """What the next hop gets: the request id, and the trace (this node's span when it traces, else
    the caller's `traceparent` as it came), so one chain is one trace and one id in every log."""
    carrier: dict[str, str] = {}
    if request_id := incoming.get("x-request-id"):
        carrier["X-Request-ID"] = request_id
    inject(carrier)  # the current span, when tracing is on (nothing with the no-op tracer)
    if "traceparent" not in carrier:
        carrier.update((name, value) for name in _TRACE_HEADERS if (value := incoming.get(name)))
    return carrier


class Forwarder:
    """Runs a forwarded request on this node, then calls the next hop with its own pooled session."""

    def __init__(self, peers: frozenset[str] | None, *, token: str | None = None) -> None:
        self._peers = frozenset(peer.rstrip("/") for peer in peers) if peers is not None else None
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    @property
    def enabled(self) -> bool:
        return self._peers is not None

    def _client(self) -> NodeClient:
        if self._session is None:  # made on first use, inside the running loop
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit_per_host=64))
        return NodeClient(self._session, token=self._token)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def plan(self, raw: Any) -> ForwardPlan:
        if self._peers is None:
            raise InvalidInput("this node does not forward to other nodes (start it with --forward-peers)")
        try:
            plan = ForwardPlan.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            raise InvalidInput(f"malformed {FORWARD_PARAMETER}: {where}: {first['msg']}") from exc
        target = plan.hops[0].url
        if "*" not in self._peers and target not in self._peers:
            raise InvalidInput(f"this node does not forward to {target}: not one of its --forward-peers")
        return plan

    async def infer(
        self,
        engine: InferenceEngine,
        model: str,
        request: DecodedRequest,
        *,
        local_done: Callable[[], None] | None = None,
        incoming: Mapping[str, str] | None = None,
    ) -> tuple[ModelConfig, list[Tensor]]:
        """Run `model` on its inputs, send the next hop what it needs, return the chain's final answer.

        `local_done` runs once this node's own stage is done, before waiting on the next hop (the
        node's concurrency limit gives the request's slot back there). `incoming`: the request's
        headers, whose request id and trace go on to the next hop.
        """
        plan = self.plan(request.parameters.get(FORWARD_PARAMETER))
        hop = plan.hops[0]
        config = engine.repository.get(model).config
        own = {spec.name for spec in config.inputs}
        carried = {tensor.name: tensor for tensor in request.inputs if tensor.name not in own}
        if stray := sorted(set(carried) - set(hop.send)):
            raise InvalidInput(f"model {model!r} has no input {stray[0]!r}, and the next hop does not ask for it")
        _, outputs = await engine.infer(model, [t for t in request.inputs if t.name in own])
        if local_done is not None:
            local_done()
        available = {**carried, **{t.name: t for t in request.inputs if t.name in own}, **{t.name: t for t in outputs}}
        if missing := [name for name in hop.send if name not in available]:
            raise InvalidInput(f"the next hop asks for {missing[0]!r}, which neither the request nor {model!r} has")
        wanted: Sequence[str] | None = [out.name for out in request.outputs] if request.outputs else None
        rest = plan.rest()
        try:
            reply = await self._client().infer(
                hop.url,
                hop.model,
                [available[name] for name in hop.send],
                timeout_s=plan.timeout_ms / 1000,
                outputs=wanted,
                request_id=request.id,
                parameters={FORWARD_PARAMETER: rest} if rest else None,
                headers=onward_headers(incoming or {}),
            )
        except NodeRejected as exc:
            raise InvalidInput(f"{hop.url} refused stage {hop.model!r}: {exc.message}") from exc
        except NodeCallError as exc:
            raise ForwardFailed(f"forwarding to {hop.url} failed: {exc.message}") from exc
        final = config.model_copy(update={"name": reply.model_name, "version": reply.model_version})
        return final, reply.outputs
