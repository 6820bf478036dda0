"""SSE token streaming through the plugin mounted in a real service under uvicorn, read with httpx-sse.

Nodes are real processes serving the bundled `charlm` (a step-function GRU on Python's own docs).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from gateway_plugin.processes import ServerProcess, free_port
from gateway_plugin.settings import BalancerSettings, LimitSettings
from tests.integration.conftest import StartNodes, bearer, settings_for
from tests.integration.legacy_service import existing_service, serving

PREFIX = "/api/v1/distributed"
PROMPT = "The return statement"


@asynccontextmanager
async def gateway(nodes: list[str], **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    app, _, _ = existing_service(settings_for(nodes, **options))
    async with serving(app) as url, httpx.AsyncClient(base_url=url, headers=bearer(), timeout=30) as client:
        yield client


async def read_events(
    client: httpx.AsyncClient, method: str, path: str, **kwargs: Any
) -> tuple[httpx.Response, list[tuple[str, Any]]]:
    async with aconnect_sse(client, method, PREFIX + path, **kwargs) as source:
        source.response.raise_for_status()
        events = [(event.event, json.loads(event.data)) async for event in source.aiter_sse()]
    return source.response, events


async def node_stats(node: ServerProcess, model: str = "charlm") -> dict[str, int]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{node.url}/v2/models/{model}/generate_stream/stats")
    response.raise_for_status()
    return dict(response.json())


@pytest.mark.parametrize("model", ["charlm", pytest.param("charlm_torchscript", marks=pytest.mark.torch)])
async def test_tokens_arrive_as_sse_events_then_result_and_done(two_nodes: list[ServerProcess], model: str) -> None:
    async with gateway([n.url for n in two_nodes]) as client:
        response, events = await read_events(
            client, "GET", f"/inference/stream/{model}", params={"prompt": PROMPT, "max_tokens": 40}
        )
        _, posted = await read_events(
            client, "POST", f"/inference/stream/{model}", json={"prompt": PROMPT, "parameters": {"max_tokens": 40}}
        )
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["X-Inference-Node"] in {"node-a", "node-b"}
    assert [kind for kind, _ in events] == ["token"] * 40 + ["result", "done"]
    text = "".join(data["text"] for kind, data in events if kind == "token")
    result = events[-2][1]
    assert result["text"] == text
    assert result["tokens"] == 40
    assert result["finish_reason"] == "length"
    assert result["mode"] == "distributed"
    assert result["node_id"] == response.headers["X-Inference-Node"]
    assert [data["index"] for kind, data in events if kind == "token"] == list(range(40))
    assert posted[-2][1]["text"] == text  # greedy: GET and POST, either node, give the same text
    assert len(text.split()) >= 5


async def test_stream_errors_before_the_first_token_are_plain_problems(two_nodes: list[ServerProcess]) -> None:
    async with gateway([n.url for n in two_nodes]) as client:
        unknown = await client.get(f"{PREFIX}/inference/stream/no_such_model", params={"prompt": "x"})
        too_many = await client.get(f"{PREFIX}/inference/stream/charlm", params={"prompt": "x", "max_tokens": 10**6})
        neither = await client.post(f"{PREFIX}/inference/stream/charlm", json={"parameters": {}})
        not_generative = await client.get(f"{PREFIX}/inference/stream/digits", params={"prompt": "x"})
        anonymous = await client.get(
            f"{PREFIX}/inference/stream/charlm", params={"prompt": "x"}, headers={"Authorization": ""}
        )
        # A non-generative model with `inputs`: one `result` event, then `done`.
        _, one = await read_events(
            client, "POST", "/inference/stream/digits", json={"inputs": [[0.5] * 8] * 8, "request_id": "one-1"}
        )
    for response, status in ((unknown, 404), (too_many, 400), (neither, 422), (not_generative, 400), (anonymous, 401)):
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
    assert "max_tokens" in too_many.json()["detail"]
    assert "not generative" in not_generative.json()["detail"]
    assert anonymous.headers["WWW-Authenticate"] == 'Bearer realm="distinfer"'
    assert [kind for kind, _ in one] == ["result", "done"]
    assert one[0][1]["request_id"] == "one-1"
    assert one[0][1]["outputs"][0]["shape"] == [1, 10]


async def test_odd_sampling_parameters_neither_fail_the_stream_nor_take_nodes_offline(
    two_nodes: list[ServerProcess],
) -> None:
    """Regression: a seed of -1 or a temperature of 5e-324 raised inside the node's generator; the
    cut stream counted as an unreachable node and took both nodes offline for every model."""
    async with gateway([n.url for n in two_nodes]) as client:
        negative_seed = await client.post(
            f"{PREFIX}/inference/stream/charlm", json={"prompt": "x", "parameters": {"seed": -1, "temperature": 1}}
        )
        _, tiny = await read_events(
            client,
            "POST",
            "/inference/stream/charlm",
            json={"prompt": PROMPT, "parameters": {"max_tokens": 5, "temperature": 5e-324}},
        )
        nodes = (await client.get(f"{PREFIX}/nodes")).json()
    assert negative_seed.status_code == 400, negative_seed.text
    assert "seed" in negative_seed.json()["detail"]
    assert [kind for kind, _ in tiny] == ["token"] * 5 + ["result", "done"]  # the limit of sampling: greedy
    assert {node["status"] for node in nodes} == {"online"}


async def test_client_disconnect_cancels_the_generation_on_the_node(two_nodes: list[ServerProcess]) -> None:
    node = two_nodes[0]
    before = await node_stats(node)
    async with gateway([node.url], limits=LimitSettings(max_new_tokens=65_536)) as client:
        async with aconnect_sse(
            client, "GET", f"{PREFIX}/inference/stream/charlm", params={"prompt": "x", "max_tokens": 65_536}
        ) as source:
            tokens = 0
            async for event in source.aiter_sse():
                tokens += event.event == "token"
                if tokens == 3:
                    break  # the client goes away mid-stream
        async with asyncio.timeout(20):
            while True:
                after = await node_stats(node)
                if not after["active"] and after["cancelled"] != before["cancelled"]:
                    break
                await asyncio.sleep(0.05)
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["completed"] == before["completed"]
    assert after["tokens"] - before["tokens"] < 65_536  # it stopped early, it did not run to the end


async def test_the_stream_deadline_ends_it_with_an_error_event(two_nodes: list[ServerProcess]) -> None:
    async with gateway([two_nodes[1].url], limits=LimitSettings(max_new_tokens=65_536)) as client:
        started = time.monotonic()
        _, events = await read_events(
            client,
            "GET",
            "/inference/stream/charlm",
            params={"prompt": "x", "max_tokens": 65_536, "timeout_ms": 1500},
        )
    assert time.monotonic() - started < 10
    kinds = [kind for kind, _ in events]
    assert kinds[-2:] == ["error", "done"]
    assert "result" not in kinds
    assert events[-2][1]["status"] == 504
    assert events[-2][1]["code"] == "deadline_exceeded"


async def test_a_deadline_spent_before_the_first_token_is_504_not_503(start_nodes: StartNodes) -> None:
    """Regression (review): the node's timeout at the deadline was retried, found no other node, and
    ended as "no capacity" (503), where /inference answers the same wait with 504."""
    (slow,) = start_nodes("stream-slow", extra_args=["--models", "charlm", "--fault-latency-ms", "800"])
    async with gateway([slow.url]) as client:
        body = {"prompt": "a", "parameters": {"max_tokens": 3}, "timeout_ms": 300}
        response = await client.post(f"{PREFIX}/inference/stream/charlm", json=body)
    assert response.status_code == 504, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "deadline_exceeded"


async def test_retry_before_the_first_token_and_an_error_event_when_the_node_dies_mid_stream(
    start_nodes: StartNodes,
) -> None:
    # stream-1 dies (SIGKILL, worker.faults) the moment its first stream request arrives, before any
    # token: the gateway must have sent it that request, so no health probe can have seen the death
    # first. (Killing it from here raced the prober's first round after startup: when that round
    # reached the dead node first, it was never tried, nothing was retried, and all 4 had attempts 1.)
    (first,) = start_nodes("stream-1", extra_args=["--models", "charlm", "--fault-crash-after", "0"])
    (second,) = start_nodes("stream-2", extra_args=["--models", "charlm"])
    settings = dict(balancer=BalancerSettings(probe_interval_s=60), limits=LimitSettings(max_new_tokens=65_536))
    async with gateway([first.url, second.url], **settings) as client:
        results = []
        for _ in range(4):  # round robin: stream-1 gets the first or the second of these
            _, events = await read_events(
                client,
                "GET",
                "/inference/stream/charlm",
                params={"prompt": PROMPT, "max_tokens": 5, "strategy": "round_robin"},
            )
            assert [kind for kind, _ in events] == ["token"] * 5 + ["result", "done"]
            results.append(events[-2][1])
        assert not first.alive  # it did get a stream request, and died on it
        assert {r["node_id"] for r in results} == {"stream-2"}
        # Exactly one request met stream-1 (which then went offline) and was retried on stream-2.
        assert sorted(r["attempts"] for r in results) == [1, 1, 1, 2]

        kinds: list[str] = []
        last: Any = None
        async with asyncio.timeout(30):
            async with aconnect_sse(
                client, "GET", f"{PREFIX}/inference/stream/charlm", params={"prompt": "x", "max_tokens": 65_536}
            ) as source:
                async for event in source.aiter_sse():
                    kinds.append(event.event)
                    last = json.loads(event.data) if event.event == "error" else last
                    if kinds.count("token") == 3 and second.alive:
                        second.kill()  # the node dies mid-stream
    assert kinds[-2:] == ["error", "done"]
    assert "result" not in kinds
    assert last["code"] == "stream_interrupted"
    assert "stream-2" in last["detail"]


async def test_streams_fall_back_to_the_local_generator(tmp_path: Path, repository: Path) -> None:
    (tmp_path / "charlm").symlink_to(repository / "charlm")
    dead = f"http://127.0.0.1:{free_port()}"
    async with gateway([dead], local=tmp_path) as client:
        response, events = await read_events(
            client, "GET", "/inference/stream/charlm", params={"prompt": PROMPT, "max_tokens": 12}
        )
    assert response.headers["X-Inference-Mode"] == "local"
    assert [kind for kind, _ in events] == ["token"] * 12 + ["result", "done"]
    assert events[-2][1]["mode"] == "local"
    assert events[-2][1]["node_id"] is None
