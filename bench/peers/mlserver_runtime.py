"""An MLServer inference runtime for an ONNX model: runs inside MLServer's own venv, never imported here.

MLServer ships no ONNX runtime, so the bench copies this file beside the generated
`model-settings.json` (MLServer puts that folder on `sys.path` and imports `implementation`
from it). It is the runtime a user would write from MLServer's custom-runtime guide: decode each
input with `NumpyCodec`, one `InferenceSession.run`, encode each output with `NumpyCodec`.
ONNX Runtime options match a distinfer node started with `--threads N`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
from mlserver import MLModel  # type: ignore[import-not-found]
from mlserver.codecs import NumpyCodec  # type: ignore[import-not-found]
from mlserver.types import InferenceRequest, InferenceResponse  # type: ignore[import-not-found]

__all__ = ["OnnxModel"]


class OnnxModel(MLModel):  # type: ignore[misc]
    """`parameters.uri` is the .onnx file; `parameters.extra.threads` the intra-op thread count."""

    async def load(self) -> bool:
        parameters = self._settings.parameters
        extra: dict[str, Any] = dict(parameters.extra or {})
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(extra.get("threads", 1))
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(parameters.uri, sess_options=options, providers=["CPUExecutionProvider"])
        self._output_names = [output.name for output in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {item.name: NumpyCodec.decode_input(item) for item in payload.inputs}
        results: list[np.ndarray[Any, Any]] = self._session.run(self._output_names, feeds)
        outputs = [
            NumpyCodec.encode_output(name, value) for name, value in zip(self._output_names, results, strict=True)
        ]
        return InferenceResponse(model_name=self.name, model_version=self.version, id=payload.id, outputs=outputs)
