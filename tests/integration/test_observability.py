"""Observability against real nodes: Prometheus counters that move, one trace across gateway and node,
request log lines, health, and `distinfer monitor --once` against a live gateway process."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from gateway_plugin import DistributedInference, Settings
from gateway_plugin.monitor import add_monitor_parser
from gateway_plugin.processes import ServerProcess, free_port, start_gateway, start_node
from gateway_plugin.settings import AuthSettings, BalancerSettings, CacheSettings
from gateway_plugin.telemetry.logs import JsonFormatter
from tests.integration.conftest import STARTUP_TIMEOUT_S, StartNodes, settings_for

PREFIX = "/api/v1/distributed"
IMAGE = [[0.5] * 8] * 8
TENSOR = [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}]


def _settings(nodes: list[str], **kwargs: object) -> Settings:
    return settings_for(nodes, auth=AuthSettings(disabled=True), **kwargs)  # type: ignore[arg-type]


@asynccontextmanager
async def _gateway(
    settings: Settings, **inject: object
) -> AsyncIterator[tuple[httpx.AsyncClient, DistributedInference]]:
    app = FastAPI()
    distributed = DistributedInference(settings=settings, **inject)  # type: ignore[arg-type]
    app.include_router(distributed.router)
    async with LifespanManager(app, startup_timeout=STARTUP_TIMEOUT_S) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client, distributed


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called `name`, by its sorted labels, from a scrape parsed by prometheus_client."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def _value(text: str, name: str, **labels: str) -> float:
    return sum(v for k, v in _samples(text, name).items() if set(labels.items()) <= set(k))


async def test_metrics_counters_move_with_the_requests_sent(two_nodes: list[ServerProcess]) -> None:
    async with _gateway(_settings([n.url for n in two_nodes])) as (client, _):
        before = (await client.get("/metrics")).text
        async with httpx.AsyncClient() as direct:
            node_before = {n.name: (await direct.get(f"{n.url}/metrics")).text for n in two_nodes}
        for _ in range(6):
            ok = await client.post(f"{PREFIX}/inference", json={"model": "digits", "inputs": IMAGE})
            assert ok.status_code == 200, ok.text
        missing = await client.post(f"{PREFIX}/inference", json={"model": "no-such-model-xyz", "inputs": TENSOR})
        assert missing.status_code in (404, 503)
        after = (await client.get("/metrics")).text
        async with httpx.AsyncClient() as direct:
            node_after = {n.name: (await direct.get(f"{n.url}/metrics")).text for n in two_nodes}

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert moved("distinfer_gateway_requests_total", model="digits", outcome="ok", mode="distributed") == 6
    # A model nobody has is counted, under a bounded label rather than its made-up name.
    assert moved("distinfer_gateway_requests_total", model="unknown") == 1
    assert "no-such-model-xyz" not in after
    assert moved("distinfer_gateway_attempts_total", outcome="ok") == 6
    assert moved("distinfer_gateway_http_request_duration_seconds_count", route=f"{PREFIX}/inference") == 7
    assert moved("distinfer_gateway_overhead_seconds_count", phase="before_upstream") == 6
    assert moved("distinfer_gateway_overhead_seconds_count", phase="after_upstream") == 6
    assert moved("distinfer_gateway_balancer_decisions_total") == 6
    assert _value(after, "distinfer_gateway_node_up") == 2
    # Each node counted what it served; together exactly the six the gateway sent.
    served = sum(
        _value(node_after[n.name], "distinfer_node_requests_total", model="digits", outcome="ok")
        - _value(node_before[n.name], "distinfer_node_requests_total", model="digits", outcome="ok")
        for n in two_nodes
    )
    assert served == 6
    runtime_calls = sum(
        _value(node_after[n.name], "distinfer_node_batch_rows_count", model="digits") for n in two_nodes
    )
    assert runtime_calls >= 6


async def test_a_breaker_trip_counts_as_an_ejection(start_nodes: StartNodes) -> None:
    """Regression (review): `node_ejections_total` counted nodes leaving `online` by probe only; a
    node the breaker ejected (status `error` in /nodes) never showed."""
    (failing,) = start_nodes("eject-me", extra_args=["--fault-error-rate", "1.0"])
    (healthy,) = start_nodes("stay")
    settings = _settings([failing.url, healthy.url], balancer=BalancerSettings(strategy="round_robin"))
    async with _gateway(settings) as (client, _):
        for _ in range(12):  # every request succeeds, on `stay`, once `eject-me` has failed it
            ok = await client.post(f"{PREFIX}/inference", json={"model": "digits", "inputs": IMAGE})
            assert ok.status_code == 200, ok.text
        nodes = (await client.get(f"{PREFIX}/nodes")).json()
        text = (await client.get("/metrics")).text
    assert {node["node_id"]: node["status"] for node in nodes}["eject-me"] == "error"
    assert _value(text, "distinfer_gateway_node_ejections_total", node="eject-me") >= 1
    assert _value(text, "distinfer_gateway_node_ejections_total", node="stay") == 0


async def test_metrics_path_is_outside_the_prefix_unauthenticated_and_configurable(
    two_nodes: list[ServerProcess],
) -> None:
    settings = settings_for([two_nodes[0].url])  # auth on: a token is needed under the prefix
    settings.telemetry.metrics_path = "/internal/prom"
    async with _gateway(settings) as (client, _):
        assert (await client.get(f"{PREFIX}/stats")).status_code == 401
        scrape = await client.get("/internal/prom")
        assert scrape.status_code == 200
        assert scrape.headers["content-type"].startswith("text/plain")
        assert (await client.get("/metrics")).status_code == 404


async def test_response_cache_misses_and_hits_are_counted_per_model(two_nodes: list[ServerProcess]) -> None:
    settings = _settings([n.url for n in two_nodes], cache=CacheSettings(models=["digits"]))
    body = {"model": "digits", "inputs": IMAGE}
    async with _gateway(settings) as (client, _):
        scrapes = [(await client.get("/metrics")).text]
        for sent in (body, body, {"model": "digits_a", "inputs": IMAGE}):  # miss, hit, a model not cached
            answer = await client.post(f"{PREFIX}/inference", json=sent)
            assert answer.status_code == 200, answer.text
            scrapes.append((await client.get("/metrics")).text)

    def counts(text: str) -> tuple[float, float]:
        hits = _samples(text, "distinfer_gateway_cache_hits_total")
        misses = _samples(text, "distinfer_gateway_cache_misses_total")
        assert set(hits) == set(misses) == {(("model", "digits"),)}  # only the cacheable model has series
        return hits[(("model", "digits"),)], misses[(("model", "digits"),)]

    assert [counts(text) for text in scrapes] == [(0, 0), (0, 1), (1, 1), (1, 1)]
    # Regression: an answer from the cache was no logical call at all (requests_total, /stats).
    requests = _samples(scrapes[-1], "distinfer_gateway_requests_total")
    by_mode = {dict(labels)["mode"]: value for labels, value in requests.items() if dict(labels)["model"] == "digits"}
    assert by_mode == {"distributed": 1, "cache": 1}


async def test_one_trace_spans_gateway_and_node_with_parent_links(repository: Path) -> None:
    received: list[ExportTraceServiceRequest] = []

    async def collect(request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        received.append(export)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    collector = web.Application()
    collector.router.add_post("/v1/traces", collect)
    runner = web.AppRunner(collector)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_SERVICE_NAME": "node-under-test",
    }
    node = start_node(repository, "node-t", extra_args=["--batching", "on"], env=env)
    try:
        await asyncio.to_thread(node.wait_ready)
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        async with _gateway(_settings([node.url]), tracer_provider=provider) as (client, _):
            response = await client.post(
                f"{PREFIX}/inference",
                json={"model": "digits", "inputs": IMAGE},
                headers={"traceparent": f"00-{caller_trace}-00f067aa0ba902b7-01"},
            )
        assert response.status_code == 200, response.text
        gateway = {span.name: span for span in exporter.get_finished_spans()}
        server, dispatch, attempt = gateway[f"POST {PREFIX}/inference"], gateway["dispatch"], gateway["node attempt"]
        assert {format(s.context.trace_id, "032x") for s in (server, dispatch, attempt)} == {caller_trace}
        assert _parent(server) == "00f067aa0ba902b7"  # the caller's span: incoming traceparent honoured
        assert _parent(dispatch) == _id(server)
        assert _parent(attempt) == _id(dispatch)
        assert attempt.attributes is not None
        assert attempt.attributes["distinfer.node.id"] == "node-t"
        assert attempt.attributes["distinfer.attempt"] == 1
        assert attempt.attributes["distinfer.outcome"] == "ok"

        deadline = time.monotonic() + 15
        # The node exports from its own process: poll what the collector has, with a deadline.
        while time.monotonic() < deadline and not {"infer", "queue wait"} <= set(_node_spans(received, caller_trace)):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        node_spans = _node_spans(received, caller_trace)  # the same trace id, in the node's own export
        assert {"infer", "queue wait"} <= set(node_spans), node_spans.keys()
        node_server = next(s for name, s in node_spans.items() if name.startswith("POST /v2/models"))
        assert node_server.kind == node_server.SPAN_KIND_SERVER
        assert node_server.parent_span_id.hex() == _id(attempt)  # the node continued the gateway's attempt
        assert node_spans["infer"].parent_span_id == node_server.span_id
        assert node_spans["queue wait"].parent_span_id == node_spans["infer"].span_id
    finally:
        await asyncio.to_thread(node.stop)
        await runner.cleanup()


def _id(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.span_id, "016x")


def _parent(span: ReadableSpan) -> str | None:
    return None if span.parent is None else format(span.parent.span_id, "016x")


def _node_spans(exports: list[ExportTraceServiceRequest], trace_id: str) -> dict[str, Any]:
    """The spans of one trace received over OTLP, by name."""
    return {
        span.name: span
        for export in exports
        for resource_spans in export.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
        if span.trace_id.hex() == trace_id
    }


async def test_one_json_log_line_per_request_without_tensor_data(
    two_nodes: list[ServerProcess], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="distinfer.requests")
    async with _gateway(_settings([two_nodes[0].url])) as (client, _):
        response = await client.post(
            f"{PREFIX}/inference",
            json={"model": "digits", "inputs": [[0.123456] * 8] * 8},
            headers={"X-Request-ID": "log-line-1", "traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"},
        )
        assert response.status_code == 200
        await client.get(f"{PREFIX}/health")  # polled endpoints are not logged
    lines = [JsonFormatter().format(r) for r in caplog.records if r.name == "distinfer.requests"]
    assert len(lines) == 1, lines
    line = json.loads(lines[0])
    assert line["request_id"] == "log-line-1"
    assert line["trace_id"] == "ab" * 16
    assert (line["model"], line["node"], line["mode"], line["attempts"]) == ("digits", "node-a", "distributed", 1)
    assert line["status"] == 200
    assert line["latency_ms"] > 0
    assert "0.123456" not in lines[0]  # never tensor data
    assert "logits" not in lines[0]


async def test_health_reports_liveness_and_readiness_apart() -> None:
    async with _gateway(_settings([])) as (client, _):
        health = await client.get(f"{PREFIX}/health")
        live = await client.get(f"{PREFIX}/health/live")
        ready = await client.get(f"{PREFIX}/health/ready")
    assert health.status_code == 200
    assert health.json()["live"] is True
    assert health.json()["ready"] is False
    assert live.status_code == 200
    assert ready.status_code == 503  # no node and no local fallback can serve


def _monitor(argv: list[str]) -> int:
    """`distinfer monitor ...` as the command runs it, in this process (stdout is not a terminal here)."""
    parser = argparse.ArgumentParser(prog="distinfer")
    add_monitor_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["monitor", *argv])
    return int(args.run(args))


def test_monitor_once_and_metrics_summed_over_gateway_processes(
    two_nodes: list[ServerProcess], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two gateway processes share PROMETHEUS_MULTIPROC_DIR (as gunicorn/uvicorn workers do)."""
    env = {
        "DISTINFER_NODES": ",".join(n.url for n in two_nodes),
        "DISTINFER_AUTH_DISABLED": "true",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    gateways = [start_gateway(env), start_gateway(env)]
    try:
        for gateway in gateways:
            gateway.wait_ready()
        for gateway, count in zip(gateways, (3, 2), strict=True):
            with httpx.Client(base_url=gateway.url, timeout=10) as client:
                for _ in range(count):
                    response = client.post(f"{PREFIX}/inference", json={"model": "digits", "inputs": IMAGE})
                    assert response.status_code == 200, response.text
        scrape = httpx.get(f"{gateways[1].url}/metrics", timeout=10).text
        assert _value(scrape, "distinfer_gateway_requests_total", model="digits", outcome="ok") == 5
        assert _value(scrape, "distinfer_gateway_node_up") == 2  # live view of the process scraped

        stats = httpx.get(f"{gateways[0].url}{PREFIX}/stats", timeout=10).json()
        latencies = sorted(row["latency_ms"] for row in stats["recent"])
        # the cluster-wide percentiles are over the same calls (nearest rank of 3: the middle, the last)
        assert stats["latency"] == {
            "samples": 3,
            "p50_ms": latencies[1],
            "p95_ms": latencies[2],
            "p99_ms": latencies[2],
        }
        assert _monitor(["--url", gateways[0].url, "--once"]) == 0
        out = capsys.readouterr().out
        p50 = f"p50 {latencies[1]:.1f}"
        for expected in ("throughput", "node-a", "node-b", "online", "recent requests", "requests 3", "digits", p50):
            assert expected in out, out
        assert "\x1b[" not in out  # plain text when not a terminal
    finally:
        for gateway in gateways:
            gateway.stop()


def test_monitor_once_says_why_it_cannot_read_stats(capsys: pytest.CaptureFixture[str]) -> None:
    assert _monitor(["--url", f"http://127.0.0.1:{free_port()}", "--once", "--timeout", "2"]) == 1
    assert "cannot reach" in capsys.readouterr().err
