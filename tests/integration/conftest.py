"""Real node processes on loopback ports, and the gateway plugin mounted in a real FastAPI app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from gateway_plugin import DistributedInference, Settings
from gateway_plugin.auth import ADMIN, INFER, mint_token
from gateway_plugin.processes import ServerProcess, start_node
from gateway_plugin.settings import (
    AuthSettings,
    BalancerSettings,
    DiscoverySettings,
    FlagSettings,
    LimitSettings,
    LocalSettings,
)
from worker.bundled import bundled_models

StartNodes = Callable[..., list[ServerProcess]]
# Loading the local fallback models (torch ones too) takes seconds on a busy 2-core machine.
STARTUP_TIMEOUT_S = 60


@pytest.fixture(scope="session")
def repository() -> Path:
    return bundled_models()


def _start(
    repository: Path, ids: tuple[str, ...], extra_args: list[str] | None, port: int | None = None
) -> list[ServerProcess]:
    nodes = [start_node(repository, node_id, extra_args=extra_args, port=port) for node_id in ids]
    try:
        for node in nodes:
            node.wait_ready()
    except BaseException:
        for node in nodes:
            node.stop(timeout_s=5)
        raise
    return nodes


@pytest.fixture
def start_nodes(repository: Path) -> Iterator[StartNodes]:
    """Start fresh node processes for one test (for tests that kill or break them)."""
    started: list[ServerProcess] = []

    def start(*ids: str, extra_args: list[str] | None = None, port: int | None = None) -> list[ServerProcess]:
        nodes = _start(repository, ids, extra_args, port)
        started.extend(nodes)
        return nodes

    yield start
    for node in started:
        node.stop()


@pytest.fixture(scope="session")
def two_nodes(repository: Path) -> Iterator[list[ServerProcess]]:
    """Two nodes shared by the tests that only read from them."""
    nodes = _start(repository, ("node-a", "node-b"), None)
    yield nodes
    for node in nodes:
        node.stop()


# HS256 secret of the test gateways (PyJWT warns below 32 bytes, and warnings are errors here).
TEST_JWT_SECRET = "distinfer-integration-tests-secret-0123456789"


def bearer(*scopes: str, sub: str = "tester", secret: str = TEST_JWT_SECRET) -> dict[str, str]:
    """An Authorization header with a valid token for the test gateways."""
    return {"Authorization": f"Bearer {mint_token(secret, scopes=scopes or (INFER,), sub=sub, ttl_s=600)}"}


def settings_for(
    nodes: list[str],
    *,
    local: Path | None = None,
    enabled: bool = True,
    probe_interval_s: float = 0.2,
    **sections: Any,
) -> Settings:
    return Settings(
        flags=FlagSettings(enabled=enabled),
        discovery=DiscoverySettings(nodes=nodes),
        balancer=sections.pop("balancer", BalancerSettings(probe_interval_s=probe_interval_s)),
        local=LocalSettings(model_repository=local),
        limits=sections.pop("limits", LimitSettings()),
        auth=sections.pop("auth", AuthSettings(jwt_secret=TEST_JWT_SECRET)),
        **sections,
    )


@asynccontextmanager
async def mounted(
    settings: Settings, *, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, DistributedInference]]:
    """The plugin mounted exactly as CONTRACT §2 shows, the host app's lifespan running.

    The client sends a valid `infer admin` token unless `headers` says otherwise.
    """
    app = FastAPI()
    distributed = DistributedInference(settings=settings)
    app.include_router(distributed.router)
    async with LifespanManager(app, startup_timeout=STARTUP_TIMEOUT_S) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        sent = bearer(INFER, ADMIN) if headers is None else headers
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", headers=sent) as client:
            yield client, distributed


@pytest.fixture(scope="session")
def digits_images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random((5, 1, 8, 8), dtype=np.float32)


@pytest.fixture(scope="session")
def onnx_digits(repository: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The digits model run directly by ONNX Runtime: the reference every path must match."""
    session = ort.InferenceSession(str(repository / "digits" / "model.onnx"), providers=["CPUExecutionProvider"])

    def run(images: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(["logits"], {"image": images})[0])

    return run
