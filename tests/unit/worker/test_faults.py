"""Fault knobs as ASGI middleware: latency, errors, timeouts, crash-after-N, the control endpoint, flags."""

from __future__ import annotations

import argparse
import random
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from worker.faults import FaultInjector, FaultSpec, FaultState, add_fault_arguments, faults_from_args, parse_latency
from worker.hardware import detect_labels, parse_label

INFER = "/v2/models/digits/infer"


async def _ok(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def client(spec: FaultSpec, *, control: bool = False, seed: int = 0) -> tuple[httpx.AsyncClient, list[int]]:
    inner = Starlette(routes=[Route(INFER, _ok, methods=["POST"]), Route("/v2/health/ready", _ok)])
    crashes: list[int] = []
    app = FaultInjector(
        inner,
        state=FaultState(spec, rng=random.Random(seed)),
        control=control,
        crash=lambda: crashes.append(1),
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node"), crashes


async def test_no_faults_pass_through() -> None:
    http, _ = client(FaultSpec())
    async with http:
        assert (await http.post(INFER)).json() == {"ok": True}
        assert (await http.get("/v2/faults")).status_code == 404  # no control without the flag


async def test_error_rate_answers_500_on_inference_only() -> None:
    http, _ = client(FaultSpec(error_rate=0.3), seed=1)
    async with http:
        codes = [(await http.post(INFER)).status_code for _ in range(300)]
        assert all([(await http.get("/v2/health/ready")).status_code == 200 for _ in range(20)])
    assert set(codes) == {200, 500}
    assert 60 < codes.count(500) < 120


async def test_busy_rate_answers_429_with_retry_after() -> None:
    http, _ = client(FaultSpec(busy_rate=1.0, retry_after_s=7))
    async with http:
        response = await http.post(INFER)
        assert (await http.get("/v2/health/ready")).status_code == 200  # busy, not down
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"


async def test_timeout_rate_hangs_then_504() -> None:
    http, _ = client(FaultSpec(timeout_rate=1.0, hang_s=0.05))
    async with http:
        began = time.perf_counter()
        response = await http.post(INFER)
    assert response.status_code == 504
    assert time.perf_counter() - began >= 0.05


async def test_added_latency_fixed_and_range() -> None:
    http, _ = client(FaultSpec(latency_ms=30))
    async with http:
        began = time.perf_counter()
        await http.post(INFER)
        assert time.perf_counter() - began >= 0.03
    ranged, _ = client(FaultSpec(latency_ms=1, latency_max_ms=40))
    async with ranged:
        began = time.perf_counter()
        for _ in range(10):
            await ranged.post(INFER)
        assert time.perf_counter() - began >= 0.01


async def test_crash_after_n() -> None:
    http, crashes = client(FaultSpec(crash_after=3))
    async with http:
        for _ in range(3):
            await http.post(INFER)
        assert crashes == []
        await http.post(INFER)
    assert crashes == [1]


async def test_control_endpoint_reads_changes_and_validates() -> None:
    http, _ = client(FaultSpec(), control=True)
    async with http:
        assert (await http.get("/v2/faults")).json()["error_rate"] == 0
        changed = await http.put("/v2/faults", json={"error_rate": 1.0})
        assert changed.status_code == 200
        assert changed.json()["error_rate"] == 1.0
        assert (await http.post(INFER)).status_code == 500
        bad = await http.put("/v2/faults", json={"error_rate": 2})
        assert bad.status_code == 400
        assert "error" in bad.json()
        assert (await http.put("/v2/faults", content=b"{not json")).status_code == 400
        assert (await http.put("/v2/faults", json={"bogus": 1})).status_code == 400
        assert (await http.delete("/v2/faults")).status_code == 405
        assert (await http.put("/v2/faults", json={})).json()["served"] == 1
        assert (await http.post(INFER)).status_code == 200  # healed


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="latency_max_ms"):
        FaultSpec(latency_ms=10, latency_max_ms=5)
    with pytest.raises(ValueError, match="<= 1"):
        FaultSpec(error_rate=0.6, timeout_rate=0.6)
    with pytest.raises(ValueError, match="<= 1"):
        FaultSpec(error_rate=0.5, busy_rate=0.6)
    assert not FaultSpec().active
    assert FaultSpec(busy_rate=0.1).active
    assert FaultSpec(crash_after=0).active


def test_flags() -> None:
    parser = argparse.ArgumentParser()
    add_fault_arguments(parser)
    args = parser.parse_args(["--fault-latency-ms", "10-50", "--fault-error-rate", "0.1", "--fault-crash-after", "7"])
    spec = faults_from_args(args)
    assert (spec.latency_ms, spec.latency_max_ms, spec.error_rate, spec.crash_after) == (10, 50, 0.1, 7)
    busy = faults_from_args(parser.parse_args(["--fault-busy-rate", "0.5", "--fault-retry-after-s", "3"]))
    assert (busy.busy_rate, busy.retry_after_s) == (0.5, 3)
    assert parse_latency("20") == (20.0, None)
    for bad in ("x", "50-10", "-5"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_latency(bad)
    assert parse_label("zone=a") == ("zone", "a")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_label("novalue")
    labels = detect_labels(workers=3, extra={"zone": "b", "device": "tpu"})
    assert labels["capacity"] == "3"
    assert labels["device"] == "tpu"
    assert int(labels["cpus"]) >= 1
