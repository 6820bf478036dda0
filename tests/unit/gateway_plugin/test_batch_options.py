"""What one batch request may ask of the cluster: its concurrency is bounded by the operator."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from gateway_plugin.api.batch import BatchRequest, _options
from gateway_plugin.dispatch import InferenceCall
from gateway_plugin.settings import OrchestrationSettings, Settings


def _svc(batch_concurrency: int) -> Any:
    settings = Settings(orchestration=OrchestrationSettings(batch_concurrency=batch_concurrency))
    return SimpleNamespace(settings=settings, pool=SimpleNamespace(candidates=lambda model: ["a", "b"]))


@pytest.mark.parametrize(("asked", "allowed"), [(None, 4), (2, 2), (4, 4), (1024, 4)])
def test_a_client_may_ask_for_less_concurrency_never_more(asked: int | None, allowed: int) -> None:
    """Regression: `max_concurrency` 1,024 overrode DISTINFER_BATCH_CONCURRENCY=4 (one request, counted
    once by admission control, fanned out to 1,000 node calls at once)."""
    body = BatchRequest.model_validate(
        {"requests": [{"model": "m", "inputs": [1.0]}], **({"max_concurrency": asked} if asked else {})}
    )
    items: list[Any] = [InferenceCall("m", [], "r", 1.0)]
    options = _options(_svc(4), body, items)
    assert options["max_concurrency"] == allowed
    assert options["spread"] <= allowed
