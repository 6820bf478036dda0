"""Batch, parallel and pipeline over real node processes, compared with ONNX Runtime run directly."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from gateway_plugin import DistributedInference
from gateway_plugin.processes import ServerProcess
from gateway_plugin.settings import LimitSettings
from tests.integration.conftest import mounted, settings_for
from tests.integration.orchestration_helpers import (
    SLOW_MODEL,
    SOFTMAX_MODEL,
    digits_dataset,
    set_latency,
    slow_node_fixture,
)

API = "/api/v1/distributed"
VARIANTS = ("digits_a", "digits_b", "digits_c")


@pytest.fixture(scope="module")
def slow_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from slow_node_fixture(tmp_path_factory)


@pytest.fixture
async def gateway(
    two_nodes: list[ServerProcess], slow_node: ServerProcess
) -> AsyncIterator[tuple[httpx.AsyncClient, DistributedInference]]:
    set_latency(slow_node, 300)
    urls = [node.url for node in [*two_nodes, slow_node]]
    async with mounted(settings_for(urls, limits=LimitSettings(max_batch_size=64))) as pair:
        yield pair


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return digits_dataset()[0]


@pytest.fixture(scope="module")
def variant_logits(repository: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """Each digits variant's logits for every image, from ONNX Runtime directly."""
    found = {}
    for model in VARIANTS:
        session = ort.InferenceSession(str(repository / model / "model.onnx"), providers=["CPUExecutionProvider"])
        found[model] = np.asarray(session.run(["logits"], {"image": images})[0])
    return found


def _node_requests(node: ServerProcess, model: str) -> int:
    text = httpx.get(f"{node.url}/metrics", timeout=5).text
    pattern = re.compile(rf'^distinfer_node_requests_total\{{[^}}]*model="{model}"[^}}]*\}} ([0-9.e+]+)$', re.M)
    return int(sum(float(value) for value in pattern.findall(text)))


def _served(node: ServerProcess) -> int:
    """Inference requests for the digits variants the node has counted (its own metrics)."""
    return sum(_node_requests(node, model) for model in VARIANTS)


def _item(image: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {"model": "digits", "inputs": image.reshape(8, 8).tolist(), **extra}


def _logits(result: dict[str, Any]) -> np.ndarray:
    tensor = result["response"]["outputs"][0]
    return np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])


async def test_batch_keeps_order_and_one_bad_item_fails_only_itself(
    gateway: tuple[httpx.AsyncClient, DistributedInference],
    images: np.ndarray,
    onnx_digits: Callable[[np.ndarray], np.ndarray],
) -> None:
    client, _ = gateway
    requests = [_item(images[i]) for i in range(10)]
    requests.insert(3, {"model": "digits", "inputs": [[1.0, 2.0]], "request_id": "bad-3"})  # fits no shape: 400
    requests.insert(7, {"model": "no_such_model", "inputs": [[0.0] * 8] * 8})  # 404
    requests[0]["request_id"] = "mine-0"
    response = await client.post(f"{API}/inference/batch", json={"requests": requests, "max_concurrency": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["succeeded"], body["failed"]) == (10, 2)
    results = body["results"]
    assert [r["status"] for r in results].count("error") == 2
    assert results[3]["error"]["status"] == 400
    assert results[3]["error"]["request_id"] == "bad-3"
    assert results[7]["error"]["code"] == "unknown_model"
    good = [r for i, r in enumerate(results) if i not in (3, 7)]
    expected = onnx_digits(images[:10])
    for index, result in enumerate(good):
        np.testing.assert_allclose(_logits(result), expected[index : index + 1], atol=1e-4)
    assert good[0]["response"]["request_id"] == "mine-0"
    assert {r["response"]["node_id"] for r in good} <= {"node-a", "node-b"}
    # CONTRACT §4, headers on every response: every node that served an item, once each.
    served = list(dict.fromkeys(r["response"]["node_id"] for r in good))
    assert response.headers["X-Inference-Node"].split(", ") == served
    assert response.headers["X-Inference-Mode"] == "distributed"


async def test_items_for_one_model_are_coalesced_into_multi_row_node_requests(
    gateway: tuple[httpx.AsyncClient, DistributedInference], two_nodes: list[ServerProcess], images: np.ndarray
) -> None:
    client, _ = gateway
    requests = [_item(images[i]) for i in range(40)]
    answers = {}
    sent = {}
    for coalesce in (True, False):
        before = sum(_node_requests(node, "digits") for node in two_nodes)
        body = {"requests": requests, "max_concurrency": 4, "coalesce": coalesce}
        response = await client.post(f"{API}/inference/batch", json=body)
        assert response.status_code == 200
        assert response.json()["succeeded"] == 40
        sent[coalesce] = sum(_node_requests(node, "digits") for node in two_nodes) - before
        answers[coalesce] = np.concatenate([_logits(r) for r in response.json()["results"]])
    assert sent[False] == 40
    assert 1 <= sent[True] <= 4, sent  # 40 one-row items in at most 4 multi-row requests over 2 nodes
    np.testing.assert_allclose(answers[True], answers[False], atol=1e-5)


async def test_batch_stream_sends_one_event_per_item_then_a_summary(
    gateway: tuple[httpx.AsyncClient, DistributedInference], images: np.ndarray
) -> None:
    client, _ = gateway
    requests = [_item(images[i]) for i in range(5)] + [{"model": "digits", "inputs": "not an image"}]
    response = await client.post(f"{API}/inference/batch?stream=true", json={"requests": requests})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    # Regression (audit): the stream had no X-Inference-Node/Mode (CONTRACT §4); they name who served
    # the first item to finish.
    assert response.headers["X-Inference-Mode"] in ("distributed", "none")
    assert response.headers["X-Inference-Node"] != ""
    events = []
    for block in response.text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    assert [name for name, _ in events] == ["item"] * 6 + ["summary"]
    first = events[0][1]
    assert response.headers["X-Inference-Node"] == (first["response"]["node_id"] if first["status"] == "ok" else "none")
    assert sorted(data["index"] for _, data in events[:-1]) == list(range(6))
    assert events[-1][1] | {"latency_ms": 0} == {"succeeded": 5, "failed": 1, "total": 6, "latency_ms": 0}


async def test_a_batch_over_the_limit_is_413(gateway: tuple[httpx.AsyncClient, DistributedInference]) -> None:
    client, _ = gateway
    requests = [{"model": "digits", "inputs": [[0.0] * 8] * 8}] * 65
    response = await client.post(f"{API}/inference/batch", json={"requests": requests})
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


def _disagreeing(logits: dict[str, np.ndarray]) -> int:
    """An image on which two variants agree and the third does not."""
    votes = np.stack([logits[m].argmax(axis=1) for m in VARIANTS])
    split = (votes[0] == votes[1]) & (votes[2] != votes[0])
    return int(np.flatnonzero(split)[0])


async def test_majority_vote_ensemble_and_weighted_average_on_real_variants(
    gateway: tuple[httpx.AsyncClient, DistributedInference], images: np.ndarray, variant_logits: dict[str, np.ndarray]
) -> None:
    client, _ = gateway
    index = _disagreeing(variant_logits)
    image = images[index].reshape(8, 8).tolist()
    winner, loser = (str(int(variant_logits[m][index].argmax())) for m in ("digits_a", "digits_c"))
    body = {"models": list(VARIANTS), "inputs": image, "aggregation": "majority_vote"}
    voted = await client.post(f"{API}/inference/parallel", json=body)
    vote = voted.json()
    nodes = list(dict.fromkeys(entry["response"]["node_id"] for entry in vote["responses"]))
    assert voted.headers["X-Inference-Node"].split(", ") == nodes
    assert voted.headers["X-Inference-Mode"] == "distributed"
    assert vote["label"] == winner
    assert vote["votes"] == {winner: 2, loser: 1}
    assert vote["answered"] == 3
    assert vote["output"][0]["data"] == [winner]
    assert vote["output"][1]["data"] == [2]

    # Regression (audit): every model answered but too few agreed, and that was a 503 "no node can
    # serve", which clients retry for the same votes.
    body = {"models": list(VARIANTS), "inputs": image, "aggregation": "majority_vote", "min_responses": 3}
    split = await client.post(f"{API}/inference/parallel", json=body)
    assert split.status_code == 409, split.text
    assert split.json()["code"] == "no_consensus"
    assert split.json()["answered"] == 3
    assert split.headers["X-Inference-Node"] == "none"

    weights = {"digits_a": 1.0, "digits_b": 1.0, "digits_c": 6.0}
    body = {"models": list(VARIANTS), "inputs": image, "aggregation": "ensemble", "weights": weights}
    ensemble = (await client.post(f"{API}/inference/parallel", json=body)).json()
    logits = {m: variant_logits[m][index] for m in VARIANTS}
    probs = {m: np.exp(v - v.max()) / np.exp(v - v.max()).sum() for m, v in logits.items()}
    expected = sum(weights[m] * probs[m] for m in VARIANTS) / sum(weights.values())
    np.testing.assert_allclose(ensemble["output"][0]["data"], expected, atol=1e-4)
    assert ensemble["label"] == str(int(np.argmax(expected)))
    assert ensemble["contributions"]["digits_c"]["share"] == 0.75

    body = {"models": list(VARIANTS), "inputs": image, "aggregation": "weighted_average", "weights": weights}
    average = (await client.post(f"{API}/inference/parallel", json=body)).json()
    expected_logits = sum(weights[m] * logits[m] for m in VARIANTS) / sum(weights.values())
    np.testing.assert_allclose(average["output"][0]["data"], expected_logits, atol=1e-4)

    body = {"models": [*VARIANTS, "no_such_model"], "inputs": image, "aggregation": "all"}
    everything = (await client.post(f"{API}/inference/parallel", json=body)).json()
    assert everything["answered"] == 3
    assert everything["requested"] == 4
    assert everything["responses"][3] | {"error": None} == {"model": "no_such_model", "status": "error", "error": None}
    assert everything["responses"][3]["error"]["code"] == "unknown_model"


async def test_votes_on_no_rows_or_a_missing_output_are_answers_or_422_never_500_or_503(
    gateway: tuple[httpx.AsyncClient, DistributedInference], two_nodes: list[ServerProcess]
) -> None:
    """Regressions: zero rows made reshape(0, -1) a 500; a missing output with min_responses a 503."""
    client, _ = gateway
    empty = [{"name": "image", "shape": [0, 1, 8, 8], "datatype": "FP32", "data": []}]
    models = list(VARIANTS)
    for extra in ({"aggregation": "majority_vote"}, {"aggregation": "majority_vote", "min_responses": 2}):
        response = await client.post(f"{API}/inference/parallel", json={"models": models, "inputs": empty, **extra})
        assert response.status_code == 200, response.text
        voted = response.json()
        assert (voted["votes"], voted["label"]) == ([], [])  # one entry per row, and there are none
        assert [tensor["shape"] for tensor in voted["output"]] == [[0], [0]]
    ensemble = await client.post(
        f"{API}/inference/parallel", json={"models": models, "inputs": empty, "aggregation": "ensemble"}
    )
    assert ensemble.status_code == 200, ensemble.text
    assert ensemble.json()["output"][0]["shape"][0] == 0
    image = [[0.5] * 8] * 8
    before = {node.url: _served(node) for node in two_nodes}
    for extra in ({}, {"min_responses": 1}):
        body = {"models": models, "inputs": image, "aggregation": "majority_vote", "output": "nope", **extra}
        response = await client.post(f"{API}/inference/parallel", json=body)
        assert response.status_code == 422, (extra, response.text)
        assert "nope" in response.json()["detail"]
    zero = {model: 0 for model in models}
    for aggregation in ("weighted_average", "ensemble"):
        body = {"models": models, "inputs": image, "aggregation": aggregation, "weights": zero}
        response = await client.post(f"{API}/inference/parallel", json=body)
        assert response.status_code == 422, response.text
        assert "add up to 0" in response.json()["detail"]
    # Regression (audit): both were found only after every model had been called.
    assert {node.url: _served(node) for node in two_nodes} == before
    # Only an output that no model has is refused up front: digits cannot read charlm's inputs and
    # fails alone, and charlm's `next_state` is the vote (Regression, review: this was a 422).
    tokens = [
        {"name": "token", "shape": [1, 1], "datatype": "INT64", "data": [5]},
        {"name": "state", "shape": [1, 192], "datatype": "FP32", "data": [0.0] * 192},
    ]
    body = {"models": ["digits", "charlm"], "inputs": tokens, "aggregation": "majority_vote", "output": "next_state"}
    mixed = await client.post(f"{API}/inference/parallel", json=body)
    assert mixed.status_code == 200, mixed.text
    assert [entry["status"] for entry in mixed.json()["responses"]] == ["error", "ok"]


async def test_quorum_answers_early_and_cancels_the_straggler_and_a_deadline_is_504(
    gateway: tuple[httpx.AsyncClient, DistributedInference],
    slow_node: ServerProcess,
    images: np.ndarray,
    variant_logits: dict[str, np.ndarray],
) -> None:
    client, distributed = gateway
    set_latency(slow_node, 5000)
    agree = int(np.flatnonzero(variant_logits["digits_a"].argmax(1) == variant_logits["digits_b"].argmax(1))[0])
    image = images[agree].reshape(8, 8).tolist()
    body = {
        "models": ["digits_a", SLOW_MODEL, "digits_b"],
        "inputs": image,
        "aggregation": "majority_vote",
        "min_responses": 2,
        "timeout_ms": 20_000,
    }
    response = await client.post(f"{API}/inference/parallel", json=body)
    answer = response.json()
    assert response.status_code == 200, answer
    assert [r["status"] for r in answer["responses"]] == ["ok", "cancelled", "ok"]
    assert answer["latency_ms"] < 4000
    assert answer["answered"] == 2
    slow_key = slow_node.url
    assert distributed.pool.in_flight(slow_key) == 0  # the straggler's node call was cancelled, not left running

    body = {"models": [SLOW_MODEL, "digits_a"], "inputs": image, "aggregation": "first"}
    first = (await client.post(f"{API}/inference/parallel", json=body)).json()
    assert first["winner"] == "digits_a"
    assert first["responses"][0]["status"] == "cancelled"

    body = {"models": [SLOW_MODEL], "inputs": image, "aggregation": "all", "timeout_ms": 300}
    late = await client.post(f"{API}/inference/parallel", json=body)
    assert late.status_code == 504
    assert late.json()["answered"] == 0
    assert late.json()["responses"][0]["status"] == "error"


async def test_invalid_pipelines_are_refused_before_anything_runs(
    gateway: tuple[httpx.AsyncClient, DistributedInference], slow_node: ServerProcess
) -> None:
    client, _ = gateway
    async with httpx.AsyncClient(base_url=slow_node.url) as node:
        served = (await node.get("/v2/faults")).json()["served"]
    image = [[0.0] * 8] * 8
    cases = [
        [
            {"id": "a", "model": SLOW_MODEL, "inputs": image, "depends_on": ["b"]},
            {"id": "b", "model": SLOW_MODEL, "input_map": {"image": "a.probabilities"}},
        ],
        [
            {"id": "a", "model": SLOW_MODEL, "inputs": image},
            {"id": "b", "model": SOFTMAX_MODEL, "input_map": {"logits": "ghost.logits"}},
        ],
        [{"id": "a", "model": SLOW_MODEL, "inputs": image}, {"id": "b", "model": SOFTMAX_MODEL, "depends_on": ["a"]}],
        [
            {"id": "a", "model": SLOW_MODEL, "inputs": image},
            {"id": "b", "model": SOFTMAX_MODEL, "input_map": {"logits": "a.nothing"}},
        ],
    ]
    expected = ["cycle", "unknown stage 'ghost'", "no inputs and no input_map", "has no output 'nothing'"]
    for stages, words in zip(cases, expected, strict=True):
        response = await client.post(f"{API}/inference/pipeline", json={"stages": stages})
        assert response.status_code == 422, response.text
        assert any(words in error["msg"] for error in response.json()["errors"]), response.json()
    unknown = [{"id": "a", "model": "no_such_model", "inputs": image}]
    assert (await client.post(f"{API}/inference/pipeline", json={"stages": unknown})).status_code == 404
    async with httpx.AsyncClient(base_url=slow_node.url) as node:
        after = (await node.get("/v2/faults")).json()["served"]
    assert after == served  # no stage ever reached a node


OUT_OF_VOCABULARY = [
    {"name": "token", "shape": [1, 1], "datatype": "INT64", "data": [1000]},
    {"name": "state", "shape": [1, 192], "datatype": "FP32", "data": [0.0] * 192},
]


async def test_pipeline_runs_independent_stages_at_once_and_failures_stop_at_hard_dependants(
    gateway: tuple[httpx.AsyncClient, DistributedInference], slow_node: ServerProcess, images: np.ndarray
) -> None:
    client, _ = gateway
    set_latency(slow_node, 600)
    one, two = images[0].reshape(8, 8).tolist(), images[1].reshape(8, 8).tolist()
    stages = [
        {"id": "left", "model": SLOW_MODEL, "inputs": one},
        {"id": "right", "model": SLOW_MODEL, "inputs": two},
        {"id": "probs", "model": SOFTMAX_MODEL, "input_map": {"logits": "left.logits"}, "depends_on": ["right"]},
        # A token beyond charlm's vocabulary: only the node can tell (400); a wrong shape is refused before
        {"id": "broken", "model": "charlm", "inputs": OUT_OF_VOCABULARY, "depends_on": ["left"]},
        {"id": "after_broken", "model": "digits", "inputs": one, "depends_on": ["broken"]},
        {"id": "soft", "model": "digits", "inputs": one, "depends_on": ["broken"], "dependency": "soft"},
    ]
    response = await client.post(f"{API}/inference/pipeline", json={"stages": stages})
    assert response.status_code == 200, response.text
    body = response.json()
    result = body["stages"]
    status = {sid: stage["status"] for sid, stage in result.items()}
    assert status == {
        "left": "ok",
        "right": "ok",
        "probs": "ok",
        "broken": "error",
        "after_broken": "skipped",
        "soft": "ok",
    }
    assert body["status"] == "partial"
    assert result["after_broken"]["error"]["code"] == "upstream_failed"
    left, right, probs = result["left"], result["right"], result["probs"]
    assert left["started_ms"] < right["finished_ms"]
    assert right["started_ms"] < left["finished_ms"]
    assert left["latency_ms"] >= 550
    assert right["latency_ms"] >= 550
    assert probs["started_ms"] >= max(left["finished_ms"], right["finished_ms"])
    sequential = left["latency_ms"] + right["latency_ms"] + probs["latency_ms"]
    overlap_saves = min(left["latency_ms"], right["latency_ms"])
    assert body["latency_ms"] < sequential - overlap_saves / 2, (body["latency_ms"], sequential)
    logits = np.asarray(left["response"]["outputs"][0]["data"], dtype=np.float64)
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(probs["response"]["outputs"][0]["data"], expected, atol=1e-5)
    assert body["output"] is not None
    assert body["output"]["model"] == "digits"
    ran = [stage["response"]["node_id"] for stage in result.values() if "response" in stage]
    assert set(response.headers["X-Inference-Node"].split(", ")) == set(ran)
    assert response.headers["X-Inference-Mode"] == "distributed"

    # Regression (audit): logits mapped onto an image input ran the first stage, then failed the
    # second at its node; the models' metadata tell before anything runs (CONTRACT §4: 422).
    wrong = [stages[0], {"id": "b", "model": "digits", "input_map": {"image": "left.logits"}}]
    refused = await client.post(f"{API}/inference/pipeline", json={"stages": wrong})
    assert refused.status_code == 422
    assert "shape [-1, 10], model expects [-1, 1, 8, 8]" in refused.json()["detail"]


async def test_a_pipelines_and_a_batchs_timeout_ms_bound_the_whole_request(
    gateway: tuple[httpx.AsyncClient, DistributedInference], slow_node: ServerProcess, images: np.ndarray
) -> None:
    """Regression (audit): each stage and item had only its own deadline, so a chain of stages, or
    items queued behind one another, held the request for their sum. Now the whole request's
    `timeout_ms` (at most DISTINFER_MAX_BATCH_PIPELINE_TIMEOUT_MS) bounds them: what has not run by
    then is a 504 and never reaches a node."""
    client, _ = gateway
    set_latency(slow_node, 700)
    image = images[0].reshape(8, 8).tolist()
    async with httpx.AsyncClient(base_url=slow_node.url) as node:
        served = (await node.get("/v2/faults")).json()["served"]
    chain = [
        {"id": "first", "model": SLOW_MODEL, "inputs": image, "timeout_ms": 5000},
        {"id": "second", "model": SLOW_MODEL, "inputs": image, "depends_on": ["first"], "timeout_ms": 5000},
        {"id": "third", "model": SLOW_MODEL, "inputs": image, "depends_on": ["second"], "dependency": "soft"},
    ]
    response = await client.post(f"{API}/inference/pipeline", json={"stages": chain, "timeout_ms": 1000})
    assert response.status_code == 200, response.text
    body = response.json()
    stages = body["stages"]
    assert [stages[s]["status"] for s in ("first", "second", "third")] == ["ok", "error", "skipped"]
    assert stages["second"]["error"]["status"] == 504
    assert stages["second"]["finished_ms"] < 2500  # its own 5 s were cut to what was left of the 1 s
    assert stages["third"]["error"]["code"] == "deadline_exceeded"
    assert "pipeline's deadline of 1000 ms" in stages["third"]["error"]["detail"]
    assert body["status"] == "partial"

    items = [{"model": SLOW_MODEL, "inputs": image, "timeout_ms": 5000} for _ in range(4)]
    response = await client.post(
        f"{API}/inference/batch", json={"requests": items, "max_concurrency": 1, "coalesce": False, "timeout_ms": 1000}
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0]["status"] == "ok"
    assert results[-1]["status"] == "error"
    assert results[-1]["error"]["code"] == "deadline_exceeded"
    assert "batch's deadline of 1000 ms" in results[-1]["error"]["detail"]
    async with httpx.AsyncClient(base_url=slow_node.url) as node:
        after = (await node.get("/v2/faults")).json()["served"]
    # first, second, and at most two batch items reached the node; the third stage and the last item never
    assert after - served <= 4
