"""Node metrics: request outcomes, bounded model labels, runtime calls and queue waits from the batcher."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from worker.batching import BatchPolicy, DynamicBatcher
from worker.errors import InvalidInput
from worker.telemetry import NodeTelemetry


def _value(telemetry: NodeTelemetry, name: str, **labels: str) -> float:
    return telemetry.registry.get_sample_value(name, labels) or 0.0


def test_request_outcomes_and_unknown_models_are_bounded() -> None:
    telemetry = NodeTelemetry(node_id="n1")
    telemetry.serve(["digits"])
    with telemetry.request("digits", "r1"):
        pass
    with pytest.raises(InvalidInput), telemetry.request("digits", "r2"):
        raise InvalidInput("bad shape")
    with pytest.raises(RuntimeError), telemetry.request("made-up-model", "r3"):
        raise RuntimeError("boom")
    assert _value(telemetry, "distinfer_node_requests_total", model="digits", outcome="ok") == 1
    assert _value(telemetry, "distinfer_node_requests_total", model="digits", outcome="client_error") == 1
    assert _value(telemetry, "distinfer_node_requests_total", model="unknown", outcome="server_error") == 1
    assert _value(telemetry, "distinfer_node_requests_in_flight") == 0
    assert b"made-up-model" not in telemetry.exposition.render()[0]


async def test_batcher_reports_runtime_calls_rows_and_queue_waits_in_the_callers_trace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = NodeTelemetry(tracer_provider=provider)
    batchers: dict[str, DynamicBatcher] = {}
    telemetry.serve(["m"], lambda: {name: b.depth for name, b in batchers.items()})

    def run(feeds: dict[str, Any]) -> dict[str, Any]:
        return {"y": feeds["x"] * 2}

    with ThreadPoolExecutor(1) as executor:
        batcher = batchers["m"] = DynamicBatcher(
            run, executor, BatchPolicy(max_batch_size=8, max_queue_delay_s=0.05), telemetry.model("m")
        )
        task = asyncio.create_task(batcher.run())
        try:

            async def one(value: float) -> Any:
                with telemetry.request("m", None):
                    return await batcher.submit({"x": np.full((2, 1), value, np.float32)})

            results = await asyncio.gather(*(one(v) for v in (1.0, 2.0, 3.0)))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert [float(r["y"][0, 0]) for r in results] == [2.0, 4.0, 6.0]
    rows = _value(telemetry, "distinfer_node_batch_rows_sum", model="m")
    calls = _value(telemetry, "distinfer_node_batch_rows_count", model="m")
    assert rows == 6
    assert 1 <= calls < 3  # stacked: fewer runtime calls than requests
    assert _value(telemetry, "distinfer_node_inference_duration_seconds_count", model="m") == calls
    assert _value(telemetry, "distinfer_node_queue_wait_seconds_count", model="m") == 3
    assert _value(telemetry, "distinfer_node_queue_depth", model="m") == 0
    spans = exporter.get_finished_spans()
    waits = [s for s in spans if s.name == "queue wait"]
    infers = {s.context.span_id for s in spans if s.name == "infer"}
    assert len(waits) == 3
    assert all(s.parent is not None and s.parent.span_id in infers for s in waits)
    assert all(s.end_time >= s.start_time for s in waits)  # type: ignore[operator]


async def test_every_model_is_traced_and_only_health_and_metrics_are_not() -> None:
    """Regression (audit): the exclusion "/metrics" matched anywhere in the URL, so a model named
    `metrics_v2` was never traced."""
    import httpx
    from fastapi import FastAPI

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = FastAPI()

    @app.get("/{rest:path}")
    async def anything(rest: str) -> str:
        return rest

    NodeTelemetry(tracer_provider=provider).instrument(app)
    paths = ["/v2/models/metrics_v2/infer", "/v2/models/health/ready", "/metrics", "/v2/health/ready"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node") as client:
        for path in paths:
            assert (await client.get(path)).status_code == 200
    traced = {
        span.attributes.get("url.path") or span.attributes.get("http.target") for span in exporter.get_finished_spans()
    }
    assert traced == {"/v2/models/metrics_v2/infer", "/v2/models/health/ready"}
