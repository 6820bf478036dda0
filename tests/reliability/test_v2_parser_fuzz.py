"""A fuzz of the v2 binary tensor parser: broken messages are refused as bad input, never anything else."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from bench.chaos.cluster import PREFIX, Cluster
from bench.chaos.parserfuzz import Mutation, check_body, mutated_bodies, run_parser_fuzz
from bench.chaos.scenarios import HEALTHY


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_bodies())
def test_the_parser_refuses_broken_messages_only_as_bad_input(mutation: Mutation) -> None:
    body, header_length = mutation
    assert check_body(body, header_length) is None


def test_check_body_reports_what_escapes_the_parser() -> None:
    # The harness must be able to fail: a body the parser accepts passes, and nothing else is hidden.
    assert check_body(b'{"inputs": []}', None) is None
    assert check_body(b"\xff\xfe", "1") is None  # refused as bad input


@pytest.mark.timeout(120)
def test_fuzzed_bodies_get_no_server_error_from_node_or_gateway(cluster: Cluster, figures_log: dict[str, Any]) -> None:
    node = cluster.nodes[HEALTHY]
    gateway = cluster.start_gateway([node.url])
    try:
        cluster.wait_serving(gateway, {HEALTHY})
        urls = [f"{node.url}/v2/models/digits/infer", f"{gateway.url}{PREFIX}/v2/models/digits/infer"]
        report = run_parser_fuzz(120, targets=urls, headers=cluster.auth, http_every=2)
    finally:
        cluster.stop_gateway(gateway)
    figures_log["parser_fuzz"] = report
    assert report["http_cases"] == 120
    assert report["parser_escapes"] == 0, report["parser_escape_samples"]
    assert report["server_errors"] == 0, report["server_error_samples"]
