"""A minimal OTLP/HTTP trace receiver for benchmarks: accepts `POST /v1/traces`, counts spans, answers 200.

So that a gateway measured "with tracing on" really records and exports every span (an SDK
provider with a batch processor and the OTLP exporter), without a collector on the machine.

    python -m bench.otlp_sink --port 4318        # GET /stats -> {"exports": n, "spans": m}
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

__all__ = ["create_app", "main"]

_COUNTS = web.AppKey("counts", dict[str, int])


async def _export(request: web.Request) -> web.Response:
    export = ExportTraceServiceRequest()
    export.ParseFromString(await request.read())
    counts = request.app[_COUNTS]
    counts["exports"] += 1
    counts["spans"] += sum(len(scope.spans) for spans in export.resource_spans for scope in spans.scope_spans)
    body = ExportTraceServiceResponse().SerializeToString()
    return web.Response(body=body, content_type="application/x-protobuf")


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[_COUNTS])


def create_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[_COUNTS] = {"exports": 0, "spans": 0}
    app.router.add_post("/v1/traces", _export)
    app.router.add_get("/stats", _stats)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.otlp_sink", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    web.run_app(create_app(), host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
