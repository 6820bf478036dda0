"""schemathesis over the gateway's OpenAPI, authenticated: no 5xx but 503/504 for any generated input."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.chaos.apifuzz import fuzz_api
from bench.chaos.cluster import Cluster
from bench.chaos.scenarios import FAULTY, HEALTHY

pytestmark = pytest.mark.timeout(240)


def test_schemathesis_finds_no_server_error(cluster: Cluster, figures_log: dict[str, Any]) -> None:
    gateway = cluster.start_gateway([cluster.nodes[HEALTHY].url, cluster.nodes[FAULTY].url])
    try:
        cluster.wait_serving(gateway, {HEALTHY, FAULTY})
        report = fuzz_api(gateway.url, headers=cluster.auth, max_examples=2)
    finally:
        log = cluster.stop_gateway(gateway)
    figures_log["schemathesis"] = report
    assert report["operations"] >= 5
    assert report["cases"] >= 2 * report["operations"]
    # The token works: most generated requests get past auth.
    assert report["statuses"].get("401", 0) < report["cases"] / 2, report["statuses"]
    assert report["server_errors"] == 0, json.dumps(report["server_error_samples"], indent=1) + f"\nexit {log}"
