"""Fault knobs for tests and benchmarks: make a node slow or sick on purpose.

`distinfer node --fault-latency-ms 20` (or a range, `10-50`), `--fault-error-rate 0.1` (answer
500), `--fault-busy-rate 1` (answer 429 with `Retry-After: --fault-retry-after-s`, as a node
shedding load does), `--fault-timeout-rate 0.05` (hang, then 504), `--fault-crash-after 100` (the process dies
by SIGKILL on the 101st inference, as in a crash). With `--fault-control` the knobs can also be
read and changed at run time at `GET|PUT /v2/faults` (JSON `FaultSpec`), so one node can be
made sick and healed again without a restart; that endpoint does not exist without the flag.

Faults touch only inference calls (`POST .../infer`, `.../generate_stream`): health probes and
metadata keep answering, which is what a sick-but-up node looks like to a gateway. Pure ASGI
middleware; every decision draws from one injected `random.Random`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["FaultInjector", "FaultSpec", "FaultState", "add_fault_arguments", "faults_from_args", "parse_latency"]

_INFERENCE = re.compile(r"^/v2/models/[^/]+(?:/versions/[^/]+)?/(?:infer|generate_stream)$")
CONTROL_PATH = "/v2/faults"


class FaultSpec(BaseModel):
    """The knobs; all off by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: float = Field(default=0.0, ge=0, le=600_000, description="added before every inference")
    latency_max_ms: float | None = Field(default=None, ge=0, le=600_000, description="upper end of a uniform range")
    error_rate: float = Field(default=0.0, ge=0, le=1, description="share answered 500")
    busy_rate: float = Field(default=0.0, ge=0, le=1, description="share answered 429 with Retry-After")
    retry_after_s: int = Field(default=1, ge=0, le=3600, description="the Retry-After of a busy answer")
    timeout_rate: float = Field(default=0.0, ge=0, le=1, description="share that hang for hang_s, then 504")
    hang_s: float = Field(default=60.0, gt=0, le=3600)
    crash_after: int | None = Field(default=None, ge=0, description="inferences served before the process dies")

    @model_validator(mode="after")
    def _consistent(self) -> FaultSpec:
        if self.latency_max_ms is not None and self.latency_max_ms < self.latency_ms:
            raise ValueError("latency_max_ms must be >= latency_ms")
        if self.error_rate + self.timeout_rate + self.busy_rate > 1:
            raise ValueError("error_rate + timeout_rate + busy_rate must be <= 1")
        return self

    @property
    def active(self) -> bool:
        return bool(
            self.latency_ms or self.latency_max_ms or self.error_rate or self.timeout_rate or self.busy_rate
        ) or (self.crash_after is not None)


class FaultState:
    """The knobs in force and how many inferences have come in; one per app."""

    def __init__(self, spec: FaultSpec | None = None, *, rng: random.Random | None = None) -> None:
        self.spec = spec or FaultSpec()
        self.rng = rng or random.Random()
        self.served = 0


def _crash() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class FaultInjector:
    def __init__(
        self, app: ASGIApp, *, state: FaultState, control: bool = False, crash: Callable[[], None] = _crash
    ) -> None:
        self.app = app
        self.state = state
        self.control = control
        self.crash = crash

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if self.control and path == CONTROL_PATH:
            await self._control(scope, receive, send)
            return
        if scope["method"] != "POST" or not _INFERENCE.match(path):
            await self.app(scope, receive, send)
            return
        spec, rng = self.state.spec, self.state.rng
        self.state.served += 1
        if not spec.active:
            await self.app(scope, receive, send)
            return
        if spec.crash_after is not None and self.state.served > spec.crash_after:
            self.crash()
        delay_ms = spec.latency_ms if spec.latency_max_ms is None else rng.uniform(spec.latency_ms, spec.latency_max_ms)
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        draw = rng.random()
        if draw < spec.timeout_rate:
            await asyncio.sleep(spec.hang_s)
            await _json(send, 504, {"error": "fault injected: timeout"})
        elif draw < spec.timeout_rate + spec.error_rate:
            await _json(send, 500, {"error": "fault injected: error"})
        elif draw < spec.timeout_rate + spec.error_rate + spec.busy_rate:
            retry_after = [(b"retry-after", str(spec.retry_after_s).encode())]
            await _json(send, 429, {"error": "fault injected: busy"}, retry_after)
        else:
            await self.app(scope, receive, send)

    async def _control(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "PUT":
            body = b""
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False) and len(body) <= 65536
            try:
                self.state.spec = FaultSpec.model_validate_json(body)
            except ValidationError as exc:
                await _json(send, 400, {"error": f"bad fault spec: {exc.errors(include_url=False)[0]['msg']}"})
                return
        elif scope["method"] != "GET":
            await _json(send, 405, {"error": "GET or PUT"})
            return
        await _json(send, 200, {**self.state.spec.model_dump(), "served": self.state.served})


async def _json(send: Send, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += extra or []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def parse_latency(text: str) -> tuple[float, float | None]:
    """`20` -> (20, None); `10-50` -> (10, 50); argparse-friendly errors."""
    low, sep, high = text.partition("-")
    try:
        values = (float(low), float(high) if sep else None)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"latency must be MS or MIN-MAX in ms, not {text!r}") from exc
    if values[0] < 0 or (values[1] is not None and values[1] < values[0]):
        raise argparse.ArgumentTypeError(f"latency range {text!r} must be non-negative and MIN <= MAX")
    return values


def add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fault knobs (testing and benchmarks only)")
    group.add_argument("--fault-latency-ms", type=parse_latency, default=None, metavar="MS|MIN-MAX")
    group.add_argument("--fault-error-rate", type=float, default=0.0, help="share of inferences answered 500")
    group.add_argument("--fault-busy-rate", type=float, default=0.0, help="share answered 429 (busy)")
    group.add_argument("--fault-retry-after-s", type=int, default=1, help="the Retry-After of a busy answer")
    group.add_argument("--fault-timeout-rate", type=float, default=0.0, help="share that hang, then 504")
    group.add_argument("--fault-hang-s", type=float, default=60.0, help="how long a timeout fault hangs")
    group.add_argument("--fault-crash-after", type=int, default=None, metavar="N", help="die (SIGKILL) after N")
    group.add_argument("--fault-seed", type=int, default=None, help="seed of the fault draws")
    group.add_argument("--fault-control", action="store_true", help="serve GET|PUT /v2/faults to change knobs")


def faults_from_args(args: argparse.Namespace) -> FaultSpec:
    """The parsed flags as a spec; a ValueError (pydantic's) when they contradict each other."""
    low, high = args.fault_latency_ms or (0.0, None)
    return FaultSpec(
        latency_ms=low,
        latency_max_ms=high,
        error_rate=args.fault_error_rate,
        busy_rate=args.fault_busy_rate,
        retry_after_s=args.fault_retry_after_s,
        timeout_rate=args.fault_timeout_rate,
        hang_s=args.fault_hang_s,
        crash_after=args.fault_crash_after,
    )
