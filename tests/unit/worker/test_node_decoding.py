"""The node decodes large request bodies in a thread, so its event loop keeps answering probes."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager

import worker.server as server
from worker.bundled import bundled_models
from worker.protocol import Tensor, encode_request
from worker.server import NodeConfig, create_node_app

INFER = "/v2/models/digits/infer"


async def test_a_large_body_is_decoded_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a 30 MB JSON body held the node's event loop for seconds (decoding it), and the
    gateway's 1 s health probes timed out meanwhile; large bodies are decoded in a thread now."""
    threads: list[int] = []
    real = server.decode_request

    def recording(*args: object) -> object:
        threads.append(threading.get_ident())
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(server, "decode_request", recording)
    app = create_node_app(NodeConfig(model_repository=bundled_models(), node_id="n", models=frozenset({"digits"})))
    small, big = (encode_request([Tensor.of("image", np.zeros((n, 1, 8, 8), np.float32))]) for n in (1, 1500))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
            for encoded in (small, big):
                headers = {
                    "Content-Type": encoded.content_type,
                    "Inference-Header-Content-Length": str(encoded.header_length),
                }
                await http.post(INFER, content=encoded.body, headers=headers)
    loop_thread = threading.get_ident()
    assert threads[0] == loop_thread  # small: no thread hop
    assert threads[1] != loop_thread
