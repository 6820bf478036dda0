"""A stand-in for "an existing service": its own `/api/inference` (local ONNX Runtime), its own
auth-free routes, its own health endpoint, with distinfer mounted exactly as the README shows.

Also `serving(app)`: the app under a real uvicorn server on a loopback port, in this event loop,
for what an in-memory transport cannot show (SSE as it streams, disconnects, huge bodies).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from compat import LegacyInferenceMiddleware, cluster_health
from compat.middleware import Authorize
from gateway_plugin import DistributedInference, Settings
from gateway_plugin.processes import free_port
from worker.bundled import bundled_models


@dataclass
class Seen:
    """What the service's own handler received, to prove the middleware hands it the same request."""

    requests: list[tuple[list[tuple[bytes, bytes]], bytes]] = field(default_factory=list)


def existing_service(
    settings: Settings | None,
    *,
    weights: str = "digits",
    middleware: bool = True,
    api_key: str | None = None,
    authorize: Authorize | None = None,
) -> tuple[FastAPI, DistributedInference | None, Seen]:
    """The service; `settings=None` builds it as it was before distinfer (no plugin at all).

    `api_key`: the endpoint refuses (401) callers without `X-API-Key: <api_key>`, as a host's own
    auth does; `authorize` goes to the middleware."""
    session = ort.InferenceSession(str(bundled_models() / weights / "model.onnx"), providers=["CPUExecutionProvider"])
    seen = Seen()
    app = FastAPI()

    @app.post("/api/inference")
    async def inference(request: Request) -> JSONResponse:
        if api_key is not None and request.headers.get("x-api-key") != api_key:
            return JSONResponse({"detail": "the host's own auth refused"}, status_code=401)
        body = await request.body()
        seen.requests.append((list(request.headers.raw), body))
        parsed = json.loads(body)
        images = np.asarray(parsed["inputs"], dtype=np.float32).reshape(-1, 1, 8, 8)
        logits = np.asarray(session.run(["logits"], {"image": images})[0])
        return JSONResponse(
            {
                "model": parsed.get("model", "digits"),
                "model_version": "1",
                "outputs": [
                    {"name": "logits", "datatype": "FP32", "shape": list(logits.shape), "data": logits.ravel().tolist()}
                ],
            },
            headers={"X-Served-By": "legacy-handler"},
        )

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    distributed = None
    if settings is not None:
        distributed = DistributedInference(settings=settings)
        app.include_router(distributed.router)
        if middleware:
            app.add_middleware(
                LegacyInferenceMiddleware, distributed=distributed, path="/api/inference", authorize=authorize
            )
        plugin = distributed

        @app.get("/health")
        async def health() -> dict[str, Any]:
            return {"status": "ok", "cluster": cluster_health(plugin)}  # the opt-in health integration

    return app, distributed, seen


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the test runner keeps its own signal handlers


@asynccontextmanager
async def serving(app: Any, **options: Any) -> AsyncIterator[str]:
    """`app` under uvicorn on a free loopback port (lifespan included); yields its base URL.

    `options` go to `uvicorn.Config` (TLS: `ssl_certfile`, `ssl_keyfile`, `ssl_ca_certs`, ...).
    """
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, **options)
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.02)
        yield f"{'https' if 'ssl_certfile' in options else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)
