"""Tracing from the standard OTEL_* variables: nothing exported unless an exporter is configured."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.trace import NoOpTracerProvider

from worker.tracing import TracingConfigError, exporters_from_env, tracer_provider_from_env


def test_no_endpoint_means_no_sdk_and_no_export() -> None:
    assert isinstance(tracer_provider_from_env("svc", {}), NoOpTracerProvider)
    assert exporters_from_env({"OTEL_TRACES_EXPORTER": "none"}) == []


def test_an_otlp_endpoint_turns_on_the_otlp_http_exporter() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    (exporter,) = exporters_from_env(env)
    assert isinstance(exporter, OTLPSpanExporter)
    provider = tracer_provider_from_env("distinfer-node", env)
    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes["service.name"] == "distinfer-node"
    provider.shutdown()


def test_service_name_from_the_environment_wins() -> None:
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "mine"}
    provider = tracer_provider_from_env("distinfer-node", env)
    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes["service.name"] != "distinfer-node"
    provider.shutdown()


def test_exporter_lists_and_the_kill_switch() -> None:
    env = {"OTEL_TRACES_EXPORTER": "console,none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}
    assert [type(e) for e in exporters_from_env(env)] == [ConsoleSpanExporter]
    assert exporters_from_env({**env, "OTEL_SDK_DISABLED": "true"}) == []


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "jaeger"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"},
    ],
)
def test_what_cannot_be_done_is_refused_loudly(env: dict[str, str]) -> None:
    with pytest.raises(TracingConfigError):
        exporters_from_env(env)
