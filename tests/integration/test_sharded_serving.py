"""A model too big for any node's memory cap, planned, split and served as a chain of real node processes.

`distinfer shard plan` and `split` run as commands; node-a holds stage 0 (and refuses the whole
model: over its cap), node-b and node-c each hold stage 1. The gateway plugin serves the sharded
model by name, relayed or node to node, whole requests or micro-batches; a stage node killed
mid-request costs one more attempt of that stage only.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from bench.shard_model import write_mlp
from gateway_plugin.cli import main
from gateway_plugin.processes import ServerProcess, free_port, start_node
from gateway_plugin.settings import BalancerSettings, CacheSettings, LimitSettings, ShardingSettings
from tests.integration.conftest import mounted, settings_for
from tests.integration.polling import until

INFER = "/api/v1/distributed/inference"
MODELS = "/api/v1/distributed/models"
TOLERANCE = 1e-5
CAP_MB = "7"  # the whole model is ~9.5 MB; each stage about half


@dataclass
class Cluster:
    repo: Path
    whole: ort.InferenceSession
    a: ServerProcess
    b: ServerProcess
    c: ServerProcess

    def reference(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.whole.run(["y"], {"x": x})[0])


def _distinfer(*args: str) -> str:
    """`distinfer ARGS` in this process (the same parser and code; a subprocess costs seconds of imports)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(args)) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("sharded")
    source = write_mlp(root / "src" / "mlp", width=1024, depth=4, inputs=256, outputs=16)
    repo = root / "repo"
    plan_text = _distinfer(
        "shard", "plan", "--model", str(source), "--capacities", f"{CAP_MB},{CAP_MB}", "--out", str(root / "plan.json")
    )
    assert "mlp: 2 stages" in plan_text
    _distinfer("shard", "split", "--model", str(source), "--plan", str(root / "plan.json"), "--out", str(repo))
    shutil.copytree(source, repo / "mlp")  # the whole model beside its stages: node-a must refuse it
    ports = [free_port() for _ in range(3)]
    peers = ",".join(f"http://127.0.0.1:{port}" for port in ports[1:])
    cap = ["--memory-cap-mb", CAP_MB]
    nodes = [
        start_node(
            repo, "node-a", port=ports[0], extra_args=[*cap, "--forward-peers", peers, "--models", "mlp,mlp.stage0of2"]
        ),
        start_node(repo, "node-b", port=ports[1], extra_args=[*cap, "--models", "mlp.stage1of2"]),
        start_node(repo, "node-c", port=ports[2], extra_args=[*cap, "--models", "mlp.stage1of2"]),
    ]
    try:
        for node in nodes:
            node.wait_ready()
        whole = ort.InferenceSession(str(source / "model.onnx"), providers=["CPUExecutionProvider"])
        yield Cluster(repo, whole, *nodes)
    finally:
        for node in nodes:
            node.stop()


def _sharded(cluster: Cluster, nodes: list[ServerProcess], **options: Any) -> Any:
    balancer = options.pop("balancer", BalancerSettings(probe_interval_s=0.2))
    return settings_for(
        [node.url for node in nodes], sharding=ShardingSettings(models=[cluster.repo], **options), balancer=balancer
    )


def _rows(body: dict[str, Any]) -> np.ndarray:
    out = body["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


async def test_memory_cap_refuses_the_whole_model_and_serves_its_stages(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=5) as node:
        index = {row["name"]: row for row in (await node.post(cluster.a.url + "/v2/repository/index")).json()}
        assert index["mlp.stage0of2"]["state"] == "READY"
        assert index["mlp"]["state"] == "UNAVAILABLE"
        assert "over the node's memory cap of 7.0 MB" in index["mlp"]["reason"]
        direct = await node.post(cluster.a.url + "/v2/models/mlp/infer", json={"inputs": []})
        assert direct.status_code == 503
        assert "memory cap" in direct.json()["error"]
        assert (await node.get(cluster.a.url + "/v2")).json()["labels"]["memory_cap_mb"] == CAP_MB
    x = np.random.default_rng(3).standard_normal((2, 256)).astype(np.float32)
    plain = settings_for([cluster.a.url, cluster.b.url])
    async with mounted(plain) as (client, _):
        refused = await client.post(INFER, json={"model": "mlp", "inputs": [_tensor(x)]})
        assert refused.status_code == 404  # no node could load it
    async with mounted(_sharded(cluster, [cluster.a, cluster.b])) as (client, _):
        served = await client.post(INFER, json={"model": "mlp", "inputs": x.tolist()})
        assert served.status_code == 200, served.text
        assert np.max(np.abs(_rows(served.json()) - cluster.reference(x))) <= TOLERANCE
        listed = {entry["name"]: entry for entry in (await client.get(MODELS)).json()}
    # Regression (review): GET /models listed the stages but not the model /inference serves.
    whole = listed["mlp"]
    assert whole["stages"] == ["mlp.stage0of2", "mlp.stage1of2"]
    assert (whole["nodes"], whole["ready_nodes"], whole["local"]) == (["node-a", "node-b"], 2, False)
    assert [spec["name"] for spec in whole["inputs"]] == ["x"]
    assert listed["mlp.stage0of2"]["stages"] is None
    async with mounted(_sharded(cluster, [cluster.a])) as (client, _):
        half = {entry["name"]: entry for entry in (await client.get(MODELS)).json()}["mlp"]
        outage = await client.post(INFER, json={"model": "mlp", "inputs": x.tolist()})
    # Regression: a stage no node lists answered 404, as if the model the gateway serves did not exist.
    assert outage.status_code == 503, outage.text
    assert outage.json()["code"] == "no_capacity"
    assert "stage 1 (mlp.stage1of2)" in outage.json()["detail"]
    assert (half["nodes"], half["ready_nodes"]) == (["node-a"], 0)  # its second stage has no node


def _tensor(x: np.ndarray) -> dict[str, Any]:
    return {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}


@pytest.mark.parametrize(
    "parameters",
    [{}, {"shard_micro_batch": 2}, {"shard_forwarding": True}, {"shard_forwarding": True, "shard_micro_batch": 3}],
    ids=["relayed", "micro-batched", "node-to-node", "node-to-node-micro-batched"],
)
async def test_sharded_model_answers_like_the_whole_model(cluster: Cluster, parameters: dict[str, Any]) -> None:
    x = np.random.default_rng(1).standard_normal((7, 256)).astype(np.float32)
    async with mounted(_sharded(cluster, [cluster.a, cluster.b, cluster.c])) as (client, _):
        response = await client.post(INFER, json={"model": "mlp", "inputs": x.tolist(), "parameters": parameters})
        assert response.status_code == 200, response.text
        body = response.json()
    assert np.max(np.abs(_rows(body) - cluster.reference(x))) <= TOLERANCE
    assert body["model"] == "mlp"
    assert body["mode"] == "distributed"
    first, second = body["node_id"].split(">")
    assert first == "node-a"
    assert set(second.split("+")) <= {"node-b", "node-c"}
    chunks = -(-7 // parameters.get("shard_micro_batch", 7))
    # Relayed: one attempt per stage and micro-batch. Node to node: one call carries both stages.
    assert body["attempts"] == chunks * (1 if parameters.get("shard_forwarding") else 2)


async def test_batch_parallel_and_pipeline_serve_a_sharded_model(cluster: Cluster) -> None:
    """Regression: these asked only the catalog (nodes list the stages, not `mlp`): 404 once a node was up."""
    x = np.random.default_rng(5).standard_normal((1, 256)).astype(np.float32)
    expected = cluster.reference(x)
    api = "/api/v1/distributed/inference"
    async with mounted(_sharded(cluster, [cluster.a, cluster.b])) as (client, _):
        batch = await client.post(f"{api}/batch", json={"requests": [{"model": "mlp", "inputs": x.tolist()}]})
        parallel = await client.post(f"{api}/parallel", json={"models": ["mlp"], "inputs": x.tolist()})
        stages = [{"id": "whole", "model": "mlp", "inputs": x.tolist()}]
        pipeline = await client.post(f"{api}/pipeline", json={"stages": stages})
    assert batch.status_code == 200, batch.text
    assert batch.json()["results"][0]["status"] == "ok", batch.text
    assert np.max(np.abs(_rows(batch.json()["results"][0]["response"]) - expected)) <= TOLERANCE
    assert parallel.status_code == 200, parallel.text
    assert pipeline.status_code == 200, pipeline.text
    assert pipeline.json()["status"] == "completed", pipeline.text
    assert np.max(np.abs(_rows(pipeline.json()["output"]) - expected)) <= TOLERANCE


async def test_an_activation_over_the_tensor_limit_is_a_413_that_blames_no_node(cluster: Cluster) -> None:
    """Regression: a stage's answer over DISTINFER_MAX_TENSOR_ELEMENTS read as garbage from the node: stage 0
    re-ran on every try, each a failure of the healthy node (its breaker opened), and the caller got 503."""
    x = np.ones((2, 256), dtype=np.float32)  # 512 elements in; stage 0 answers 2 x 1024
    settings = _sharded(cluster, [cluster.a, cluster.b])
    settings.limits = LimitSettings(max_tensor_elements=600)
    async with mounted(settings) as (client, distributed):
        for _ in range(3):
            refused = await client.post(INFER, json={"model": "mlp", "inputs": x.tolist()})
            assert refused.status_code == 413, refused.text
            assert "stage 0 (mlp.stage0of2)" in refused.json()["detail"]
            assert "the answer is over the limit: tensor 'relu1'" in refused.json()["detail"]
        trips = {node.node_id: distributed.pool.breaker(node.key).trips for node in distributed.registry.nodes()}
        metrics = (await client.get("/metrics")).text
    assert trips == {"node-a": 0, "node-b": 0}
    assert 'outcome="server_error"' not in metrics


async def test_the_v2_relay_checks_a_sharded_model_as_inference_does(cluster: Cluster) -> None:
    """Regression: the relay asked only the catalog, which lists the stages: the batch limit and the
    version in the path went unchecked for a sharded model."""
    settings = _sharded(cluster, [cluster.a, cluster.b])
    settings.limits = LimitSettings(max_batch_size=4)
    v2 = "/api/v1/distributed/v2/models/mlp"
    rows = {"inputs": [_tensor(np.ones((8, 256), dtype=np.float32))]}
    one = {"inputs": [_tensor(np.ones((1, 256), dtype=np.float32))]}
    async with mounted(settings) as (client, _):
        too_many = await client.post(f"{v2}/infer", json=rows)
        wrong_version = await client.post(f"{v2}/versions/999/infer", json=one)
        served = await client.post(f"{v2}/versions/1/infer", json=one)
    assert too_many.status_code == 413, too_many.text
    assert wrong_version.status_code == 404, wrong_version.text
    assert served.status_code == 200, served.text


async def test_concurrent_callers_get_their_own_rows_back(cluster: Cluster) -> None:
    rng = np.random.default_rng(2)
    batches = [rng.standard_normal((5, 256)).astype(np.float32) for _ in range(8)]
    async with mounted(_sharded(cluster, [cluster.a, cluster.b, cluster.c])) as (client, _):

        async def call(x: np.ndarray, forwarding: bool) -> np.ndarray:
            # Asked for per request, micro-batches are cut however many requests are in flight.
            parameters = {"shard_forwarding": forwarding, "shard_micro_batch": 2}
            response = await client.post(INFER, json={"model": "mlp", "inputs": x.tolist(), "parameters": parameters})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["attempts"] == 3 * (1 if forwarding else 2)  # 3 micro-batches of 2, 2 and 1 rows
            return _rows(body)

        answers = await asyncio.gather(*(call(x, i % 2 == 1) for i, x in enumerate(batches)))
    for x, answer in zip(batches, answers, strict=True):
        assert answer.shape == (5, 16)
        assert np.max(np.abs(answer - cluster.reference(x))) <= TOLERANCE


async def test_a_stage_node_killed_mid_request_reruns_only_that_stage(cluster: Cluster) -> None:
    # node-d dies (SIGKILL, worker.faults) on the first inference it receives: mid-request for the gateway.
    crash = ["--models", "mlp.stage1of2", "--fault-crash-after", "0"]
    spare = start_node(cluster.repo, "node-d", extra_args=crash)
    try:
        spare.wait_ready()
        x = np.random.default_rng(4).standard_normal((8, 256)).astype(np.float32)
        settings = _sharded(cluster, [cluster.a, cluster.b, spare], balancer=BalancerSettings(probe_interval_s=30))
        async with mounted(settings) as (client, _):
            body: dict[str, Any] | None = None
            for _ in range(8):  # round robin: within a few requests, stage 1 lands on node-d
                response = await client.post(INFER, json={"model": "mlp", "inputs": x.tolist()})
                assert response.status_code == 200, response.text
                # The request that met node-d is the one retried: node-d's exit may show only later
                # (a loaded machine), and the next request, served without it, said 2 (a flaky test).
                if response.json()["attempts"] > 2:
                    body = response.json()
                    break
            assert body is not None, "stage 1 never ran on node-d"
            await until(lambda: not spare.alive)  # it was node-d that failed: it died
    finally:
        spare.stop()
    assert body["node_id"] == "node-a>node-b"
    assert body["attempts"] == 3  # stage 0 once; stage 1 on node-d (killed), then again on node-b
    assert np.max(np.abs(_rows(body) - cluster.reference(x))) <= TOLERANCE


async def test_nodes_forward_only_to_their_peers(cluster: Cluster) -> None:
    x = np.zeros((1, 256), dtype=np.float32)

    def request(url: str) -> dict[str, Any]:
        hop = {"url": url, "model": "mlp.stage1of2", "send": ["relu1"]}
        return {"inputs": [_tensor(x)], "parameters": {"distinfer_forward": {"hops": [hop]}}}

    async with httpx.AsyncClient(timeout=10) as node:
        stray = await node.post(cluster.a.url + "/v2/models/mlp.stage0of2/infer", json=request("http://127.0.0.1:9"))
        assert stray.status_code == 400
        assert "not one of its --forward-peers" in stray.json()["error"]
        closed = await node.post(cluster.b.url + "/v2/models/mlp.stage1of2/infer", json=request(cluster.c.url))
        assert closed.status_code == 400
        assert "does not forward" in closed.json()["error"]
        chained = await node.post(cluster.a.url + "/v2/models/mlp.stage0of2/infer", json=request(cluster.b.url))
        assert chained.status_code == 200, chained.text
        assert chained.json()["model_name"] == "mlp.stage1of2"


async def test_a_chain_that_comes_back_to_a_limited_node_does_not_wait_for_itself(cluster: Cluster) -> None:
    """Regression: with --max-concurrency 1 a node held its slot while waiting on the next hop, so a
    chain whose next hop was the same node waited for itself until its deadline (a 502)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    both = "mlp.stage0of2,mlp.stage1of2"
    looping = start_node(
        cluster.repo,
        "node-loop",
        port=port,
        extra_args=["--max-concurrency", "1", "--forward-peers", url, "--models", both, "--log-level", "info"],
    )
    try:
        looping.wait_ready()
        x = np.ones((1, 256), dtype=np.float32)
        hop = {"url": url, "model": "mlp.stage1of2", "send": ["relu1"]}
        body = {"inputs": [_tensor(x)], "parameters": {"distinfer_forward": {"hops": [hop], "timeout_ms": 3000}}}
        trace_id = "0af7651916cd43dd8448eb211c80319c"
        traced = {"X-Request-ID": "chain-req-1", "traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}
        async with httpx.AsyncClient(timeout=10) as node:
            chained = await node.post(url + "/v2/models/mlp.stage0of2/infer", json=body, headers=traced)
        assert chained.status_code == 200, chained.text
        np.testing.assert_allclose(_rows(chained.json()), cluster.reference(x), atol=TOLERANCE)
        # Both hops log the caller's request id and trace (tracing off here): one chain, one id.
        await until(lambda: looping.output().count("chain-req-1") == 2)
        lines = [line for line in looping.output().splitlines() if "chain-req-1" in line]
        assert [trace_id in line for line in lines] == [True, True], lines
    finally:
        looping.stop()


def _server_errors(metrics: str, model: str) -> float:
    prefix = f'distinfer_node_requests_total{{model="{model}",outcome="server_error"}} '
    return sum(float(line[len(prefix) :]) for line in metrics.splitlines() if line.startswith(prefix))


async def test_a_dead_hop_blames_no_first_node_and_the_chain_runs_relayed(cluster: Cluster) -> None:
    """Regression (audit): a first node's 502 for a dead later hop was taken as the first node failing:
    counted against its breaker, and retried on it with the same dead hop, before the relay ran."""
    first = start_node(
        cluster.repo,
        "node-f",
        extra_args=["--memory-cap-mb", CAP_MB, "--forward-peers", "*", "--models", "mlp.stage0of2"],
    )
    dying = start_node(cluster.repo, "node-e", extra_args=["--models", "mlp.stage1of2", "--fault-crash-after", "0"])
    try:
        first.wait_ready()
        dying.wait_ready()
        x = np.random.default_rng(6).standard_normal((2, 256)).astype(np.float32)
        balancer = BalancerSettings(probe_interval_s=30, strategy="round_robin")
        settings = _sharded(cluster, [first, dying, cluster.b], balancer=balancer)
        request = {"model": "mlp", "inputs": x.tolist(), "parameters": {"shard_forwarding": True}}
        async with mounted(settings) as (client, distributed), httpx.AsyncClient(timeout=10) as plain:
            for _ in range(8):  # round robin: within a few requests, the chain's hop is node-e
                response = await client.post(INFER, json=request)
                assert response.status_code == 200, response.text
                np.testing.assert_allclose(_rows(response.json()), cluster.reference(x), atol=TOLERANCE)
                if not dying.alive:
                    break
            assert not dying.alive, "the chain never went through node-e"
            metrics = (await plain.get(first.url + "/metrics")).text
            assert _server_errors(metrics, "mlp.stage0of2") == 1  # one forwarded call, not retried with node-e
            assert distributed.pool.breaker(first.url).trips == 0
            assert response.json()["node_id"] == "node-f>node-b"  # then relayed, stage 1 on the live node
    finally:
        first.stop()
        dying.stop()


async def test_a_sharded_model_named_for_the_cache_is_cached(cluster: Cluster) -> None:
    """Regression (audit): the cache wrapped only the stages' dispatcher, so a sharded model in
    DISTINFER_CACHE_MODELS was silently never cached."""
    x = np.random.default_rng(7).standard_normal((1, 256)).astype(np.float32)
    settings = settings_for(
        [cluster.a.url, cluster.b.url],
        sharding=ShardingSettings(models=[cluster.repo]),
        cache=CacheSettings(models=["mlp"]),
    )
    async with mounted(settings) as (client, _):
        first = await client.post(INFER, json={"model": "mlp", "inputs": x.tolist()})
        again = await client.post(INFER, json={"model": "mlp", "inputs": x.tolist()})
    assert first.status_code == again.status_code == 200
    assert (first.json()["attempts"], again.json()["attempts"]) == (2, 0)  # the second from the cache
    np.testing.assert_array_equal(_rows(again.json()), _rows(first.json()))
