"""A pipeline's explicit stage inputs are checked as `/inference` checks its own, before any stage runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway_plugin.dispatch import InferenceCall, Outcome
from gateway_plugin.settings import LimitSettings
from tests.integration.conftest import mounted, settings_for

API = "/api/v1/distributed"
IMAGE = [[0.0] * 8] * 8


@pytest.mark.parametrize(
    ("inputs", "status"),
    [
        ([[IMAGE]] * 20, 413),  # 20 rows over DISTINFER_MAX_BATCH_SIZE=16
        ([{"name": "image", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}], 400),  # not [-1, 1, 8, 8]
    ],
    ids=["over the batch limit", "wrong shape"],
)
async def test_a_bad_explicit_input_is_refused_before_any_stage_runs(
    repository: Path, monkeypatch: pytest.MonkeyPatch, inputs: Any, status: int
) -> None:
    """Regression: a stage's explicit inputs skipped the batch limit and the signature check: 200 rows
    past a limit of 16 ran, and a wrong shape ran the other stages first (`partial`)."""
    settings = settings_for([], local=repository, limits=LimitSettings(max_batch_size=16))
    async with mounted(settings) as (client, distributed):
        svc = await distributed.services()
        ran: list[str] = []
        real = svc.dispatcher.infer

        async def counted(call: InferenceCall) -> Outcome:
            ran.append(call.model)
            return await real(call)

        monkeypatch.setattr(svc.dispatcher, "infer", counted)
        stages = [
            {"id": "first", "model": "digits_a", "inputs": IMAGE},
            {"id": "bad", "model": "digits", "inputs": inputs},
        ]
        response = await client.post(f"{API}/inference/pipeline", json={"stages": stages})
        fine = await client.post(f"{API}/inference/pipeline", json={"stages": stages[:1]})
    assert response.status_code == status, response.text
    assert fine.status_code == 200, fine.text
    assert ran == ["digits_a"]  # only the good pipeline's stage ever ran
