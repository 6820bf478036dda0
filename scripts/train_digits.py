"""Train the bundled demo models: a small CNN on scikit-learn's 8x8 digits (no downloads).

Writes a KServe-v2-style model repository (default ``worker/bundled_models/``)::

    digits/model.onnx              primary model, runtime "onnx"
    digits_torchscript/model.pt    same weights, runtime "torchscript"
    digits_export/model.pt2        same weights, runtime "torch_export"
    digits_{a,b,c}/model.onnx      differently trained variants, so ensembles can disagree

Every exported file is checked against the eager model before the script succeeds.
Reruns are deterministic: fixed seeds, one CPU thread, fixed split.

    python scripts/train_digits.py [--out DIR] [--metrics FILE] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "worker" / "bundled_models"
DEFAULT_METRICS = REPO_ROOT / "scripts" / "digits_metrics.json"
DEMO_SAMPLES = REPO_ROOT / "gateway_plugin" / "demo_digits.json"
TOLERANCE = 1e-5
MAX_BATCH = 4096


@dataclass(frozen=True)
class Recipe:
    """How one set of weights is trained; variants differ so their errors differ."""

    seed: int
    hidden: int
    epochs: int
    lr: float = 1e-3


# Primary weights feed the onnx, torchscript and torch_export folders; variants are ONNX only.
PRIMARY = Recipe(seed=0, hidden=64, epochs=30)
VARIANTS: dict[str, Recipe] = {
    "digits_a": Recipe(seed=1, hidden=64, epochs=30),
    "digits_b": Recipe(seed=2, hidden=32, epochs=20),
    "digits_c": Recipe(seed=3, hidden=128, epochs=12),
}
PRIMARY_NAMES = ("digits", "digits_torchscript", "digits_export")


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed stratified split; tests/unit/worker/test_bundled_models.py repeats it."""
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return x_tr, x_te, y_tr, y_te


def build_model(hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def train(recipe: Recipe, x: np.ndarray, y: np.ndarray, batch_size: int = 64) -> nn.Module:
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)
    model = build_model(recipe.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    # A dedicated generator keeps the shuffle order independent of anything else drawing randoms.
    gen = torch.Generator().manual_seed(recipe.seed)
    model.train()
    for _ in range(recipe.epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(batch_size):
            optimizer.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            optimizer.step()
    return model.eval()


def eager_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def export_onnx(model: nn.Module, path: Path, example: torch.Tensor) -> None:
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,  # the dynamo exporter needs onnxscript, which is not a dependency
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
    )


def export_torchscript(model: nn.Module, path: Path, example: torch.Tensor) -> None:
    torch.jit.save(torch.jit.trace(model, (example,)), str(path))


def export_program(model: nn.Module, path: Path, example: torch.Tensor) -> None:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": x})[0]


def run_torchscript(path: Path, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.jit.load(str(path)).eval()(torch.from_numpy(x)).numpy()


def run_program(path: Path, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.export.load(str(path)).module()(torch.from_numpy(x)).numpy()


EXPORTERS = {"onnx": export_onnx, "torchscript": export_torchscript, "torch_export": export_program}
RUNNERS = {"onnx": run_onnx, "torchscript": run_torchscript, "torch_export": run_program}
WEIGHTS = {"onnx": "model.onnx", "torchscript": "model.pt", "torch_export": "model.pt2"}
RUNTIMES = {"digits_torchscript": "torchscript", "digits_export": "torch_export"}


def config_for(name: str, runtime: str) -> dict[str, object]:
    return {
        "name": name,
        "version": "1",
        "runtime": runtime,
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
        "max_batch_size": 256,
        "labels": [str(digit) for digit in range(10)],
    }


def publish(name: str, model: nn.Module, out: Path, x_te: np.ndarray, y_te: np.ndarray) -> dict[str, float]:
    """Export one model folder, then prove the file matches the eager model; returns its metrics."""
    runtime = RUNTIMES.get(name, "onnx")
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS[runtime]
    # An example batch above 1 keeps exporters from specialising the batch dimension to 1.
    EXPORTERS[runtime](model, weights, torch.from_numpy(x_te[:8]))
    config = json.dumps(config_for(name, runtime), indent=2) + "\n"
    (folder / "config.json").write_text(config, encoding="utf-8")

    expected = eager_logits(model, x_te)
    got = RUNNERS[runtime](weights, x_te)
    worst = float(np.max(np.abs(got - expected)))
    if got.shape != expected.shape or worst > TOLERANCE:
        raise SystemExit(f"{name}: {runtime} output differs from eager by {worst:.3g} (> {TOLERANCE})")
    accuracy = float(np.mean(got.argmax(axis=1) == y_te))
    size = weights.stat().st_size
    print(f"{name:<20} {runtime:<13} acc={accuracy:.4f} bytes={size:>7} max|diff|={worst:.2g}")
    return {"test_accuracy": accuracy, "bytes": size}


def parse_args() -> argparse.Namespace:
    names = [*PRIMARY_NAMES, *VARIANTS]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model repository directory")
    parser.add_argument("--metrics", type=Path, default=DEFAULT_METRICS, help="metrics JSON to write")
    parser.add_argument("--only", action="append", choices=names, help="build only these models")
    args = parser.parse_args()
    args.only = args.only or names
    return args


def main() -> None:
    args = parse_args()
    # torch's legacy ONNX exporter and jit announce their own deprecation; nothing to act on here.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(1)  # one thread: reproducible float sums, and fast enough for 8x8 images
    x_tr, x_te, y_tr, y_te = load_split()

    metrics: dict[str, dict[str, float]] = {}
    if any(name in args.only for name in PRIMARY_NAMES):
        primary = train(PRIMARY, x_tr, y_tr)
        for name in PRIMARY_NAMES:
            if name in args.only:
                metrics[name] = publish(name, primary, args.out, x_te, y_te)
    for name, recipe in VARIANTS.items():
        if name in args.only:
            metrics[name] = publish(name, train(recipe, x_tr, y_tr), args.out, x_te, y_te)

    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    write_demo_samples(x_te, y_te)


def write_demo_samples(x_te: np.ndarray, y_te: np.ndarray, count: int = 32) -> None:
    """Held-out images for `distinfer demo`, so the demo needs neither training nor scikit-learn."""
    samples = [
        {"label": int(label), "image": np.round(image.reshape(8, 8), 4).tolist()}
        for image, label in zip(x_te[:count], y_te[:count], strict=True)
    ]
    DEMO_SAMPLES.write_text(json.dumps({"samples": samples}) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
