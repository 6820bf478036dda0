"""`distinfer bench shard`'s summary: medians, ratios against one node, the verdict, latency per hop."""

from __future__ import annotations

from typing import Any

from bench.scenarios.shard import ONE_NODE, ShardBenchParams, _summarise, _targets

PARAMS = ShardBenchParams(rounds=2, concurrency=(1, 4))


def _runs(throughput: dict[str, float]) -> list[dict[str, Any]]:
    return [
        {
            "target": name,
            "concurrency": c,
            "round": r,
            "p50_ms": 10.0,
            "p99_ms": 20.0,
            "throughput": value * c,
            "errors": 0,
            "timeouts": 0,
        }
        for name, value in throughput.items()
        for c in (1, 4)
        for r in (1, 2)
    ]


def test_the_best_pipelined_target_is_compared_with_one_node() -> None:
    throughput = dict.fromkeys(_targets(PARAMS.micro_batch), 1.0)
    throughput[ONE_NODE] = 2.0  # 2 req/s at c=1, 8 at c=4: its best is 8
    throughput["2 stages node-to-node"] = 3.5  # 14 at c=4
    hops = [
        {"target": ONE_NODE, "p50_ms": 3.0},
        {"target": "2 stages relayed", "p50_ms": 4.5},
        {"target": "2 stages node-to-node", "p50_ms": 4.0},
    ]
    summary = _summarise(_runs(throughput), hops, PARAMS)
    assert summary["target"]["best"] == {"target": "2 stages node-to-node", "concurrency": 4, "ratio": 1.75}
    assert summary["target"]["met"] is True
    assert summary["results"]["4"][ONE_NODE]["x_one_node"] == 1.0
    assert summary["extra_latency_per_hop_ms"] == {"2 stages relayed": 1.5, "2 stages node-to-node": 1.0}


def test_below_the_target_is_not_met() -> None:
    throughput = dict.fromkeys(_targets(PARAMS.micro_batch), 1.5)
    throughput[ONE_NODE] = 1.0
    assert _summarise(_runs(throughput), [], PARAMS)["target"]["met"] is False
