"""Regression: `NodeClient` must read a node's whole answer, however the bytes arrive.

Found by the sharding tests: a stage answering 1 MB of activations came back "binary data
truncated (127799 of 1048576 bytes)". `aiohttp`'s `StreamReader.read(n)` returns *up to* n bytes,
whatever is buffered, not the whole body (worker/client.py, `_call`).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from worker.client import NodeClient
from worker.protocol import HEADER_LENGTH, Tensor, encode_response


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def _serving(app: web.Application) -> AsyncIterator[str]:
    """`app` on a loopback port for the block; its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content-length"])
async def test_a_large_answer_sent_in_pieces_is_read_whole(declared: bool) -> None:
    data = np.arange(512 * 512, dtype=np.float32).reshape(512, 512)
    encoded = encode_response(
        model_name="m", model_version="1", request_id=None, outputs=[Tensor.of("y", data)], binary=True
    )

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={HEADER_LENGTH: str(encoded.header_length)})
        response.content_type = "application/octet-stream"
        if declared:  # read in one call; without a length, chunk by chunk under the cap
            response.content_length = len(encoded.body)
        await response.prepare(request)
        for start in range(0, len(encoded.body), 65536):  # the way a busy node's bytes arrive
            await response.write(encoded.body[start : start + 65536])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v2/models/m/infer", answer)
    async with _serving(app) as url, aiohttp.ClientSession() as session:
        reply = await NodeClient(session).infer(url, "m", [Tensor.of("x", data[:1])], timeout_s=10)
    np.testing.assert_array_equal(reply.outputs[0].data, data)


async def test_a_large_request_is_sent_without_aiohttp_warnings() -> None:
    """Regression: bodies over 1 MB sent as raw bytes made aiohttp warn (an error under pytest)."""
    data = np.ones((300_000,), dtype=np.float32)  # 1.2 MB of input
    echo_sizes: list[int] = []

    async def answer(request: web.Request) -> web.Response:
        body = await request.read()
        echo_sizes.append(len(body))
        encoded = encode_response(
            model_name="m", model_version="1", request_id=None, outputs=[Tensor.of("y", data[:2])], binary=True
        )
        return web.Response(body=encoded.body, headers={HEADER_LENGTH: str(encoded.header_length)})

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/v2/models/m/infer", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as session:
            reply = await NodeClient(session).infer(
                f"http://127.0.0.1:{port}", "m", [Tensor.of("x", data)], timeout_s=10
            )
    finally:
        await runner.cleanup()
    assert len(echo_sizes) == 1
    assert echo_sizes[0] > 1024 * 1024
    assert reply.outputs[0].shape == [2]


async def test_a_compressed_answer_is_held_to_the_cap_once_inflated() -> None:
    """Content-Length of a gzip answer says nothing of its inflated size: it is read under the cap."""
    import gzip

    from worker.errors import NodeServerError

    inflated = b'{"name": "' + b"x" * 200_000 + b'"}'
    packed = gzip.compress(inflated)

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=packed, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    app = web.Application()
    app.router.add_get("/v2", answer)
    async with _serving(app) as url, aiohttp.ClientSession() as session:
        client = NodeClient(session, max_response_bytes=64 * 1024)
        # Retried elsewhere: bytes depend on a node's encoding, and a node that sends no end is at fault.
        with pytest.raises(NodeServerError, match="over"):
            await client.server_metadata(url)
    assert len(packed) < 64 * 1024 < len(inflated)
