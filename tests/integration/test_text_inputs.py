"""BYTES inputs that are not UTF-8 text, and outputs requested twice: the caller's fault (400), not the node's.

Regression (audit): ONNX Runtime takes text for tensor(string), and a BYTES element that did not
decode failed inside the runtime: the node answered 500, and the gateway, counting it against the
node, ejected a healthy node after a few such requests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway_plugin.processes import ServerProcess, start_node
from tests.integration.conftest import mounted, settings_for
from tests.integration.one_op_model import write_one_op_model

PREFIX = "/api/v1/distributed"
MODEL = "echo_text"


def _echo_model(folder: Path) -> None:
    """A one-op ONNX graph over a string tensor (ONNX's tensor(string), v2's BYTES)."""
    write_one_op_model(folder, name=MODEL, op="Identity", tensors=("text", "echo"), datatype="BYTES", shape=[-1])


@pytest.fixture(scope="module")
def text_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository = tmp_path_factory.mktemp("text-repo")
    _echo_model(repository / MODEL)
    node = start_node(repository, "text-node")
    try:
        node.wait_ready(timeout_s=120)
        yield node
    finally:
        node.stop()


def _binary_body(*elements: bytes) -> tuple[bytes, dict[str, str]]:
    """A v2 binary request of one BYTES tensor (4-byte little-endian length before each element)."""
    raw = b"".join(len(element).to_bytes(4, "little") + element for element in elements)
    tensor = {
        "name": "text",
        "shape": [len(elements)],
        "datatype": "BYTES",
        "parameters": {"binary_data_size": len(raw)},
    }
    header = json.dumps({"inputs": [tensor]}).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    return header + raw, headers


def test_the_node_refuses_bytes_that_are_not_utf8_with_a_400(text_node: ServerProcess) -> None:
    url = f"{text_node.url}/v2/models/{MODEL}/infer"
    bad, headers = _binary_body(b"ok", b"\xff\xfe")
    refused = httpx.post(url, content=bad, headers=headers, timeout=10)
    assert refused.status_code == 400, refused.text
    assert "not UTF-8" in refused.json()["error"]
    good, headers = _binary_body("héllo".encode(), b"")
    echoed = httpx.post(url, content=good, headers=headers, timeout=10)
    assert echoed.status_code == 200, echoed.text
    assert echoed.json()["outputs"][0]["data"] == ["héllo", ""]


async def test_the_gateway_passes_the_400_on_and_keeps_the_node(text_node: ServerProcess) -> None:
    bad, headers = _binary_body(b"\x80")
    async with mounted(settings_for([text_node.url])) as (client, _):
        for _ in range(8):  # well past what opens a breaker on a node that fails
            refused = await client.post(f"{PREFIX}/v2/models/{MODEL}/infer", content=bad, headers=headers)
            assert refused.status_code == 400, refused.text
        nodes = (await client.get(f"{PREFIX}/nodes")).json()
        good, headers = _binary_body(b"fine")
        served = await client.post(f"{PREFIX}/v2/models/{MODEL}/infer", content=good, headers=headers)
    (node,) = nodes
    assert node["status"] == "online", node
    assert served.status_code == 200, served.text
    assert served.headers["X-Inference-Node"] == "text-node"


def test_an_output_requested_twice_is_a_400(two_nodes: list[ServerProcess]) -> None:
    body = {
        "inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}],
        "outputs": [{"name": "logits"}, {"name": "logits"}],
    }
    answer = httpx.post(f"{two_nodes[0].url}/v2/models/digits/infer", json=body, timeout=10)
    assert answer.status_code == 400, answer.text
    assert "more than once" in answer.json()["error"]
