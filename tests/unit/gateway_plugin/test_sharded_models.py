"""DISTINFER_SHARDED_MODELS: reading pipeline descriptions, refusing bad ones at start, routing by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gateway_plugin.dispatch import InferenceCall, Outcome
from gateway_plugin.settings import Settings
from gateway_plugin.sharded import ShardedDispatcher, ShardedModels, read_pipelines
from worker.protocol import Tensor

PIPELINE = {
    "format": "distinfer-pipeline/1",
    "name": "m",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
    "stages": [{"model": "m.stage0of1", "inputs": ["x"], "outputs": ["y"]}],
}


class Echo:
    def __init__(self) -> None:
        self.models: list[str] = []

    async def infer(self, call: InferenceCall) -> Outcome:
        self.models.append(call.model)
        return Outcome(call.model, "1", [Tensor("y", "FP32", call.inputs[0].data)], "n", "distributed", 1, 0.1)


def test_the_setting_takes_a_comma_list(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DISTINFER_SHARDED_MODELS", f"{tmp_path},{tmp_path / 'x.pipeline.json'}")
    monkeypatch.setenv("DISTINFER_SHARD_MICRO_BATCH", "16")
    settings = Settings()
    assert settings.sharding.models == [tmp_path, tmp_path / "x.pipeline.json"]
    assert settings.sharding.micro_batch == 16


def test_folders_files_and_errors(tmp_path: Path) -> None:
    (tmp_path / "m.pipeline.json").write_text(json.dumps(PIPELINE), "utf-8")
    assert [spec.name for spec in read_pipelines([tmp_path])] == ["m"]
    with pytest.raises(ValueError, match="neither a pipeline description nor a folder"):
        read_pipelines([tmp_path / "missing"])
    (tmp_path / "copy.pipeline.json").write_text(json.dumps(PIPELINE), "utf-8")
    with pytest.raises(ValueError, match="two pipeline descriptions serve 'm'"):
        read_pipelines([tmp_path])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**PIPELINE, "stages": []}), "utf-8")
    with pytest.raises(ValueError, match="stages"):
        read_pipelines([bad])


async def test_only_sharded_names_go_to_their_runner(tmp_path: Path) -> None:
    (tmp_path / "m.pipeline.json").write_text(json.dumps(PIPELINE), "utf-8")
    stages, inner = Echo(), Echo()
    models = ShardedModels.build(read_pipelines([tmp_path]), stages, pool=None)  # type: ignore[arg-type]
    dispatcher = ShardedDispatcher(inner, models)
    x = Tensor.of("x", np.ones((1, 2), dtype=np.float32))
    await dispatcher.infer(InferenceCall("m", [x], "r", 1.0))
    await dispatcher.infer(InferenceCall("other", [x], "r", 1.0))
    assert stages.models == ["m.stage0of1"]
    assert inner.models == ["other"]
    info = models.info("m")
    assert info is not None
    assert info.inputs[0].name == "x"
