"""`SignatureChecks`: a remembered verdict is the one the checks give, per model, header and limit."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from discovery.node import ModelInfo
from gateway_plugin.errors import PayloadTooLarge
from gateway_plugin.inputs import check_batch_size
from gateway_plugin.signature import SignatureChecks
from tests.unit.worker.test_codec import FAST
from worker.config import TensorSpec
from worker.engine import check_signature
from worker.errors import InvalidInput
from worker.protocol import Limits, Tensor, encode_request
from worker.protocol.checked import LazyTensors, check_request

IMAGE = (TensorSpec(name="image", datatype="FP32", shape=(-1, 4)),)
DIGITS = ModelInfo("digits", "1", "onnx", IMAGE, IMAGE, max_batch_size=8)
OTHER = ModelInfo("other", "1", "onnx", (TensorSpec(name="text", datatype="BYTES", shape=(-1,)),), IMAGE)


def _binary(rows: int, columns: int = 4, name: str = "image", dtype: type = np.float32) -> LazyTensors:
    encoded = encode_request([Tensor.of(name, np.zeros((rows, columns), dtype))], binary=True)
    return check_request(encoded.body, encoded.header_length, Limits())[1]


def _json(rows: int, columns: int = 4, name: str = "image", dtype: type = np.float32) -> LazyTensors:
    encoded = encode_request([Tensor.of(name, np.zeros((rows, columns), dtype))], binary=False)
    return check_request(encoded.body, encoded.header_length, Limits())[1]


def _verdict(check: Callable[[], None]) -> tuple[type[Exception], str] | None:
    try:
        check()
    except (PayloadTooLarge, InvalidInput) as exc:
        return type(exc), str(exc)
    return None


def _unremembered(info: ModelInfo, inputs: LazyTensors, limit: int) -> tuple[type[Exception], str] | None:
    def both() -> None:
        check_batch_size(info, inputs.meta, limit)
        check_signature(info.name, info.inputs, inputs.meta, max_batch_size=info.max_batch_size)

    return _verdict(both)


def test_a_repeated_binary_header_shares_its_meta_and_json_data_does_not() -> None:
    assert _binary(2).same_meta is not None
    assert _binary(2).same_meta is _binary(2).same_meta
    assert _binary(2).same_meta is not _binary(3).same_meta
    assert _json(2).same_meta is None


@FAST
@given(
    rows=st.integers(1, 12),
    columns=st.sampled_from([3, 4]),
    name=st.sampled_from(["image", "text"]),
    dtype=st.sampled_from([np.float32, np.int32]),
    limit=st.integers(1, 12),
    info=st.sampled_from([DIGITS, OTHER]),
    make=st.sampled_from([_binary, _json]),
)
def test_the_remembered_verdict_is_the_checks_verdict_every_time(
    rows: int, columns: int, name: str, dtype: type, limit: int, info: ModelInfo, make: Callable[..., LazyTensors]
) -> None:
    checks = SignatureChecks()
    expected = _unremembered(info, make(rows, columns, name, dtype), limit)
    for _ in range(3):  # computed, then remembered (a new request each time, as on the wire)
        inputs = make(rows, columns, name, dtype)
        assert _verdict(partial(checks.check, info, inputs, limit)) == expected


@pytest.mark.parametrize("make", [_binary, _json])
def test_the_verdict_is_kept_apart_per_model_per_shape_and_per_limit(make: Callable[[int], LazyTensors]) -> None:
    checks = SignatureChecks()
    checks.check(DIGITS, make(6), 8)  # fits
    with pytest.raises(InvalidInput, match="no input 'image'"):
        checks.check(OTHER, make(6), 8)  # the same tensors, another model
    with pytest.raises(PayloadTooLarge, match="batch of 6"):
        checks.check(DIGITS, make(6), 4)  # the same model and tensors, a lower limit
    with pytest.raises(InvalidInput, match="over max_batch_size 8"):
        checks.check(DIGITS, make(9), 64)  # the same model and limit, another shape
    checks.check(DIGITS, make(6), 8)  # and the first verdict still stands


def test_each_refusal_is_a_new_exception() -> None:
    checks = SignatureChecks()
    inputs = _binary(9)  # over the model's max_batch_size of 8
    raised = []
    for _ in range(2):
        with pytest.raises(InvalidInput, match="over max_batch_size 8") as caught:
            checks.check(DIGITS, inputs, 64)
        raised.append(caught.value)
    assert raised[0] is not raised[1]


def test_json_requests_with_the_same_tensors_share_one_verdict() -> None:
    checks = SignatureChecks()
    for _ in range(3):
        checks.check(DIGITS, _json(2), 8)
    checks.check(DIGITS, _json(3), 8)
    assert len(checks._verdicts) == 2


@pytest.mark.parametrize("make", [_binary, _json])
def test_the_memory_is_bounded(make: Callable[[int], LazyTensors]) -> None:
    checks = SignatureChecks(max_entries=4)
    for rows in range(1, 9):
        checks.check(DIGITS, make(rows), 64)
        assert len(checks._verdicts) <= 4


@pytest.mark.parametrize("make", [_binary, _json])
def test_one_memory_tells_tensors_apart_by_name_and_by_datatype(make: Callable[..., LazyTensors]) -> None:
    """Regression guard (review): every request above met a fresh memory or changed only its rows."""
    checks = SignatureChecks()
    checks.check(DIGITS, make(2, 4, "image", np.float32), 8)
    with pytest.raises(InvalidInput, match="no input 'text'"):
        checks.check(DIGITS, make(2, 4, "text", np.float32), 8)
    with pytest.raises(InvalidInput, match="datatype INT32"):
        checks.check(DIGITS, make(2, 4, "image", np.int32), 8)
    checks.check(DIGITS, make(2, 4, "image", np.float32), 8)


def test_json_requests_of_many_tensors_are_not_remembered() -> None:
    """Their key would be as large as the request: callers could fill memory with refused ones."""
    many = [Tensor.of(f"t{i}", np.zeros((1, 4), np.float32)) for i in range(9)]
    encoded = encode_request(many, binary=False)
    inputs = check_request(encoded.body, encoded.header_length, Limits())[1]
    checks = SignatureChecks()
    with pytest.raises(InvalidInput):
        checks.check(DIGITS, inputs, 8)
    assert not checks._verdicts
