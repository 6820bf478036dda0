"""`distinfer bench batch`: its parameters, its request body and the efficiency figure."""

from __future__ import annotations

import json

import pytest

from bench.batch_cli import add_batch_parser
from bench.scenarios.batch import BatchParams, batch_body, efficiency


def test_params_defaults_quick_and_limits() -> None:
    assert BatchParams.make() == BatchParams(images=1000, nodes=(1, 2, 4), rounds=3)
    quick = BatchParams.make(quick=True, nodes=(2, 1, 2))
    assert (quick.images, quick.rounds, quick.nodes) == (200, 1, (1, 2))
    with pytest.raises(ValueError, match="images"):
        BatchParams.make(images=5000)
    with pytest.raises(ValueError, match="node counts"):
        BatchParams.make(nodes=(0,))


def test_body_has_distinct_images_and_the_mode() -> None:
    body = json.loads(batch_body(50, coalesce=False, max_concurrency=8))
    assert (body["coalesce"], body["max_concurrency"], len(body["requests"])) == (False, 8, 50)
    images = {json.dumps(r["inputs"]) for r in body["requests"]}
    assert len(images) == 50
    assert all(len(r["inputs"]) == 8 and len(r["inputs"][0]) == 8 for r in body["requests"])
    assert batch_body(50, coalesce=False, max_concurrency=8) == batch_body(50, coalesce=False, max_concurrency=8)


def test_efficiency_is_throughput_over_nodes_times_single() -> None:
    assert efficiency(300.0, 2, 200.0) == 0.75
    assert efficiency(None, 2, 200.0) is None
    assert efficiency(300.0, 2, None) is None


def test_cli_parses_node_counts() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_batch_parser(parser.add_subparsers(dest="scenario"))
    args = parser.parse_args(["batch", "--nodes", "1,4", "--rounds", "2"])
    assert (args.nodes, args.rounds) == ((1, 4), 2)
    with pytest.raises(SystemExit):
        parser.parse_args(["batch", "--nodes", "0,x"])
