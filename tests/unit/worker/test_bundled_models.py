"""The shipped demo models in worker/bundled_models, checked as shipped (no retraining).

The held-out split repeats the one in scripts/train_digits.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from worker.config import load_config

BUNDLED = Path(__file__).resolve().parents[3] / "worker" / "bundled_models"
FOLDERS = sorted(path for path in BUNDLED.iterdir() if path.is_dir()) if BUNDLED.is_dir() else []
EXPECTED = {"digits", "digits_torchscript", "digits_export", "digits_a", "digits_b", "digits_c"}
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def test_split() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    y = data.target.astype(np.int64)
    _, x_te, _, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return x_te, y_te


@pytest.fixture(scope="module")
def onnx_logits(test_split: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(BUNDLED / "digits" / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": test_split[0]})[0]


def test_every_expected_model_is_bundled() -> None:
    assert {folder.name for folder in FOLDERS} >= EXPECTED


def test_onnx_model_is_accurate_on_held_out_split(
    onnx_logits: np.ndarray, test_split: tuple[np.ndarray, np.ndarray]
) -> None:
    _, y_te = test_split
    assert onnx_logits.shape == (len(y_te), 10)
    assert onnx_logits.dtype == np.float32
    assert float(np.mean(onnx_logits.argmax(axis=1) == y_te)) >= 0.95


@pytest.mark.parametrize("folder", FOLDERS, ids=[folder.name for folder in FOLDERS])
def test_config_validates_and_names_its_folder(folder: Path) -> None:
    config = load_config(folder / "config.json")
    assert config.name == folder.name
    assert (folder / config.weights_file).is_file()
    # Only the weights and their config ship; anything else would be served or packaged by mistake.
    assert {path.name for path in folder.iterdir()} == {"config.json", config.weights_file}


@pytest.mark.torch
def test_torchscript_matches_onnx(onnx_logits: np.ndarray, test_split: tuple[np.ndarray, np.ndarray]) -> None:
    torch = pytest.importorskip("torch")
    module = torch.jit.load(str(BUNDLED / "digits_torchscript" / "model.pt")).eval()
    with torch.no_grad():
        got = module(torch.from_numpy(test_split[0])).numpy()
    np.testing.assert_allclose(got, onnx_logits, rtol=0, atol=TOLERANCE)


@pytest.mark.torch
def test_torch_export_matches_onnx(onnx_logits: np.ndarray, test_split: tuple[np.ndarray, np.ndarray]) -> None:
    torch = pytest.importorskip("torch")
    module = torch.export.load(str(BUNDLED / "digits_export" / "model.pt2")).module()
    x_te = torch.from_numpy(test_split[0])
    with torch.no_grad():
        got = module(x_te).numpy()
        single = module(x_te[:1]).numpy()  # the batch dimension is dynamic down to 1
    np.testing.assert_allclose(got, onnx_logits, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(single, onnx_logits[:1], rtol=0, atol=TOLERANCE)
