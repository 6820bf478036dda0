"""Input limits: a 1 GB body is refused in bounded memory; batch, tensor and string limits are 413."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from gateway_plugin.settings import LimitSettings
from tests.integration.conftest import mounted, settings_for

PREFIX = "/api/v1/distributed"
GIB = 1 << 30
CHUNK = 1 << 20


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_a_1_gib_body_is_refused_early_in_bounded_memory() -> None:
    sent = 0
    chunk = b"[" + b"0," * (CHUNK // 2 - 1) + b"0"  # ~1 MiB of a JSON array that never ends

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        while sent < GIB:
            sent += len(chunk)
            yield chunk

    async with mounted(settings_for([], limits=LimitSettings(max_body_bytes=16 * CHUNK))) as (client, _):
        before = rss_bytes()
        # Chunked: no Content-Length, so the limit can only be enforced while reading.
        response = await client.post(
            f"{PREFIX}/inference", content=body(), headers={"Content-Type": "application/json"}
        )
        grown = rss_bytes() - before
        declared = await client.post(
            f"{PREFIX}/inference",
            content=b"{}",
            headers={"Content-Length": str(GIB), "Content-Type": "application/json"},
        )
    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert sent <= 20 * CHUNK, f"the gateway read {sent} bytes before refusing"
    assert grown < 200 * CHUNK, f"resident memory grew by {grown / CHUNK:.0f} MiB for a 1 GiB body"
    assert declared.status_code == 413
    assert "over the limit" in declared.json()["detail"]


async def test_batch_tensor_and_string_limits(two_nodes: list) -> None:  # type: ignore[type-arg]
    limits = LimitSettings(max_batch_size=4, max_tensor_elements=10_000, max_string_bytes=64)
    async with mounted(settings_for([n.url for n in two_nodes], limits=limits)) as (client, _):
        big_batch = await client.post(
            f"{PREFIX}/inference", json={"model": "digits", "inputs": [[[[0.5] * 8] * 8]] * 5}
        )
        small_batch = await client.post(
            f"{PREFIX}/inference", json={"model": "digits", "inputs": [[[[0.5] * 8] * 8]] * 4}
        )
        elements = await client.post(
            f"{PREFIX}/inference",
            json={
                "model": "digits",
                "inputs": [{"name": "image", "shape": [200, 1, 8, 8], "datatype": "FP32", "data": []}],
            },
        )
        string = await client.post(
            f"{PREFIX}/inference",
            json={
                "model": "digits",
                "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x" * 65]}],
            },
        )
    assert big_batch.status_code == 413
    assert "batch of 5" in big_batch.json()["detail"]
    assert small_batch.status_code == 200
    assert small_batch.json()["outputs"][0]["shape"] == [4, 10]
    assert elements.status_code == 413
    assert string.status_code == 413


async def test_nan_and_infinity_in_json_are_400_at_the_gateway_and_the_node(two_nodes: list) -> None:  # type: ignore[type-arg]
    """Regression: Python's parser reads `NaN`, `Infinity` and `1e999` (none is JSON), so such a
    request was served, and answered with `NaN` in a body no strict JSON parser reads."""
    row = ", ".join(["0.5"] * 7)
    tensor = '{"name":"image","shape":[1,1,8,8],"datatype":"FP32","data":[BAD, ' + ", ".join([row] * 9) + "]}"
    async with mounted(settings_for([n.url for n in two_nodes])) as (client, _):
        for bad in ("NaN", "Infinity", "1e999"):
            data = tensor.replace("BAD", bad).encode()
            gateway = await client.post(
                f"{PREFIX}/inference",
                content=b'{"model":"digits","inputs":[' + data + b"]}",
                headers={"Content-Type": "application/json"},
            )
            relayed = await client.post(
                f"{PREFIX}/v2/models/digits/infer",
                content=b'{"inputs":[' + data + b"]}",
                headers={"Content-Type": "application/json"},
            )
            plain = await client.post(
                f"{PREFIX}/inference",
                content=b'{"model":"digits","inputs":[[[[' + bad.encode() + b", " + row.encode() + b"]]]]}",
                headers={"Content-Type": "application/json"},
            )
            for response in (gateway, relayed, plain):
                assert response.status_code == 400, (bad, response.text)
                assert response.headers["content-type"] == "application/problem+json"
                assert "NaN and infinity" in response.json()["detail"]
    async with httpx.AsyncClient() as direct:
        node = await direct.post(
            f"{two_nodes[0].url}/v2/models/digits/infer",
            content=b'{"inputs":[' + tensor.replace("BAD", "NaN").encode() + b"]}",
            headers={"Content-Type": "application/json"},
        )
    assert node.status_code == 400, node.text


async def test_a_body_nested_too_deep_to_parse_is_a_bad_request() -> None:
    """Regression: it was a 400 of type `http_error` (FastAPI's "error parsing the body"), where
    every other malformed body is `bad_request`."""
    async with mounted(settings_for([])) as (client, _):
        response = await client.post(
            f"{PREFIX}/inference", content=b"[" * 5000, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "bad_request"
    assert response.json()["type"] == "urn:distinfer:problem:bad_request"
