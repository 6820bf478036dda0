"""Before measuring: every case answers one request, and its logits must be the model's.

The reference is the model run here with ONNX Runtime, so a peer that answers 200 with another
model, a wrong shape or a lossy encoding is caught before any figure is taken.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort

from bench.peers.measure import Case
from worker.protocol import HEADER_LENGTH, Limits, decode_response

__all__ = ["preflight", "reference_logits", "sample_image"]


def sample_image() -> np.ndarray[Any, Any]:
    """The first demo digit, [1,1,8,8] FP32: the image inside `request_bodies()`."""
    samples = json.loads(resources.files("gateway_plugin").joinpath("demo_digits.json").read_text("utf-8"))
    return np.asarray(samples["samples"][0]["image"], dtype=np.float32).reshape(1, 1, 8, 8)


def reference_logits(model_path: Path, image: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The model's answer computed here, in-process: what every server must return."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: image})[0])


def _post(client: httpx.Client, case: Case, wait_s: float) -> httpx.Response:
    """One request; a 5xx or a refused connection is retried until `wait_s` (a gateway may still be probing)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            response = client.post(case.url, content=case.body.data, headers=case.body.headers)
        except httpx.TransportError:
            if time.monotonic() >= deadline:
                raise
        else:
            if response.status_code < 500 or time.monotonic() >= deadline:
                return response
        time.sleep(0.2)


def preflight(
    cases: Sequence[Case], expected: np.ndarray[Any, Any], wait_s: float = 30.0
) -> tuple[list[Case], dict[str, Any], list[str]]:
    """Check every case's answer against `expected`; returns the usable cases, a report and errors."""
    report: dict[str, Any] = {}
    errors: list[str] = []
    usable: list[Case] = []
    with httpx.Client(timeout=10.0) as client:
        for case in cases:
            where = f"{case.target} {case.encoding}"
            try:
                response = _post(client, case, wait_s)
            except httpx.HTTPError as exc:
                errors.append(f"{where}: {type(exc).__name__}: {exc}")
                continue
            entry: dict[str, Any] = {"status": response.status_code, "bytes": len(response.content)}
            entry["content_type"] = response.headers.get("content-type")
            report.setdefault(case.target, {})[case.encoding] = entry
            if response.status_code != 200:
                errors.append(f"{where}: HTTP {response.status_code} {response.text[:300]!r}")
                continue
            length = response.headers.get(HEADER_LENGTH)
            try:
                decoded = decode_response(response.content, int(length) if length else None, Limits())
                logits = np.asarray(decoded.outputs[0].data, dtype=np.float32).reshape(expected.shape)
            except (ValueError, IndexError) as exc:
                errors.append(f"{where}: undecodable answer: {exc}")
                continue
            entry["digit"] = int(np.argmax(logits))
            entry["max_abs_diff"] = float(np.max(np.abs(logits - expected)))
            if not np.allclose(logits, expected, rtol=1e-4, atol=1e-3):
                errors.append(f"{where}: logits differ from the model's by up to {entry['max_abs_diff']:.3g}")
                continue
            usable.append(case)
    return usable, report, errors
