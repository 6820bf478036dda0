"""`served_headers`: the routing headers of answers made of many calls (CONTRACT §4)."""

from __future__ import annotations

from starlette.responses import Response

from gateway_plugin.api.served import node_header, not_served, served_headers
from gateway_plugin.errors import NoCapacity, TooManyRequests


def test_every_node_and_mode_that_served_a_call_is_listed_once_in_order() -> None:
    responses = [
        {"node_id": "node-b", "mode": "distributed"},
        None,  # a failed item
        {"node_id": "node-a", "mode": "distributed"},
        {"node_id": "node-b", "mode": "distributed"},
        {"node_id": None, "mode": "local"},
    ]
    assert served_headers("r-1", responses) == {
        "X-Request-ID": "r-1",
        "X-Inference-Node": "node-b, node-a, local",
        "X-Inference-Mode": "distributed, local",
    }


def test_an_answer_no_call_served_says_none() -> None:
    headers = served_headers("r-2", [None, None])
    assert (headers["X-Inference-Node"], headers["X-Inference-Mode"]) == ("none", "none")


def test_a_failed_call_keeps_its_own_headers_and_says_none() -> None:
    busy = not_served(TooManyRequests("full", retry_after_s=3))
    assert busy.headers == {"Retry-After": "3", "X-Inference-Node": "none", "X-Inference-Mode": "none"}
    assert not_served(NoCapacity("down")).headers["X-Inference-Node"] == "none"


def test_node_ids_that_a_header_cannot_carry_as_they_are_are_percent_encoded() -> None:
    """Regression (review): a node id outside Latin-1 made a finished batch a 500 while sending its headers."""
    assert node_header("nœud-1") == "n%C5%93ud-1"
    assert node_header("a, b") == "a%2C%20b"  # a comma would split the list
    assert node_header("node-a>node-b+node-c") == "node-a>node-b+node-c"  # a sharded model's chain
    assert node_header("10.0.0.7:8001") == "10.0.0.7:8001"
    assert node_header(None) == "local"
    headers = served_headers(
        "r-3", [{"node_id": "nœud-1", "mode": "distributed"}, {"node_id": "a, b", "mode": "distributed"}]
    )
    assert headers["X-Inference-Node"] == "n%C5%93ud-1, a%2C%20b"
    assert Response(b"{}", headers=headers).headers["X-Inference-Node"] == "n%C5%93ud-1, a%2C%20b"
