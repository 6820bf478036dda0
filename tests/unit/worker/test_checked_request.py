"""`check_request`: the relay's header-only checks agree with `decode_request`, and decode lazily."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.worker.test_codec import FAST, FUZZ, assert_same_tensor, request_body, tensor_lists
from worker.errors import InvalidInput, PayloadTooLarge, WorkerError
from worker.protocol import Limits, Tensor, checked, decode_request, encode_request
from worker.protocol.checked import check_request

SMALL = Limits(max_tensor_elements=64, max_string_bytes=16)
BINARY_4 = {"binary_data_size": 4}


def _outcome(action: Any) -> type[BaseException] | None:
    try:
        action()
    except WorkerError as exc:
        return type(exc)
    return None


@FAST
@given(inputs=tensor_lists(text_only=True, finite=True), binary=st.booleans())  # JSON: no NaN, no infinity
def test_valid_requests_pass_and_decode_lazily_to_the_same_tensors(inputs: list[Tensor], binary: bool) -> None:
    encoded = encode_request(inputs, request_id="r", binary=binary)
    decoded, lazy = check_request(encoded.body, encoded.header_length, Limits())
    assert decoded.id == "r"
    assert [meta.name for meta in lazy.meta] == [tensor.name for tensor in inputs]
    assert [list(meta.shape) for meta in lazy.meta] == [tensor.shape for tensor in inputs]
    assert len(decoded.inputs) == len(inputs)
    for expected, actual in zip(inputs, decoded.inputs, strict=True):
        assert_same_tensor(expected, actual, bitwise=binary)


def _mutations(body: bytes, length: int | None) -> st.SearchStrategy[tuple[bytes, int | None]]:
    """A valid body cut short, padded, with one byte changed, or with a wrong header length."""
    size = len(body)
    cut = st.integers(min_value=0, max_value=max(size - 1, 0)).map(lambda n: (body[:n], length))
    padded = st.binary(min_size=1, max_size=8).map(lambda extra: (body + extra, length))
    flipped = st.tuples(st.integers(min_value=0, max_value=max(size - 1, 0)), st.integers(0, 255)).map(
        lambda at: (body[: at[0]] + bytes([at[1]]) + body[at[0] + 1 :], length)
    )
    other_length = st.none() | st.integers(min_value=0, max_value=size + 4)
    return cut | padded | flipped | other_length.map(lambda n: (body, n))


@FUZZ
@given(inputs=tensor_lists(), binary=st.booleans(), data=st.data())
def test_check_request_refuses_exactly_what_decode_request_refuses(
    inputs: list[Tensor], binary: bool, data: st.DataObject
) -> None:
    """Whatever the body: the same verdict (and class of error), and inputs that read without fail."""
    encoded = encode_request(inputs, binary=binary)
    body, length = data.draw(_mutations(encoded.body, encoded.header_length))
    assert_check_agrees_with_decoding(body, length, SMALL)


def assert_check_agrees_with_decoding(body: bytes, length: int | None, limits: Limits) -> None:
    """`check_request` and `decode_request` give the same verdict, and the checked inputs read as decoded."""
    decoding = _outcome(lambda: decode_request(body, length, limits))
    checking = _outcome(lambda: check_request(body, length, limits))
    assert checking is decoding
    if checking is None:
        _, lazy = check_request(body, length, limits)
        expected = decode_request(body, length, limits).inputs
        for want, got in zip(expected, list(lazy), strict=True):
            assert_same_tensor(want, got, bitwise=True)


@pytest.mark.parametrize(
    ("entry", "blob", "error"),
    [
        ({"name": "x", "shape": [2], "datatype": "FP99", "data": [1, 2]}, b"", InvalidInput),
        ({"name": "x", "shape": [65], "datatype": "FP32", "data": [0] * 65}, b"", PayloadTooLarge),
        ({"name": "x", "shape": [2], "datatype": "FP32", "data": 5}, b"", InvalidInput),
        ({"name": "x", "shape": [2], "datatype": "FP32", "parameters": BINARY_4}, b"\0" * 4, InvalidInput),
        ({"name": "x", "shape": [1], "datatype": "FP32", "parameters": BINARY_4}, b"\0" * 2, InvalidInput),
    ],
    ids=["datatype", "element-limit", "data-not-a-list", "size-vs-shape", "truncated"],
)
def test_header_faults_are_found_without_decoding(entry: dict[str, Any], blob: bytes, error: type[Exception]) -> None:
    body, length = request_body(entry, blob=blob)
    with pytest.raises(error):
        check_request(body, length, SMALL)


def test_duplicate_names_are_refused() -> None:
    entry = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}
    body, length = request_body(entry, entry)
    with pytest.raises(InvalidInput, match="unique"):
        check_request(body, length, SMALL)


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ({"name": "x", "shape": [3], "datatype": "FP32", "data": [1.0, 2.0]}, InvalidInput),
        ({"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}, InvalidInput),
        ({"name": "x", "shape": [1], "datatype": "BYTES", "data": ["x" * 17]}, PayloadTooLarge),
    ],
    ids=["count", "range", "string-limit"],
)
def test_json_data_is_checked_by_decoding_it_at_once(entry: dict[str, Any], error: type[Exception]) -> None:
    """JSON data has no cheaper check than decoding: a request with any is decoded by the check itself."""
    body = json.dumps({"inputs": [entry]}).encode()
    with pytest.raises(error):
        check_request(body, None, SMALL)


def test_inputs_are_decoded_once_and_only_when_read(monkeypatch: pytest.MonkeyPatch) -> None:
    import worker.protocol.checked as checked

    calls: list[int] = []
    real = checked._decode_tensors

    def counting(*args: Any) -> list[Tensor]:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(checked, "_decode_tensors", counting)
    encoded = encode_request([Tensor.of("x", np.arange(4, dtype=np.float32))], binary=True)
    decoded, lazy = check_request(encoded.body, encoded.header_length, SMALL)  # fixed-size binary: lazy
    assert calls == []
    assert lazy[0].data.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert [t.name for t in decoded.inputs] == ["x"]
    assert calls == [1]


def _verdict(action: Any) -> tuple[type[BaseException], str] | None:
    try:
        action()
    except WorkerError as exc:
        return type(exc), exc.message
    return None


@FUZZ
@given(inputs=tensor_lists(), data=st.data())
def test_a_remembered_header_gives_the_verdict_a_fresh_check_gives(inputs: list[Tensor], data: st.DataObject) -> None:
    """The same header before other bytes (cut, padded, changed): the same error and message, cached or not."""
    encoded = encode_request(inputs, binary=True)
    body, length = data.draw(_mutations(encoded.body, encoded.header_length))
    checked._remembered_verdict.cache_clear()
    fresh = _verdict(lambda: check_request(body, length, SMALL))
    remembered = _verdict(lambda: check_request(body, length, SMALL))
    checked._remembered_verdict.cache_clear()
    _verdict(lambda: check_request(encoded.body, encoded.header_length, SMALL))  # the header seen intact first
    after_intact = _verdict(lambda: check_request(body, length, SMALL))
    assert fresh == remembered == after_intact
    assert fresh == _verdict(lambda: decode_request(body, length, SMALL))


def test_a_repeated_binary_header_is_parsed_once_and_a_json_body_never_remembered() -> None:
    checked._remembered_verdict.cache_clear()
    for value in (1.0, 2.0, 3.0):  # same names and shapes, other data: the same header
        encoded = encode_request([Tensor.of("x", np.full(4, value, dtype=np.float32))], binary=True)
        _, lazy = check_request(encoded.body, encoded.header_length, SMALL)
        assert lazy[0].data.tolist() == [value] * 4  # each request's own bytes
    assert (checked._remembered_verdict.cache_info().misses, checked._remembered_verdict.cache_info().hits) == (1, 2)
    as_json = encode_request([Tensor.of("x", np.zeros(4, dtype=np.float32))], binary=False)
    check_request(as_json.body, as_json.header_length, SMALL)
    assert checked._remembered_verdict.cache_info().currsize == 1


def test_what_one_request_changes_does_not_reach_the_next_with_the_same_header() -> None:
    encoded = encode_request(
        [Tensor.of("x", np.zeros(4, dtype=np.float32))], parameters={"priority": 1}, outputs=["y"], binary=True
    )
    first, _ = check_request(encoded.body, encoded.header_length, SMALL)
    assert first.outputs is not None
    first.parameters["priority"] = 99
    first.outputs.clear()
    second, _ = check_request(encoded.body, encoded.header_length, SMALL)
    assert second.parameters == {"priority": 1, "binary_data_output": True}
    assert [out.name for out in second.outputs or []] == ["y"]


@pytest.mark.parametrize(
    ("entry", "blob"),
    [
        ({"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 8}}, b"\0" * 4),
        ({"name": "x", "shape": [1], "datatype": "FP99", "parameters": BINARY_4}, b"\0" * 2),
        ({"name": "x", "shape": [99], "datatype": "FP32", "parameters": {"binary_data_size": 396}}, b"\0" * 8),
    ],
    ids=["size-vs-shape", "datatype", "element-limit"],
)
def test_a_truncated_body_is_reported_before_the_headers_own_fault(entry: dict[str, Any], blob: bytes) -> None:
    """Both wrong: the error `decode_request` gives (truncation first), whether the header is remembered or not."""
    body, length = request_body(entry, blob=blob)
    expected = _verdict(lambda: decode_request(body, length, SMALL))
    assert expected is not None
    assert "truncated" in expected[1]
    checked._remembered_verdict.cache_clear()
    assert _verdict(lambda: check_request(body, length, SMALL)) == expected
    assert _verdict(lambda: check_request(body, length, SMALL)) == expected


@pytest.mark.parametrize(
    ("first", "second", "blob"),
    [
        # a: over the element limit (413); b: a byte count that is no count (400). Decoding meets a first.
        ({"name": "a", "shape": [99], "datatype": "FP32", "parameters": {"binary_data_size": 0}}, -1, b""),
        ({"name": "a", "shape": [1], "datatype": "FP99", "parameters": BINARY_4}, "x", b"\0" * 4),
        ({"name": "a", "shape": [1], "datatype": "FP32", "parameters": BINARY_4}, -1, b"\0" * 2),  # a truncated
        ({"name": "a", "shape": [1], "datatype": "FP32", "parameters": BINARY_4}, -1, b"\0" * 4),  # only b is wrong
    ],
    ids=["limit-then-count", "datatype-then-count", "truncated-then-count", "count"],
)
def test_the_first_tensors_fault_wins_as_in_decode_request(first: dict[str, Any], second: object, blob: bytes) -> None:
    """Regression: every tensor's binary_data_size was checked before any tensor's own checks, so a
    later tensor's bad count (400) hid an earlier tensor's fault (a 413, say)."""
    entry = {"name": "b", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": second}}
    body, length = request_body(first, entry, blob=blob)
    expected = _verdict(lambda: decode_request(body, length, SMALL))
    assert expected is not None
    checked._remembered_verdict.cache_clear()
    assert _verdict(lambda: check_request(body, length, SMALL)) == expected
    assert _verdict(lambda: check_request(body, length, SMALL)) == expected  # remembered
