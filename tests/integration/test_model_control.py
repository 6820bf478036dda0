"""Loading and unloading models on a running node (`--model-control-mode explicit`), with tritonclient,
the reference v2 client, and a gateway that follows what its node serves."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from gateway_plugin.processes import ServerProcess, start_gateway, start_node
from tests.integration.polling import until
from tests.integration.triton_client import triton_client

httpclient = pytest.importorskip("tritonclient.http")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

PREFIX = "/api/v1/distributed"


@pytest.fixture
def model_folder(tmp_path: Path, repository: Path) -> Path:
    """A repository of its own (the test rewrites it): digits, digits_b and digits_c."""
    for name in ("digits", "digits_b", "digits_c"):
        shutil.copytree(repository / name, tmp_path / name)
    return tmp_path


@contextlib.contextmanager
def _node(folder: Path, *extra: str) -> Iterator[ServerProcess]:
    node = start_node(folder, "node-mc", extra_args=list(extra))
    try:
        node.wait_ready()
        yield node
    finally:
        node.stop()


def _logits(client: Any, model: str, images: np.ndarray) -> np.ndarray:
    tensor = httpclient.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    return np.asarray(client.infer(model, [tensor]).as_numpy("logits"))


def _reference(weights: Path) -> Callable[[np.ndarray], np.ndarray]:
    session = ort.InferenceSession(str(weights), providers=["CPUExecutionProvider"])
    return lambda images: np.asarray(session.run(["logits"], {"image": images})[0])


def _index(client: Any) -> dict[str, tuple[str, str]]:
    return {row["name"]: (row.get("state", ""), row.get("reason", "")) for row in client.get_model_repository_index()}


def test_load_reload_and_unload_while_serving(model_folder: Path, digits_images: np.ndarray) -> None:
    b_weights = model_folder / "digits_b" / "model.onnx"
    served_b = _reference(b_weights)(digits_images)
    explicit = ("--model-control-mode", "explicit", "--models", "digits", "--batching", "on")
    with _node(model_folder, *explicit) as node, triton_client(node.url) as client:
        assert _index(client) == {
            "digits": ("READY", ""),
            "digits_b": ("UNAVAILABLE", "not loaded"),
            "digits_c": ("UNAVAILABLE", "not loaded"),
        }
        assert not client.is_model_ready("digits_b")

        client.load_model("digits_b")
        assert client.is_model_ready("digits_b")
        np.testing.assert_allclose(_logits(client, "digits_b", digits_images), served_b, atol=1e-5)
        # Regression (review): the batch queue gauge read a dict nothing filled any more.
        metrics = httpx.get(f"{node.url}/metrics").text
        for model in ("digits", "digits_b"):
            assert f'distinfer_node_queue_depth{{model="{model}"}} 0.0' in metrics, model

        # A reload reads the folder again: new weights are served, under the same name.
        shutil.copy(model_folder / "digits_c" / "model.onnx", b_weights)
        client.load_model("digits_b")
        reloaded = _logits(client, "digits_b", digits_images)
        np.testing.assert_allclose(reloaded, _reference(b_weights)(digits_images), atol=1e-5)
        assert not np.allclose(reloaded, served_b, atol=1e-3)

        # A failed reload leaves the copy that serves in place, and says why.
        b_weights.write_bytes(b"not an onnx model")
        with pytest.raises(InferenceServerException, match="failed to load model 'digits_b'"):
            client.load_model("digits_b")
        np.testing.assert_allclose(_logits(client, "digits_b", digits_images), reloaded, atol=1e-5)

        client.unload_model("digits_b")
        assert _index(client)["digits_b"] == ("UNAVAILABLE", "unloaded")
        assert not client.is_model_ready("digits_b")
        with pytest.raises(InferenceServerException, match=r"\[404\].*unloaded"):
            _logits(client, "digits_b", digits_images)
        client.unload_model("digits_b")  # unloading what is not loaded changes nothing, as Triton

        # A model that fails its first load is listed with the reason.
        with pytest.raises(InferenceServerException, match="failed to load model 'digits_b'"):
            client.load_model("digits_b")
        state, reason = _index(client)["digits_b"]
        assert state == "UNAVAILABLE"
        assert "InvalidProtobuf" in reason or "INVALID_PROTOBUF" in reason or "Load model" in reason, reason
        assert client.is_model_ready("digits")  # the others served throughout


def test_load_refuses_what_it_cannot_do(model_folder: Path) -> None:
    with _node(model_folder, "--model-control-mode", "explicit", "--models", "digits") as node:
        for name, status in (("nope", 404), ("..", 404), (".hidden", 404)):
            answer = httpx.post(f"{node.url}/v2/repository/models/{name}/load")
            assert answer.status_code == status, (name, answer.text)
            assert "error" in answer.json()
        override = httpx.post(
            f"{node.url}/v2/repository/models/digits_b/load", json={"parameters": {"config": '{"max_batch_size": 1}'}}
        )
        assert override.status_code == 400
        assert "'config' is not supported" in override.json()["error"]
        for body in (b"[1]", b"{", b'{"parameters": 3}'):
            bad = httpx.post(f"{node.url}/v2/repository/models/digits_b/load", content=body)
            assert bad.status_code == 400, body
        assert httpx.post(f"{node.url}/v2/models/digits_b/ready").status_code == 405  # nothing loaded by those


def test_model_control_is_off_by_default(model_folder: Path) -> None:
    with _node(model_folder) as node, triton_client(node.url) as client:
        for call in (client.load_model, client.unload_model):
            with pytest.raises(InferenceServerException, match="--model-control-mode explicit"):
                call("digits")
        assert client.is_model_ready("digits")
        assert {row["name"] for row in client.get_model_repository_index()} == {"digits", "digits_b", "digits_c"}


async def test_the_gateway_follows_nodes_that_load_and_unload(model_folder: Path, digits_images: np.ndarray) -> None:
    body = {"model": "digits_b", "inputs": digits_images[:1].tolist()}
    explicit = ("--model-control-mode", "explicit", "--models", "digits")
    with _node(model_folder, *explicit) as node, _node(model_folder, *explicit, "--node-id", "node-2") as other:
        gateway = start_gateway(
            {
                "DISTINFER_NODES": f"{node.url},{other.url}",
                "DISTINFER_AUTH_DISABLED": "true",
                "DISTINFER_PROBE_INTERVAL_S": "0.2",
                "DISTINFER_EJECT_CONSECUTIVE_FAILURES": "1",  # one failure held against a node shows
            }
        )
        try:
            gateway.wait_ready()
            async with httpx.AsyncClient(base_url=gateway.url + PREFIX) as client:

                async def status() -> int:
                    return (await client.post("/inference", json=body)).status_code

                assert await status() == 404
                for each in (node, other):
                    (await client.post(f"{each.url}/v2/repository/models/digits_b/load")).raise_for_status()
                await until(lambda: _is(status(), 200))
                # Regression (review): a node that unloaded a model answered its calls 503, which the
                # gateway held against the whole node (breaker open, ejected for every model it serves).
                (await client.post(f"{node.url}/v2/repository/models/digits_b/unload")).raise_for_status()
                answers = [await client.post("/inference", json=body) for _ in range(12)]
                assert [a.status_code for a in answers] == [200] * 12
                assert {a.headers["x-inference-node"] for a in answers} <= {"node-mc", "node-2"}
                nodes = {n["node_id"]: n for n in (await client.get("/nodes")).json()}
                assert nodes["node-mc"]["status"] == "online", nodes["node-mc"]
                await until(lambda: _is(_served_by(client, body), "node-2"))  # the prober saw the unload
                (await client.post(f"{other.url}/v2/repository/models/digits_b/unload")).raise_for_status()
                await until(lambda: _is(status(), 404))
        finally:
            gateway.stop()


async def _served_by(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    answers = [await client.post("/inference", json=body) for _ in range(4)]
    nodes = {a.headers["x-inference-node"] for a in answers}
    return nodes.pop() if len(nodes) == 1 else ",".join(sorted(nodes))


async def _is(value: Awaitable[object], expected: object) -> bool:
    return await value == expected
