"""What a node advertises about itself in `GET /v2` (`labels`), for the gateway's `capability` strategy.

Measured: `device` (`cuda` when ONNX Runtime can use a GPU here, else `cpu`), `memory_mb`, `cpus`;
`capacity` is the number of model worker threads. Operators add or override any with
`distinfer node --label key=value`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

__all__ = ["detect_labels", "parse_label"]


def _memory_mb() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024))
    except (ValueError, OSError, AttributeError):
        return None


def _device() -> str:
    import onnxruntime as ort  # imported here: only a node calls this, and it has loaded it already

    return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"


def detect_labels(*, workers: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    labels = {"device": _device(), "cpus": str(cpus), "capacity": str(workers)}
    memory = _memory_mb()
    if memory is not None:
        labels["memory_mb"] = str(memory)
    return {**labels, **(extra or {})}


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"label must be key=value, not {text!r}")
    return key.strip(), value.strip()
