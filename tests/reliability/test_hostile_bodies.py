"""Oversized (1 GiB) and deeply nested bodies: a 4xx, early, in bounded memory, and the server lives on."""

from __future__ import annotations

from typing import Any

import pytest

from bench.chaos.cluster import Cluster
from bench.chaos.run import check_bodies

pytestmark = pytest.mark.timeout(120)

NODE_MAX_BODY_MB = 64  # `distinfer node --max-body-bytes` default


def test_oversized_and_nested_bodies_are_refused_in_bounded_memory(
    cluster: Cluster, figures_log: dict[str, Any]
) -> None:
    report = check_bodies(cluster)
    figures_log["bodies"] = report
    for target, result in report.items():
        if not isinstance(result, dict):
            continue
        for attempt in result["oversized"]:
            assert attempt["status"] == 413, (target, attempt)
            # Refused long before 1 GiB went in: at most the cap plus socket buffers.
            assert attempt["sent_mb"] < NODE_MAX_BODY_MB + 32, (target, attempt)
        for body, status in result["nested"].items():
            assert status is not None, (target, body)
            assert 400 <= status < 500, (target, body, status)
        assert result["peak_rss_growth_mb"] < NODE_MAX_BODY_MB * 2 + 64, (target, result)
        assert result["alive"], target
    assert report["server_errors"] == 0
