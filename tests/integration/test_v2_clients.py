"""tritonclient, the reference v2 client, against a distinfer node and against the gateway's v2 relay."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway_plugin.processes import ServerProcess, free_port, start_gateway
from tests.integration.conftest import TEST_JWT_SECRET, StartNodes, mounted, settings_for
from tests.integration.polling import until
from tests.integration.triton_client import triton_client

httpclient = pytest.importorskip("tritonclient.http")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

PREFIX = "/api/v1/distributed"


@pytest.fixture(scope="module")
def gateway(two_nodes: list[ServerProcess], repository: Path) -> Iterator[ServerProcess]:
    process = start_gateway({"DISTINFER_NODES": ",".join(n.url for n in two_nodes), "DISTINFER_AUTH_DISABLED": "true"})
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def _infer(base_url: str, images: np.ndarray, *, binary: bool) -> np.ndarray:
    tensor = httpclient.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary)
    wanted = httpclient.InferRequestedOutput("logits", binary_data=binary)
    with triton_client(base_url) as client:
        result = client.infer("digits", [tensor], outputs=[wanted], request_id="t-1")
    assert result.get_response()["id"] == "t-1"
    return np.asarray(result.as_numpy("logits"))


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_calls_a_node(
    two_nodes: list[ServerProcess],
    digits_images: np.ndarray,
    onnx_digits: Callable[[np.ndarray], np.ndarray],
    binary: bool,
) -> None:
    with triton_client(two_nodes[0].url) as client:
        assert client.is_server_live()
        assert client.is_model_ready("digits")
        assert client.get_model_metadata("digits")["inputs"][0]["shape"] == [-1, 1, 8, 8]
    np.testing.assert_allclose(
        _infer(two_nodes[0].url, digits_images, binary=binary), onnx_digits(digits_images), atol=1e-5
    )


def test_a_route_a_node_lacks_reaches_tritonclient_as_a_v2_error(two_nodes: list[ServerProcess]) -> None:
    """Regression: the node answered unknown routes in FastAPI's {"detail": ...} and tritonclient
    failed decoding it ('an exception occurred in the client while decoding the response')."""
    with triton_client(two_nodes[0].url) as client, pytest.raises(InferenceServerException, match="Not Found"):
        client.get_model_config("digits")  # no model configuration extension here
    wrong = httpx.delete(f"{two_nodes[0].url}/v2/models/digits/infer")
    assert (wrong.status_code, wrong.json()) == (405, {"error": "Method Not Allowed"})
    assert "POST" in wrong.headers["allow"]


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_calls_the_gateway_relay(
    gateway: ServerProcess,
    digits_images: np.ndarray,
    onnx_digits: Callable[[np.ndarray], np.ndarray],
    binary: bool,
) -> None:
    logits = _infer(gateway.url + PREFIX, digits_images, binary=binary)
    np.testing.assert_allclose(logits, onnx_digits(digits_images), atol=1e-5)


def test_tritonclient_reads_the_gateways_health_and_model_metadata(
    gateway: ServerProcess, two_nodes: list[ServerProcess]
) -> None:
    """Regression (review): only `infer` existed under the prefix; tritonclient's readiness checks
    said False and `get_model_metadata` failed to decode FastAPI's 404."""
    with triton_client(gateway.url + PREFIX) as client:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("digits")
        assert client.is_model_ready("digits", model_version="1")
        assert not client.is_model_ready("no-such-model")
        assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
        metadata = client.get_model_metadata("digits")
        with triton_client(two_nodes[0].url) as direct:
            assert metadata["inputs"] == direct.get_model_metadata("digits")["inputs"]
        assert metadata["outputs"][0]["name"] == "logits"
        with pytest.raises(InferenceServerException, match="no node and no local copy"):
            client.get_model_metadata("no-such-model")
        with pytest.raises(InferenceServerException, match="no version"):
            client.get_model_metadata("digits", model_version="9")


def test_the_gateway_is_not_ready_for_tritonclient_while_no_node_can_serve() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    process = start_gateway({"DISTINFER_NODES": dead, "DISTINFER_AUTH_DISABLED": "true"})
    try:
        process.wait_ready()
        with triton_client(process.url + PREFIX) as client:
            assert client.is_server_live()
            assert not client.is_server_ready()
            assert not client.is_model_ready("digits")  # nobody describes it: 404
        ready = httpx.get(f"{process.url}{PREFIX}/v2/models/digits/ready")
        assert ready.status_code == 404
        assert ready.headers["content-type"] == "application/problem+json"
    finally:
        process.stop()


def test_relay_errors_reach_tritonclient_with_their_message(gateway: ServerProcess) -> None:
    tensor = httpclient.InferInput("image", [1, 1, 4, 4], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1, 4, 4), dtype=np.float32))
    with triton_client(gateway.url + PREFIX) as client, pytest.raises(InferenceServerException, match="shape"):
        client.infer("digits", [tensor])


def test_relay_answers_truncated_binary_with_problem_json(gateway: ServerProcess) -> None:
    header = b'{"inputs":[{"name":"image","shape":[1,1,8,8],"datatype":"FP32","parameters":{"binary_data_size":256}}]}'
    response = httpx.post(
        f"{gateway.url}{PREFIX}/v2/models/digits/infer",
        content=header + b"\x00" * 10,  # 10 of the 256 bytes promised
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert "truncated" in body["detail"]
    assert body["error"] == body["detail"]


def test_relay_refuses_a_batch_over_the_gateway_limit(two_nodes: list[ServerProcess]) -> None:
    """The relay applies the same batch-size limit as /inference (it used to skip it)."""
    process = start_gateway(
        {
            "DISTINFER_NODES": ",".join(n.url for n in two_nodes),
            "DISTINFER_AUTH_DISABLED": "true",
            "DISTINFER_MAX_BATCH_SIZE": "4",
        }
    )
    try:
        process.wait_ready()
        tensor = httpclient.InferInput("image", [5, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(np.zeros((5, 1, 8, 8), dtype=np.float32))
        with (
            triton_client(process.url + PREFIX) as client,
            pytest.raises(InferenceServerException, match="over the limit"),
        ):
            client.infer("digits", [tensor])
    finally:
        process.stop()


async def test_a_known_model_whose_nodes_are_gone_is_not_ready_503(start_nodes: StartNodes) -> None:
    (node,) = start_nodes("v2-ready")
    async with mounted(settings_for([node.url])) as (client, _):
        ready = f"{PREFIX}/v2/models/digits/ready"
        await until(lambda: _status(client, ready, 200))
        node.kill()
        await until(lambda: _status(client, ready, 503))
        response = await client.get(ready)
        metadata = await client.get(f"{PREFIX}/v2/models/digits")  # still described: the node listed it
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "no_capacity"
    assert response.json()["error"] == response.json()["detail"]
    assert metadata.status_code == 200


async def _status(client: httpx.AsyncClient, path: str, status: int) -> bool:
    return (await client.get(path)).status_code == status


@pytest.mark.parametrize(
    ("request_default", "own", "binary"),
    [(True, False, False), (False, True, True), (True, None, True), (None, None, False)],
)
def test_an_outputs_own_binary_data_overrides_binary_data_output(
    two_nodes: list[ServerProcess], request_default: bool | None, own: bool | None, binary: bool
) -> None:
    """Regression (audit): `binary_data_output: true` won over an output's `binary_data: false`,
    which the binary extension says overrides it."""
    body: dict[str, Any] = {
        "inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}],
        "outputs": [{"name": "logits", **({} if own is None else {"parameters": {"binary_data": own}})}],
    }
    if request_default is not None:
        body["parameters"] = {"binary_data_output": request_default}
    answer = httpx.post(f"{two_nodes[0].url}/v2/models/digits/infer", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    assert ("inference-header-content-length" in answer.headers) is binary
    if not binary:
        (output,) = answer.json()["outputs"]
        assert len(output["data"]) == 10


def test_every_v2_error_of_the_gateway_reaches_tritonclient_with_its_message(
    gateway: ServerProcess, two_nodes: list[ServerProcess]
) -> None:
    """Regression (audit): refusals before a v2 route ran (auth's 401, 405) and paths of extensions
    the gateway lacks (404) had no v2 `error` member, and tritonclient failed decoding them."""
    # tritonclient puts a body it cannot decode into its message: match the message it reads alone
    with triton_client(gateway.url + PREFIX) as client:
        with pytest.raises(InferenceServerException, match=r"^\[404\] no such path"):
            client.get_model_config("digits")
        with pytest.raises(InferenceServerException, match=r"^\[404\] no such path"):
            client.load_model("digits")
    for path in ("/v2/repository/index", "/v2/models/digits/stats", "/v2/nope"):
        missing = httpx.get(f"{gateway.url}{PREFIX}{path}")
        assert missing.status_code == 404
        assert missing.json()["error"].startswith("no such path")
    wrong = httpx.delete(f"{gateway.url}{PREFIX}/v2/models/digits")
    assert wrong.status_code == 405
    assert "not allowed" in wrong.json()["error"]
    elsewhere = httpx.get(f"{gateway.url}{PREFIX}/no/such/path")  # not a v2 path: problem+json only
    assert elsewhere.status_code == 404
    assert "error" not in elsewhere.json()
    secured = start_gateway(
        {"DISTINFER_NODES": ",".join(n.url for n in two_nodes), "DISTINFER_JWT_SECRET": TEST_JWT_SECRET}
    )
    try:
        secured.wait_ready()
        with triton_client(secured.url + PREFIX) as client:
            with pytest.raises(InferenceServerException, match=r"^\[401\] a bearer token"):
                client.get_model_metadata("digits")
            with pytest.raises(InferenceServerException, match=r"^\[401\] a bearer token"):
                client.get_server_metadata()
    finally:
        secured.stop()


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_tritonclient_compressed_requests_reach_node_and_gateway(
    gateway: ServerProcess,
    two_nodes: list[ServerProcess],
    digits_images: np.ndarray,
    onnx_digits: Callable[[np.ndarray], np.ndarray],
    compression: str,
) -> None:
    """Regression: a body tritonclient compressed (request_compression_algorithm, which Triton
    decodes) was read as it came and refused with a misleading framing 400 by node and gateway."""
    tensor = httpclient.InferInput("image", list(digits_images.shape), "FP32")
    tensor.set_data_from_numpy(digits_images, binary_data=True)
    for base_url in (two_nodes[0].url, gateway.url + PREFIX):
        with triton_client(base_url) as client:
            result = client.infer(
                "digits",
                [tensor],
                request_compression_algorithm=compression,
                response_compression_algorithm=compression,
            )
        np.testing.assert_allclose(result.as_numpy("logits"), onnx_digits(digits_images), atol=1e-5)


def test_a_content_coding_nobody_decodes_is_415_with_the_codings_that_are(
    gateway: ServerProcess, two_nodes: list[ServerProcess]
) -> None:
    headers = {"Content-Encoding": "br", "Content-Type": "application/json"}
    node = httpx.post(f"{two_nodes[0].url}/v2/models/digits/infer", content=b"{}", headers=headers)
    relayed = httpx.post(f"{gateway.url}{PREFIX}/v2/models/digits/infer", content=b"{}", headers=headers)
    routed = httpx.post(f"{gateway.url}{PREFIX}/inference", content=b"{}", headers=headers)
    for answer in (node, relayed, routed):
        assert answer.status_code == 415, answer.text
        assert answer.headers["accept-encoding"] == "gzip, deflate"
        assert "not supported" in answer.json()["error" if answer is not routed else "detail"]
    assert relayed.headers["content-type"] == routed.headers["content-type"] == "application/problem+json"
    assert relayed.json()["code"] == "unsupported_media_type"
    assert routed.headers["x-inference-node"] == "none"


def test_gzip_bodies_are_capped_by_what_they_inflate_to(gateway: ServerProcess, digits_images: np.ndarray) -> None:
    """A few KB of gzip that inflate past the body limit are refused (413), at /inference too,
    where a decoded gzip body is served like a plain one."""
    bomb = gzip.compress(b" " * (80 * 1024 * 1024))  # over the gateway's 16 MiB default body limit
    for url in (f"{gateway.url}{PREFIX}/v2/models/digits/infer", f"{gateway.url}{PREFIX}/inference"):
        refused = httpx.post(url, content=bomb, headers={"Content-Encoding": "gzip"}, timeout=30)
        assert refused.status_code == 413, refused.text
    body = json.dumps({"model": "digits", "inputs": digits_images[:2].tolist()}).encode()
    served = httpx.post(
        f"{gateway.url}{PREFIX}/inference",
        content=gzip.compress(body),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert served.status_code == 200, served.text
    assert len(served.json()["outputs"][0]["data"]) == 20
