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
from gateway_plugin.processes import ServerProcess, start_node
from gateway_plugin.settings import BalancerSettings, DiscoverySettings, FlagSettings, LimitSettings, LocalSettings
from worker.bundled import bundled_models

StartNodes = Callable[..., list[ServerProcess]]


@pytest.fixture(scope="session")
def repository() -> Path:
    return bundled_models()


def _start(
    repository: Path, ids: tuple[str, ...], extra_args: list[str] | None, port: int | None = None
) -> list[ServerProcess]:
    nodes = [start_node(repository, node_id, extra_args=extra_args, port=port) for node_id in ids]
    for node in nodes:
        node.wait_ready()
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
        **sections,
    )


@asynccontextmanager
async def mounted(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, DistributedInference]]:
    """The plugin mounted exactly as CONTRACT §2 shows, the host app's lifespan running."""
    app = FastAPI()
    distributed = DistributedInference(settings=settings)
    app.include_router(distributed.router)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
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
