"""`--max-concurrency`: at most N inferences at once, the rest served in arrival order; probes never wait."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway_plugin.cli import _parser
from tests.integration.polling import until
from worker.bundled import bundled_models
from worker.concurrency import ConcurrencyLimiter, InferenceSlots
from worker.faults import FaultSpec
from worker.server import NodeConfig, create_node_app

INFER = "/v2/models/digits/infer"


class Model:
    """A fake model that records the order requests reached it and runs until released."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.bodies: list[int] = []
        self.release = asyncio.Event()

    async def infer(self, request: Request) -> JSONResponse:
        self.started.append(int(request.query_params["n"]))
        self.bodies.append(len(await request.body()))
        await self.release.wait()
        return JSONResponse({"ok": True})


async def _ok(_: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def _client(model: Model, slots: InferenceSlots) -> httpx.AsyncClient:
    inner = Starlette(routes=[Route(INFER, model.infer, methods=["POST"]), Route("/v2/health/ready", _ok)])
    transport = httpx.ASGITransport(app=ConcurrencyLimiter(inner, slots=slots))
    return httpx.AsyncClient(transport=transport, base_url="http://node")


async def test_one_at_a_time_in_arrival_order_while_probes_answer() -> None:
    model, slots = Model(), InferenceSlots(1)
    async with _client(model, slots) as http:
        calls = []
        for n in range(5):  # each one queued before the next is sent: a known arrival order
            calls.append(asyncio.create_task(http.post(INFER, params={"n": n})))
            await until(lambda n=n: len(model.started) + slots.waiting == n + 1)
        assert (model.started, slots.active, slots.waiting) == ([0], 1, 4)
        assert (await http.get("/v2/health/ready")).status_code == 200  # never held back
        model.release.set()
        answers = await asyncio.gather(*calls)
    assert [a.status_code for a in answers] == [200] * 5
    assert model.started == [0, 1, 2, 3, 4]
    assert (slots.peak, slots.active, slots.waiting) == (1, 0, 0)


async def test_two_slots_admit_two_and_queue_the_rest() -> None:
    model, slots = Model(), InferenceSlots(2)
    async with _client(model, slots) as http:
        calls = [asyncio.create_task(http.post(INFER, params={"n": n})) for n in range(4)]
        await until(lambda: len(model.started) == 2 and slots.waiting == 2)
        model.release.set()
        await asyncio.gather(*calls)
    assert slots.peak == 2


async def test_a_request_that_gives_up_while_waiting_leaves_the_queue() -> None:
    model, slots = Model(), InferenceSlots(1)
    async with _client(model, slots) as http:
        first = asyncio.create_task(http.post(INFER, params={"n": 0}))
        await until(lambda: model.started == [0])
        quitter = asyncio.create_task(http.post(INFER, params={"n": 1}))
        await until(lambda: slots.waiting == 1)
        quitter.cancel()
        await until(lambda: slots.waiting == 0)
        last = asyncio.create_task(http.post(INFER, params={"n": 2}))
        await until(lambda: slots.waiting == 1)
        model.release.set()
        assert (await first).status_code == 200
        assert (await last).status_code == 200
    assert model.started == [0, 2]
    assert (slots.active, slots.waiting) == (0, 0)


async def test_a_request_whose_client_disconnects_while_waiting_never_runs() -> None:
    """Regression: servers do not cancel a request whose client left (the test above cancels it by
    hand); the limiter kept it queued, then ran it and held the slot for nobody. Its only sign is
    the `http.disconnect` message, which the limiter now listens for while the request waits."""
    model, slots = Model(), InferenceSlots(1)
    limiter = ConcurrencyLimiter(Starlette(routes=[Route(INFER, model.infer, methods=["POST"])]), slots=slots)
    left = asyncio.Event()
    messages: list[dict[str, object]] = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive() -> dict[str, object]:
        if messages:
            return messages.pop(0)
        await left.wait()
        return {"type": "http.disconnect"}

    sent: list[object] = []

    async def send(message: object) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": INFER, "raw_path": INFER.encode(), "root_path": ""}
    scope |= {"query_string": b"n=1", "headers": [], "http_version": "1.1", "scheme": "http"}
    async with _client(model, slots) as http:
        first = asyncio.create_task(http.post(INFER, params={"n": 0}))
        await until(lambda: model.started == [0])
        waiting = asyncio.create_task(limiter(scope, receive, send))  # type: ignore[arg-type]
        await until(lambda: slots.waiting == 1)
        left.set()  # the client goes away
        try:
            done, _ = await asyncio.wait({waiting}, timeout=2)
            assert waiting in done  # it gave up at once, without waiting for the slot
        finally:
            model.release.set()
        assert (await first).status_code == 200
        await asyncio.wait({waiting}, timeout=2)
    assert model.started == [0]
    assert sent == []
    assert (slots.active, slots.waiting) == (0, 0)


async def test_a_waiting_request_still_gets_its_body() -> None:
    """What the limiter read while listening (the body) reaches the app once the slot is free."""
    model, slots = Model(), InferenceSlots(1)
    async with _client(model, slots) as http:
        first = asyncio.create_task(http.post(INFER, params={"n": 0}))
        await until(lambda: model.started == [0])
        second = asyncio.create_task(http.post(INFER, params={"n": 1}, json={"payload": "x" * 70_000}))
        await until(lambda: slots.waiting == 1)
        await asyncio.sleep(0.05)  # long enough for its body to be read while it waits
        model.release.set()
        assert (await first).status_code == 200
        assert (await second).status_code == 200
    assert model.started == [0, 1]
    assert model.bodies[-1] == len(b'{"payload":"') + 70_000 + 2


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        InferenceSlots(0)


async def test_node_serves_an_injected_model_time_one_request_at_a_time() -> None:
    """The limiter wraps the fault knobs: 3 requests of 60 ms model time take 3 x 60 ms, not 60 ms."""
    config = NodeConfig(
        model_repository=bundled_models(),
        node_id="n1",
        workers=2,
        models=frozenset({"digits"}),
        faults=FaultSpec(latency_ms=60),
        max_concurrency=1,
    )
    app = create_node_app(config)
    body = {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}]}
    async with LifespanManager(app, startup_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
            await http.post(INFER, json=body)  # warm
            began = time.perf_counter()
            answers = await asyncio.gather(*(http.post(INFER, json=body) for _ in range(3)))
            elapsed = time.perf_counter() - began
    assert [a.status_code for a in answers] == [200] * 3
    assert elapsed >= 3 * 0.060


def test_cli_flag_and_its_labels() -> None:
    from gateway_plugin.cli import _limit_label, _parallel

    args = _parser().parse_args(["node", "--model-repository", "m", "--workers", "4", "--max-concurrency", "1"])
    assert (args.max_concurrency, _parallel(args), _limit_label(args)) == (1, 1, {"max_concurrency": "1"})
    plain = _parser().parse_args(["node", "--model-repository", "m", "--workers", "4"])
    assert (plain.max_concurrency, _parallel(plain), _limit_label(plain)) == (0, 4, {})
    with pytest.raises(SystemExit):
        _parser().parse_args(["node", "--model-repository", "m", "--max-concurrency", "-1"])
