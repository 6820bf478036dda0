"""Real processes for the reliability suite: two nodes shared by every test, figures kept as JSON.

The fault scenarios run their short versions here (`ChaosParams.short()`); `distinfer bench chaos`
runs the long ones. Every figure a test measured is written to bench-results/reliability-tests.json
at the end of the session, so a `make test` run leaves numbers behind too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.chaos.cluster import Cluster
from bench.chaos.scenarios import FAULTY, HEALTHY
from worker.bundled import bundled_models

RESULTS = Path(__file__).resolve().parents[2] / "bench-results" / "reliability-tests.json"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`chaos_long` tests run only with DISTINFER_CHAOS_LONG=1 (`distinfer bench chaos` runs them too)."""
    if os.environ.get("DISTINFER_CHAOS_LONG") == "1":
        return
    skip = pytest.mark.skip(reason="long chaos scenario: DISTINFER_CHAOS_LONG=1 or `distinfer bench chaos`")
    for item in items:
        if "chaos_long" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    with Cluster(bundled_models()).running() as running:
        running.start_nodes(HEALTHY, FAULTY)
        yield running


@pytest.fixture(scope="session")
def figures_log() -> Iterator[dict[str, Any]]:
    found: dict[str, Any] = {}
    yield found
    if found:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(found, indent=2, default=str) + "\n", encoding="utf-8")
