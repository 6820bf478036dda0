"""What `/inference/parallel` answers when no model answered: the models' own verdicts decide it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway_plugin.dispatch import InferenceCall, Outcome
from gateway_plugin.errors import BadRequest, DeadlineExceeded, DistinferError, NoCapacity, UnknownModel
from tests.integration.conftest import mounted, settings_for

API = "/api/v1/distributed"
IMAGE = [[0.0] * 8] * 8


@pytest.mark.parametrize(
    ("verdicts", "status", "code"),
    [
        # Regression: a mix of client errors was a 503, which clients retry forever.
        ({"digits_a": UnknownModel("no such model"), "digits_b": BadRequest("bad tensor")}, 400, "bad_request"),
        ({"digits_a": BadRequest("bad tensor"), "digits_b": BadRequest("bad tensor")}, 400, "bad_request"),
        # Regression: every call running out of its own deadline first was a 503, not the 504 it is.
        ({"digits_a": DeadlineExceeded("late"), "digits_b": DeadlineExceeded("late")}, 504, "deadline_exceeded"),
        ({"digits_a": NoCapacity("down"), "digits_b": DeadlineExceeded("late")}, 503, "no_capacity"),
    ],
)
async def test_when_no_model_answers_the_status_says_why(
    repository: Path, monkeypatch: pytest.MonkeyPatch, verdicts: dict[str, DistinferError], status: int, code: str
) -> None:
    async with mounted(settings_for([], local=repository)) as (client, distributed):
        svc = await distributed.services()

        async def refuse(call: InferenceCall) -> Outcome:
            raise verdicts[call.model]

        monkeypatch.setattr(svc.dispatcher, "infer", refuse)
        response = await client.post(f"{API}/inference/parallel", json={"models": list(verdicts), "inputs": IMAGE})
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    assert body["answered"] == 0
    assert sorted(entry["error"]["status"] for entry in body["responses"]) == sorted(
        error.status for error in verdicts.values()
    )


async def test_v2_tensors_are_decoded_once_for_all_models(repository: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: each model decoded the same input again: 16 models held 16 copies of one body."""
    tensors = [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]
    async with mounted(settings_for([], local=repository)) as (client, distributed):
        svc = await distributed.services()
        calls: list[InferenceCall] = []
        real = svc.dispatcher.infer

        async def seen(call: InferenceCall) -> Outcome:
            calls.append(call)
            return await real(call)

        monkeypatch.setattr(svc.dispatcher, "infer", seen)
        models = ["digits_a", "digits_b", "digits_c"]
        response = await client.post(f"{API}/inference/parallel", json={"models": models, "inputs": tensors})
        bad = [{**tensors[0], "data": [0.0] * 63}]  # one value short: each model's 400, as before
        refused = await client.post(f"{API}/inference/parallel", json={"models": models, "inputs": bad})
    assert response.status_code == 200, response.text
    assert len(calls) == 3
    assert all(call.inputs[0] is calls[0].inputs[0] for call in calls)
    assert refused.status_code == 400, refused.text
    assert [entry["error"]["status"] for entry in refused.json()["responses"]] == [400, 400, 400]
