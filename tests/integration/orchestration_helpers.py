"""Helpers for the batch/parallel/pipeline/task tests: a slow model on its own node, real digits, polling."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import numpy as np
import pytest

from gateway_plugin.processes import ServerProcess, start_node
from tests.integration.one_op_model import write_one_op_model
from tests.integration.polling import eventually
from worker.bundled import bundled_models

__all__ = ["SLOW_MODEL", "SOFTMAX_MODEL", "digits_dataset", "eventually", "set_latency", "slow_node_fixture"]

SLOW_MODEL = "slow_digits"  # the digits network, served only by the slow node
SOFTMAX_MODEL = "softmax"  # logits [-1, 10] -> probabilities [-1, 10]: a stage that consumes digits' output
T = TypeVar("T")


def _slow_repository(root: Path, extra: tuple[str, ...] = ()) -> Path:
    for name in extra:  # bundled models served as they are (slowed down too)
        shutil.copytree(bundled_models() / name, root / name)
    target = root / SLOW_MODEL
    shutil.copytree(bundled_models() / "digits", target)
    config = json.loads((target / "config.json").read_text())
    config["name"] = SLOW_MODEL
    (target / "config.json").write_text(json.dumps(config))
    _softmax_model(root / SOFTMAX_MODEL)
    return root


def _softmax_model(folder: Path) -> None:
    """A one-op ONNX graph, built here so that a pipeline has a real model that reads logits."""
    write_one_op_model(
        folder,
        name=SOFTMAX_MODEL,
        op="Softmax",
        tensors=("logits", "probabilities"),
        datatype="FP32",
        shape=[-1, 10],
        max_batch_size=256,
        axis=1,
    )


def slow_node_fixture(
    tmp_path_factory: pytest.TempPathFactory, latency_ms: int = 300, extra: tuple[str, ...] = ()
) -> Iterator[ServerProcess]:
    """A node serving only `slow_digits` and `softmax` (and the bundled `extra`), every inference
    delayed, token streams' first token too (see `set_latency`)."""
    repository = _slow_repository(tmp_path_factory.mktemp("slow-repo"), extra)
    args = ["--fault-latency-ms", str(latency_ms), "--fault-control", "--workers", "4"]
    node = start_node(repository, "slow-node", extra_args=args)
    try:
        node.wait_ready(timeout_s=120)
        yield node
    finally:
        node.stop()


def set_latency(node: ServerProcess, latency_ms: float) -> None:
    response = httpx.put(f"{node.url}/v2/faults", json={"latency_ms": latency_ms}, timeout=5)
    response.raise_for_status()


def digits_dataset() -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 digits that ship inside scikit-learn, scaled as the bundled models were trained."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16.0).astype(np.float32)[:, None, :, :], data.target
