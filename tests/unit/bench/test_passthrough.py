"""The pass-through proxy forwards status, body and the binary-extension header byte for byte."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NamedTuple

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from bench.passthrough import create_app, end_to_end_headers
from bench.servers import start_passthrough

BINARY_BODY = b'{"inputs":[]}' + bytes(range(256)) * 4
HEADER = "Inference-Header-Content-Length"


class Answer(NamedTuple):
    status: int
    body: bytes
    headers: CIMultiDictProxy[str]


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def upstream_app() -> web.Application:
    """Answers with the request's body reversed, its header length, and what it saw of the request."""

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {
            HEADER: request.headers.get(HEADER, "-"),
            "Content-Type": "application/octet-stream",
            "X-Seen": f"{request.method} {request.path_qs} {request.headers.get('Content-Type')}",
            "X-Saw-Connection-Token": request.headers.get("X-Hop", "no"),
        }
        return web.Response(status=201 if request.query.get("created") else 200, body=body[::-1], headers=headers)

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def missing(request: web.Request) -> web.Response:
        return web.json_response({"error": "no such model"}, status=404)

    app = web.Application()
    app.router.add_post("/v2/models/digits/infer", infer)
    app.router.add_get("/v2/models/missing", missing)
    app.router.add_get("/v2/health/ready", ready)
    return app


async def fetch(method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
    async with aiohttp.ClientSession() as session, session.request(method, url, data=body, headers=headers) as resp:
        return Answer(resp.status, await resp.read(), resp.headers)


async def test_binary_request_and_answer_pass_byte_exactly() -> None:
    headers = {HEADER: "13", "Content-Type": "application/octet-stream", "Connection": "X-Hop", "X-Hop": "yes"}
    async with serve(upstream_app()) as upstream, serve(create_app(upstream)) as proxy:
        answer = await fetch("POST", f"{proxy}/v2/models/digits/infer?created=1", BINARY_BODY, headers)

    assert answer.status == 201
    assert answer.body == BINARY_BODY[::-1]
    assert answer.headers[HEADER] == "13"
    assert answer.headers["Content-Type"] == "application/octet-stream"
    assert answer.headers["X-Seen"] == "POST /v2/models/digits/infer?created=1 application/octet-stream"
    assert answer.headers["X-Saw-Connection-Token"] == "no"  # named by Connection: hop-by-hop, dropped


async def test_upstream_errors_keep_their_status_and_body() -> None:
    async with serve(upstream_app()) as upstream, serve(create_app(upstream)) as proxy:
        answer = await fetch("GET", f"{proxy}/v2/models/missing")

    assert (answer.status, answer.body) == (404, b'{"error": "no such model"}')


async def test_unreachable_upstream_is_a_502() -> None:
    async with serve(upstream_app()) as upstream:
        pass  # nothing listens there any more
    async with serve(create_app(upstream)) as proxy:
        answer = await fetch("GET", f"{proxy}/v2/health/ready")

    assert answer.status == 502


def test_hop_by_hop_headers_are_dropped() -> None:
    pairs = [("Connection", "keep-alive, X-Secret"), ("X-Secret", "1"), ("Transfer-Encoding", "chunked")]
    pairs += [("Keep-Alive", "timeout=5"), ("Host", "a"), (HEADER, "7"), ("Content-Type", "application/json")]
    headers = CIMultiDictProxy(CIMultiDict(pairs))
    kept = end_to_end_headers(headers, frozenset({"host"}))
    assert dict(kept) == {HEADER: "7", "Content-Type": "application/json"}


async def test_runs_as_a_module_in_its_own_process() -> None:
    async with serve(upstream_app()) as upstream:
        proxy = start_passthrough(upstream)
        try:
            await asyncio.to_thread(proxy.wait_ready, 15.0)  # its health check is the upstream's, forwarded
            answer = await fetch("POST", f"{proxy.url}/v2/models/digits/infer", b"abc", {HEADER: "3"})
        finally:
            exit_code = proxy.stop()

    assert (answer.status, answer.body, answer.headers[HEADER]) == (200, b"cba", "3")
    assert exit_code == 0, proxy.output()  # SIGTERM is a clean stop
