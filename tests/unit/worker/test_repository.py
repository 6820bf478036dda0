"""The model repository (folders of config + weights) and the inference engine on the digits model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from worker.config import TensorSpec
from worker.engine import InferenceEngine
from worker.errors import InvalidInput, ModelNotFound, ModelNotReady
from worker.protocol import Tensor
from worker.repository import ModelRepository, RepositoryError, read_config

BUNDLED = Path(__file__).resolve().parents[3] / "worker" / "bundled_models"
DIGITS = BUNDLED / "digits"
DIGITS_ONNX = DIGITS / "model.onnx"


def _config(name: str, **changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": name,
        "runtime": "onnx",
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }
    config.update(changes)
    return config


def _folder(root: Path, name: str, *, config: dict[str, Any] | None = None, weights: bool = True) -> Path:
    folder = root / name
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    if weights:
        shutil.copyfile(DIGITS_ONNX, folder / "model.onnx")
    return folder


# ---------------------------------------------------------------- repository


def test_onnx_alone_is_described_from_its_graph(tmp_path: Path) -> None:
    _folder(tmp_path, "plain")
    repository = ModelRepository.load(tmp_path, threads=1)
    try:
        assert repository.unavailable == {}
        assert "plain" in repository
        config = repository.get("plain").config
        assert config.name == "plain"
        assert config.runtime == "onnx"
        assert config.inputs == (TensorSpec(name="image", datatype="FP32", shape=(-1, 1, 8, 8)),)
        assert config.outputs == (TensorSpec(name="logits", datatype="FP32", shape=(-1, 10)),)
    finally:
        repository.close()


def test_partial_config_is_completed_from_the_graph(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "partial", config={"name": "partial", "max_batch_size": 4})
    config = read_config(folder)
    assert config.max_batch_size == 4
    assert [spec.name for spec in config.inputs] == ["image"]
    assert [spec.shape for spec in config.outputs] == [(-1, 10)]


@pytest.mark.parametrize(
    ("bad_name", "bad_config", "weights"),
    [
        ("unknown_field", _config("unknown_field", colour="blue"), True),
        ("bad_datatype", _config("bad_datatype", inputs=[{"name": "image", "datatype": "FP99", "shape": [-1]}]), True),
        ("bad_dim", _config("bad_dim", inputs=[{"name": "image", "datatype": "FP32", "shape": [0, 8]}]), True),
        ("bad_runtime", _config("bad_runtime", runtime="tensorflow"), True),
        ("no_weights", _config("no_weights"), False),
        ("not_json", None, True),
    ],
)
def test_bad_folders_are_unavailable_and_the_good_one_loads(
    tmp_path: Path, bad_name: str, bad_config: dict[str, Any] | None, weights: bool
) -> None:
    _folder(tmp_path, "good", config=_config("good", max_batch_size=8))
    bad = _folder(tmp_path, bad_name, config=bad_config, weights=weights)
    if bad_config is None:
        (bad / "config.json").write_text("{ not json")
    repository = ModelRepository.load(tmp_path, threads=1)
    try:
        assert "good" in repository
        assert [model.config.name for model in repository] == ["good"]
        assert set(repository.unavailable) == {bad_name}
        assert repository.unavailable[bad_name].startswith("RepositoryError: ")
        assert bad_name not in repository
        with pytest.raises(ModelNotReady):
            repository.get(bad_name)
        with pytest.raises(RepositoryError):
            read_config(bad)
    finally:
        repository.close()


def test_reasons_name_the_problem(tmp_path: Path) -> None:
    _folder(tmp_path, "unknown_field", config=_config("unknown_field", colour="blue"))
    _folder(tmp_path, "fp99", config=_config("fp99", outputs=[{"name": "y", "datatype": "FP99", "shape": [1]}]))
    _folder(tmp_path, "no_weights", config=_config("no_weights"), weights=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / ".hidden").mkdir()
    repository = ModelRepository.load(tmp_path, threads=1)
    assert set(repository.unavailable) == {"unknown_field", "fp99", "no_weights", "empty"}
    assert "colour" in repository.unavailable["unknown_field"]
    assert "FP99" in repository.unavailable["fp99"]
    assert "model.onnx" in repository.unavailable["no_weights"]
    assert "neither config.json nor model.onnx" in repository.unavailable["empty"]


def test_corrupt_weights_are_unavailable(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "corrupt", config=_config("corrupt"), weights=False)
    (folder / "model.onnx").write_bytes(b"not an onnx model")
    _folder(tmp_path, "good")
    repository = ModelRepository.load(tmp_path, threads=1)
    try:
        assert "good" in repository
        assert set(repository.unavailable) == {"corrupt"}
        with pytest.raises(ModelNotReady):
            repository.get("corrupt")
    finally:
        repository.close()


def test_unknown_model_is_not_found(tmp_path: Path) -> None:
    _folder(tmp_path, "good")
    repository = ModelRepository.load(tmp_path, threads=1)
    try:
        with pytest.raises(ModelNotFound):
            repository.get("nope")
        assert "nope" not in repository
    finally:
        repository.close()


def test_only_loads_the_named_models(tmp_path: Path) -> None:
    _folder(tmp_path, "a")
    _folder(tmp_path, "b")
    repository = ModelRepository.load(tmp_path, threads=1, only=frozenset({"b"}))
    try:
        assert [model.config.name for model in repository] == ["b"]
        with pytest.raises(ModelNotFound):
            repository.get("a")
    finally:
        repository.close()


def test_root_must_be_a_folder(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError):
        ModelRepository.load(tmp_path / "missing")


# ---------------------------------------------------------------- engine


@pytest.fixture(scope="module")
def repository() -> Iterator[ModelRepository]:
    repo = ModelRepository.load(BUNDLED, threads=1, only=frozenset({"digits"}))
    assert "digits" in repo, repo.unavailable
    yield repo
    repo.close()


@pytest.fixture
def engine(repository: ModelRepository) -> Iterator[InferenceEngine]:
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield InferenceEngine(repository, executor)


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(DIGITS_ONNX), providers=["CPUExecutionProvider"])


def _images(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 1, 8, 8), dtype=np.float32)


@pytest.mark.parametrize(("batch", "seed"), [(1, 0), (7, 1), (256, 2)])
async def test_engine_matches_onnxruntime(
    engine: InferenceEngine, session: ort.InferenceSession, batch: int, seed: int
) -> None:
    images = _images(batch, seed)
    config, outputs = await engine.infer("digits", [Tensor.of("image", images)])
    assert config.name == "digits"
    (logits,) = outputs
    assert logits.name == "logits"
    assert logits.datatype == "FP32"
    assert logits.shape == [batch, 10]
    (expected,) = session.run(["logits"], {"image": images})
    np.testing.assert_allclose(logits.data, expected, rtol=0, atol=1e-5)


async def test_engine_returns_the_requested_outputs(engine: InferenceEngine, session: ort.InferenceSession) -> None:
    images = _images(3, 5)
    _, outputs = await engine.infer("digits", [Tensor.of("image", images)], outputs=["logits"])
    assert [tensor.name for tensor in outputs] == ["logits"]
    np.testing.assert_allclose(outputs[0].data, session.run(["logits"], {"image": images})[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("inputs", "outputs"),
    [
        ([Tensor.of("image", _images(2, 0).astype(np.float64))], None),  # wrong datatype
        ([Tensor.of("image", np.zeros((2, 8, 8), dtype=np.float32))], None),  # wrong rank
        ([Tensor.of("image", np.zeros((2, 1, 8, 7), dtype=np.float32))], None),  # wrong dimension
        ([Tensor.of("image", np.zeros((1, 3, 8, 8), dtype=np.float32))], None),  # wrong channel
        ([], None),  # missing input
        ([Tensor.of("image", _images(1, 0)), Tensor.of("extra", _images(1, 0))], None),  # unknown input
        ([Tensor.of("pixels", _images(1, 0))], None),  # wrong name
        ([Tensor.of("image", _images(1, 0))], ["probabilities"]),  # unknown output
        ([Tensor.of("image", _images(257, 0))], None),  # over max_batch_size 256
    ],
    ids=[
        "datatype",
        "rank",
        "dimension",
        "channel",
        "missing",
        "unknown-input",
        "wrong-name",
        "unknown-output",
        "batch-too-big",
    ],
)
async def test_engine_refuses_bad_requests(
    engine: InferenceEngine, inputs: list[Tensor], outputs: list[str] | None
) -> None:
    with pytest.raises(InvalidInput):
        await engine.infer("digits", inputs, outputs)


async def test_engine_unknown_model_is_not_found(engine: InferenceEngine) -> None:
    with pytest.raises(ModelNotFound):
        await engine.infer("nope", [Tensor.of("image", _images(1, 0))])
