"""A real `distinfer node` process, spoken to over HTTP: v2 metadata, JSON and binary inference, errors."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

import aiohttp
import httpx
import numpy as np
import pytest

from gateway_plugin.processes import ServerProcess
from worker.client import NodeClient
from worker.errors import NodeRejected
from worker.protocol import HEADER_LENGTH, Limits, Tensor, decode_response, encode_request

MODELS = [
    "digits",
    pytest.param("digits_torchscript", marks=pytest.mark.torch),
    pytest.param("digits_export", marks=pytest.mark.torch),
]


@pytest.fixture(scope="module")
def node(two_nodes: list[ServerProcess]) -> ServerProcess:
    return two_nodes[0]


def test_server_metadata_and_health(node: ServerProcess) -> None:
    with httpx.Client(base_url=node.url) as client:
        meta = client.get("/v2").json()
        assert "binary_tensor_data" in meta["extensions"]
        assert meta["node_id"] == "node-a"
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        index = {row["name"]: row["state"] for row in client.post("/v2/repository/index").json()}
        assert index["digits"] == "READY"
        model = client.get("/v2/models/digits").json()
        assert model["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
        assert model["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
        assert client.get("/v2/models/digits/ready").status_code == 200
        assert client.get("/v2/models/digits/versions/1").status_code == 200
        assert client.get("/v2/models/digits/versions/7").status_code == 404


@pytest.mark.parametrize("model", MODELS)
def test_json_inference_matches_onnxruntime(
    node: ServerProcess, model: str, digits_images: np.ndarray, onnx_digits: Callable[[np.ndarray], np.ndarray]
) -> None:
    body = {
        "id": "r1",
        "inputs": [
            {"name": "image", "shape": list(digits_images.shape), "datatype": "FP32", "data": digits_images.tolist()}
        ],
    }
    response = httpx.post(f"{node.url}/v2/models/{model}/infer", json=body)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["model_name"] == model
    assert out["id"] == "r1"
    logits = np.asarray(out["outputs"][0]["data"], dtype=np.float32).reshape(out["outputs"][0]["shape"])
    np.testing.assert_allclose(logits, onnx_digits(digits_images), atol=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_binary_inference_both_ways_matches_onnxruntime(
    node: ServerProcess, model: str, digits_images: np.ndarray, onnx_digits: Callable[[np.ndarray], np.ndarray]
) -> None:
    encoded = encode_request([Tensor.of("image", digits_images)], binary=True)
    assert encoded.header_length is not None
    response = httpx.post(
        f"{node.url}/v2/models/{model}/infer",
        content=encoded.body,
        headers={HEADER_LENGTH: str(encoded.header_length), "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    length = int(response.headers[HEADER_LENGTH])
    header = json.loads(response.content[:length])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 5 * 10 * 4
    decoded = decode_response(response.content, length, Limits())
    np.testing.assert_allclose(decoded.outputs[0].data, onnx_digits(digits_images), atol=1e-5)


def test_json_input_with_one_output_asked_as_binary(node: ServerProcess, digits_images: np.ndarray) -> None:
    body = {
        "inputs": [
            {"name": "image", "shape": [5, 1, 8, 8], "datatype": "FP32", "data": digits_images.ravel().tolist()}
        ],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
    }
    response = httpx.post(f"{node.url}/v2/models/digits/infer", json=body)
    assert response.status_code == 200
    assert HEADER_LENGTH in response.headers
    decoded = decode_response(response.content, int(response.headers[HEADER_LENGTH]), Limits())
    assert decoded.outputs[0].shape == [5, 10]


async def test_node_client_binary_and_json_agree(node: ServerProcess, digits_images: np.ndarray) -> None:
    async with aiohttp.ClientSession() as session:
        client = NodeClient(session)
        binary = await client.infer(node.url, "digits", [Tensor.of("image", digits_images)], timeout_s=5, binary=True)
        plain = await client.infer(node.url, "digits", [Tensor.of("image", digits_images)], timeout_s=5, binary=False)
        np.testing.assert_array_equal(binary.outputs[0].data, plain.outputs[0].data)
        with pytest.raises(NodeRejected) as caught:
            await client.infer(node.url, "digits", [Tensor.of("image", digits_images[:, :, :4, :4])], timeout_s=5)
        assert caught.value.status == 400


def _tensor(shape: list[int], datatype: str = "FP32", data: list[object] | None = None) -> dict[str, object]:
    count = int(np.prod(shape))
    return {"name": "image", "shape": shape, "datatype": datatype, "data": data if data is not None else [0.5] * count}


CHARLM = [
    {"name": "token", "shape": [1, 1], "datatype": "INT64", "data": [5]},
    {"name": "state", "shape": [1, 192], "datatype": "FP32", "data": [0.0] * 192},
]


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/v2/models/digits/infer", {"inputs": [_tensor([1, 1, 4, 4])]}, 400, "shape"),
        ("/v2/models/digits/infer", {"inputs": [_tensor([1, 1, 8, 8], "INT32", [1] * 64)]}, 400, "datatype"),
        ("/v2/models/digits/infer", {"inputs": [_tensor([1, 1, 8, 8], data=[0.5] * 63)]}, 400, "elements"),
        ("/v2/models/digits/infer", {"inputs": [_tensor([300, 1, 8, 8])]}, 400, "max_batch_size"),
        ("/v2/models/digits/infer", {"inputs": []}, 400, "inputs"),
        ("/v2/models/digits/infer", {"inputs": [{**_tensor([1, 1, 8, 8]), "name": "pixels"}]}, 400, "no input"),
        ("/v2/models/nope/infer", {"inputs": [_tensor([1, 1, 8, 8])]}, 404, "unknown model"),
        ("/v2/models/digits/versions/9/infer", {"inputs": [_tensor([1, 1, 8, 8])]}, 404, "version"),
        # Values only the runtime can judge (a token id beyond the vocabulary): still the caller's 400.
        ("/v2/models/charlm/infer", {"inputs": [*CHARLM, {**CHARLM[0], "data": [100_000]}][1:]}, 400, "input values"),
        # TorchScript words the same refusal as a RuntimeError: was a 500, which ejects a healthy node.
        pytest.param(
            "/v2/models/charlm_torchscript/infer",
            {"inputs": [*CHARLM, {**CHARLM[0], "data": [100_000]}][1:]},
            400,
            "input values",
            marks=pytest.mark.torch,
        ),
        pytest.param(
            "/v2/models/charlm_torchscript/infer",
            {"inputs": [*CHARLM, {**CHARLM[0], "data": [-5000]}][1:]},
            400,
            "out of bounds",
            marks=pytest.mark.torch,
        ),
        (
            "/v2/models/charlm/infer",
            {"inputs": [CHARLM[0], {**CHARLM[1], "shape": [2, 192], "data": [0.0] * 384}]},
            400,
            "batch",
        ),
    ],
)
def test_bad_json_requests_get_v2_errors(node: ServerProcess, path: str, body: object, status: int, words: str) -> None:
    response = httpx.post(node.url + path, json=body)
    assert response.status_code == status
    assert words in response.json()["error"]


def test_truncated_and_malformed_binary_get_400(node: ServerProcess, digits_images: np.ndarray) -> None:
    encoded = encode_request([Tensor.of("image", digits_images)], binary=True)
    url = f"{node.url}/v2/models/digits/infer"
    truncated = httpx.post(url, content=encoded.body[:-3], headers={HEADER_LENGTH: str(encoded.header_length)})
    assert truncated.status_code == 400
    assert "truncated" in truncated.json()["error"]
    bad_length = httpx.post(url, content=encoded.body, headers={HEADER_LENGTH: "abc"})
    assert bad_length.status_code == 400
    too_long = httpx.post(url, content=encoded.body, headers={HEADER_LENGTH: str(len(encoded.body) + 10)})
    assert too_long.status_code == 400
    not_json = httpx.post(url, content=b"\x00\x01garbage")
    assert not_json.status_code == 400


def test_body_over_the_node_limit_is_413(start_nodes: Callable[..., list[ServerProcess]]) -> None:
    (small,) = start_nodes("node-small", extra_args=["--max-body-bytes", "1000"])
    body = {"inputs": [_tensor([8, 1, 8, 8])]}
    response = httpx.post(f"{small.url}/v2/models/digits/infer", json=body)
    assert response.status_code == 413
    assert "limit" in response.json()["error"]


def test_sigterm_stops_the_node_cleanly(start_nodes: Callable[..., list[ServerProcess]]) -> None:
    (node,) = start_nodes("node-term", extra_args=["--log-level", "info"])
    code = node.stop(timeout_s=10)
    # uvicorn re-raises the signal after a clean shutdown; SIGKILL (-9) would mean it hung.
    assert code in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in node.output()
