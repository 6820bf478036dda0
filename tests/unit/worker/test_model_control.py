"""`ModelControl`: models swapped in and out of a serving engine, calls in flight finishing on their copy."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.integration.polling import until
from worker.bundled import bundled_models
from worker.engine import InferenceEngine
from worker.errors import InvalidInput, ModelNotFound
from worker.model_control import ModelControl
from worker.protocol import Tensor
from worker.repository import ModelRepository
from worker.streaming import GenerationService
from worker.telemetry import NodeTelemetry

IMAGE = np.zeros((1, 1, 8, 8), dtype=np.float32)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name in ("digits", "digits_b"):
        shutil.copytree(bundled_models() / name, tmp_path / name)
    return tmp_path


class Served:
    def __init__(self, folder: Path, executor: ThreadPoolExecutor, *, explicit: bool = True) -> None:
        self.repository = ModelRepository.load(folder, threads=1, only=frozenset({"digits"}))
        self.engine = InferenceEngine(self.repository, executor)
        self.control = ModelControl(
            self.repository,
            self.engine,
            GenerationService({}),
            executor,
            NodeTelemetry(node_id="n1"),
            batching="on",
            workers=1,
            explicit=explicit,
        )

    async def infer(self, model: str) -> np.ndarray:
        _, outputs = await self.engine.infer(model, [Tensor("image", "FP32", IMAGE)])
        return np.asarray(outputs[0].data)


@pytest.fixture
async def served(folder: Path) -> AsyncIterator[Served]:
    with ThreadPoolExecutor(max_workers=1) as executor:
        node = Served(folder, executor)
        node.control.start()
        yield node
        await node.control.close()


async def _blocked(executor_user: Served) -> threading.Event:
    """The engine's one runtime thread held until the returned event is set."""
    release = threading.Event()
    loop = asyncio.get_running_loop()
    executor = executor_user.engine._executor
    loop.run_in_executor(executor, release.wait)
    return release


async def test_calls_in_flight_finish_on_the_copy_being_unloaded(served: Served) -> None:
    await served.control.load("digits_b")
    expected = await served.infer("digits_b")
    release = await _blocked(served)
    calls = [asyncio.create_task(served.infer("digits_b")) for _ in range(5)]
    await asyncio.sleep(0.05)  # queued in the batcher, behind the held thread
    unloading = asyncio.create_task(served.control.unload("digits_b"))
    await asyncio.sleep(0.05)
    with pytest.raises(ModelNotFound, match="unloaded"):  # 404: a gateway tries another node, healthy
        await served.infer("digits_b")  # a new call is refused at once...
    assert not unloading.done()  # ...while the unload waits for the calls it holds
    release.set()
    for call in calls:
        np.testing.assert_array_equal(await call, expected)
    await asyncio.wait_for(unloading, 5)
    assert "digits_b" not in served.engine.batchers
    assert served.repository.unavailable["digits_b"] == "unloaded"


async def test_a_reload_serves_new_calls_on_the_new_copy_and_old_ones_on_the_old(served: Served, folder: Path) -> None:
    before = await served.infer("digits")
    original = served.repository.get("digits")
    release = await _blocked(served)
    old_call = asyncio.create_task(served.infer("digits"))
    await asyncio.sleep(0.05)
    shutil.copy(folder / "digits_b" / "model.onnx", folder / "digits" / "model.onnx")
    reloading = asyncio.create_task(served.control.load("digits"))
    await until(lambda: served.repository.get("digits") is not original)  # the new copy loads in a thread
    assert not reloading.done()  # swapped in, and waiting for the old copy's call
    assert not old_call.done()
    release.set()
    np.testing.assert_array_equal(await old_call, before)
    await asyncio.wait_for(reloading, 10)
    after = await served.infer("digits")
    assert not np.allclose(after, before)


async def test_unknown_folders_and_model_control_off(served: Served, folder: Path) -> None:
    for outside in ("nope", "..", ".", "digits/../digits_b", str(folder / "digits")):  # folders of the repository only
        with pytest.raises(ModelNotFound):
            await served.control.load(outside)
    with pytest.raises(ModelNotFound):
        await served.control.unload("nope")
    await served.control.unload("digits_b")  # a folder that is not loaded: nothing to do
    assert served.control.not_loaded() == ["digits_b"]
    # Regression (review): a folder whose config names another model loaded that model, which
    # `unload <folder>` then left serving; as Triton, a model loads by its own folder's name.
    renamed = folder / "alias"
    shutil.copytree(folder / "digits_b", renamed)
    (renamed / "config.json").write_text((renamed / "config.json").read_text().replace('"digits_b"', '"renamed"'))
    with pytest.raises(InvalidInput, match="folder 'alias' holds model 'renamed'"):
        await served.control.load("alias")
    assert "renamed" not in served.repository
    with ThreadPoolExecutor(max_workers=1) as executor:
        off = Served(folder, executor, explicit=False)
        with pytest.raises(InvalidInput, match="model control is off"):
            await off.control.load("digits_b")
