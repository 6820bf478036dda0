"""Ray Serve serving an ONNX model behind the v2 JSON infer path: runs inside Ray's own venv, never imported here.

`python ray_app.py --port P --model-path M --replicas N` starts a local Ray cluster
(`num_cpus=N`, no dashboard, usage stats off, a private temp dir), deploys one Serve
application of N replicas, each holding its own ONNX Runtime session (`--threads` intra-op
threads), behind Serve's HTTP proxy on 127.0.0.1:P, prints `READY`, and on SIGTERM/SIGINT shuts
Serve and Ray down. The replica answers `POST /v2/models/<name>/infer` with a v2 JSON response
and `GET /v2/health/ready` with 200: the same request body and path shape a distinfer node takes.
It is written the way Ray's docs write a model deployment: a class with `__call__(request)`.
"""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

import numpy as np
import onnxruntime as ort
import ray  # type: ignore[import-not-found]
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = ["OnnxDeployment", "main"]

_DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
_DATATYPES = {np.dtype(dtype): name for name, dtype in _DTYPES.items()}


class OnnxDeployment:
    """One replica: an ONNX Runtime session and a tiny v2 JSON front."""

    def __init__(self, model_name: str, model_path: str, threads: int) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
        self._outputs = [output.name for output in self._session.get_outputs()]
        self._name = model_name
        self._infer_path = f"/v2/models/{model_name}/infer"

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        if request.method == "GET" and path in ("/v2/health/ready", "/v2/health/live"):
            return Response(status_code=200)
        if request.method != "POST" or path != self._infer_path:
            return JSONResponse({"error": f"no route {request.method} {path}"}, status_code=404)
        try:
            body = await request.json()
            feeds = {
                item["name"]: np.asarray(item["data"], dtype=_DTYPES[item["datatype"]]).reshape(item["shape"])
                for item in body["inputs"]
            }
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"bad request: {exc}"}, status_code=400)
        results: list[np.ndarray[Any, Any]] = self._session.run(self._outputs, feeds)
        outputs = [
            {
                "name": name,
                "datatype": _DATATYPES[value.dtype],
                "shape": list(value.shape),
                "data": value.ravel().tolist(),
            }
            for name, value in zip(self._outputs, results, strict=True)
        ]
        return JSONResponse({"model_name": self._name, "model_version": "1", "outputs": outputs})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-name", default="digits")
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--num-cpus", type=int, default=None, help="Ray cluster CPUs (default: --replicas)")
    parser.add_argument("--max-ongoing-requests", type=int, default=None, help="per replica (default: Serve's)")
    parser.add_argument("--temp-dir", required=True, help="Ray's session folder (keep the path short)")
    args = parser.parse_args()

    stop = threading.Event()
    ray.init(
        num_cpus=args.num_cpus or args.replicas,
        include_dashboard=False,
        _temp_dir=args.temp_dir,
        object_store_memory=100 * 1024 * 1024,
        log_to_driver=False,
    )
    try:
        # Access logs off, as for the distinfer processes it is measured against (log level warning).
        logging = serve.schema.LoggingConfig(enable_access_log=False, log_level="WARNING")
        serve.start(http_options={"host": args.host, "port": args.port}, logging_config=logging)
        options: dict[str, Any] = {"num_replicas": args.replicas, "ray_actor_options": {"num_cpus": 1}}
        if args.max_ongoing_requests:
            options["max_ongoing_requests"] = args.max_ongoing_requests
        deployment = serve.deployment(OnnxDeployment, name=f"{args.model_name}-onnx").options(**options)
        app = deployment.bind(args.model_name, args.model_path, args.threads)
        serve.run(app, name=args.model_name, route_prefix="/", blocking=False, logging_config=logging)
        # after ray.init: Ray's driver installs its own SIGTERM handler, which aborts instead of shutting down
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        print("READY", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
