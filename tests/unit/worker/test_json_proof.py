"""`json_proof`: a JSON tensor proven to decode does decode, and the relay's check stays exact.

The proof lets `check_request` skip building numpy arrays for small JSON tensors; if it ever
vouched for data the decoder refuses, the relay would forward a request `/inference` refuses.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.worker.test_checked_request import assert_check_agrees_with_decoding
from tests.unit.worker.test_codec import FUZZ
from worker.errors import InvalidInput
from worker.protocol import Limits, Tensor
from worker.protocol.checked import check_request
from worker.protocol.codec import tensor_from_json
from worker.protocol.datatypes import DATATYPES
from worker.protocol.json_proof import MAX_PROVEN_ELEMENTS, decodes_cleanly
from worker.protocol.models import WireTensor

NUMERIC = sorted(name for name in DATATYPES if name != "BYTES")

# Mostly plain values, with the edges the decoder cares about: bools among numbers, integers
# beyond every range, floats beyond FP16/FP32, non-finite floats, strings and nulls.
plain = st.one_of(st.integers(-300, 300), st.floats(-7e4, 7e4, allow_nan=False), st.booleans())
edges = st.one_of(
    st.integers(min_value=-(2**65), max_value=2**65),
    st.sampled_from([2**53, 2**53 + 1, 2**63, 2**64 - 1, 2**129, 65504.0, 65520.0, 70000, -70000, 3.5e38, 1e308]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.text(max_size=2),
)
scalars = st.one_of(plain, plain, plain, edges)


def _nest(flat: list[Any], shape: list[int]) -> Any:
    if len(shape) <= 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


@st.composite
def json_tensors(draw: st.DrawFn) -> tuple[str, list[int], Any]:
    """A datatype, a shape, and data: values of the datatype's kind, often with one odd value among
    them, nested as the shape, flat, as another shape, ragged, one value too many, or no list at all."""
    datatype = draw(st.sampled_from(NUMERIC))
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
    count = int(np.prod(shape)) if shape else 1
    pool: st.SearchStrategy[Any] = plain
    if datatype == "BOOL":
        pool = st.booleans()
    elif datatype.startswith(("INT", "UINT")):
        pool = st.integers(-300, 300)
    layout = draw(st.sampled_from(["as-shape", "as-shape", "flat", "other-shape", "ragged", "off-by-one", "scalar"]))
    if layout == "scalar":
        return datatype, shape, draw(scalars | st.dictionaries(st.text(max_size=2), plain, max_size=2))
    if layout == "ragged":
        return datatype, shape, draw(st.lists(st.lists(pool, max_size=3) | pool, max_size=5))
    size = count + (1 if layout == "off-by-one" else 0)
    flat: list[Any] = draw(st.lists(pool, min_size=size, max_size=size))
    if flat and draw(st.booleans()):  # one odd value: what the proof must notice
        flat[draw(st.integers(0, size - 1))] = draw(edges | scalars)
    nesting = shape if layout == "as-shape" else [size] if layout == "flat" else [1, size]
    return datatype, shape, _nest(flat, nesting)


@FUZZ
@given(tensor=json_tensors())
def test_data_proven_to_decode_does_decode_to_what_was_sent(tensor: tuple[str, list[int], Any]) -> None:
    datatype, shape, data = tensor
    count = int(np.prod(shape)) if shape else 1
    if decodes_cleanly(datatype, count, data):
        decoded = tensor_from_json(WireTensor(name="x", datatype=datatype, shape=shape, data=data), Limits())
        assert decoded.shape == shape
        assert np.array_equal(decoded.data.ravel(), np.asarray(data).astype(DATATYPES[datatype]).ravel())


@FUZZ
@given(tensor=json_tensors())
def test_the_relays_check_refuses_exactly_what_decoding_refuses(tensor: tuple[str, list[int], Any]) -> None:
    """Whatever the JSON data: the same verdict, and lazily built tensors equal to the decoder's."""
    datatype, shape, data = tensor
    body = json.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}]}).encode()
    assert_check_agrees_with_decoding(body, None, Limits(max_tensor_elements=64))


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        ("FP32", [1.0, 2, -3.5, 0.0]),
        ("FP32", [1.0, True, 2.0, False]),  # numpy's decoder casts bools among numbers: 1.0, 0.0
        ("FP64", [2**53, -(2**53), 0.5, 1]),
        ("FP16", [[65504.0, -65504.0], [1, 2]]),
        ("INT8", [-128, 127, 0, 1]),
        ("UINT64", [2**64 - 1, 0, 1, 2]),
        ("BOOL", [[True, False], [False, True]]),
    ],
)
def test_plain_data_is_proven(datatype: str, data: Any) -> None:
    assert decodes_cleanly(datatype, 4, data)


@pytest.mark.parametrize(
    ("datatype", "data", "why"),
    [
        ("FP32", [1.0, 2.0, 3.0], "too few values"),
        ("FP32", [[1.0, 2.0], [3.0]], "ragged"),
        ("FP32", [[1.0, 2.0], 3.0, 4.0], "lists mixed with scalars"),
        ("FP32", [1.0, 2.0, 3.0, 3.5e38], "beyond FP32: infinity after the cast"),
        ("FP16", [1.0, 2.0, 3.0, 70000], "an integer beyond FP16"),
        ("FP64", [1.0, 2.0, 3.0, 2**60], "an integer a float64 does not hold exactly"),
        ("FP64", [1.0, 2.0, 3.0, float("nan")], "not finite"),
        ("FP64", [float("nan"), 2.0, 3.0, 1e300], "not finite, first"),
        ("FP32", [float("inf"), float("-inf"), 1.0, 2.0], "infinities"),
        ("FP64", [1.0, 2.0, 3.0, 2**53 + 1], "an integer beyond 2**53"),
        ("FP64", [1e308, 1e308, 1.0, 2.0], "beyond 2**53, its sum infinite"),
        ("FP64", [1.0, 2.0, 3.0, 10**400], "an integer no float holds"),
        ("FP32", [1.0, 2.0, "3", 4.0], "a string among numbers"),
        ("FP32", [1.0, 2.0, {}, 4.0], "an object among numbers"),
        ("INT8", [1, 2, 3, 128], "beyond INT8"),
        ("INT32", [1, 2, 3, 4.0], "a float among integers"),
        ("BOOL", [True, False, 1, 0], "integers for BOOL"),
        ("BYTES", ["a", "b", "c", "d"], "strings are the decoder's"),
        ("FP32", [None, 1.0, 2.0, 3.0], "null"),
    ],
)
def test_anything_else_is_left_to_the_decoder(datatype: str, data: Any, why: str) -> None:
    assert not decodes_cleanly(datatype, 4, data), why


def test_large_tensors_are_left_to_the_decoder() -> None:
    count = MAX_PROVEN_ELEMENTS + 1
    assert decodes_cleanly("FP32", MAX_PROVEN_ELEMENTS, [0.5] * MAX_PROVEN_ELEMENTS)
    assert not decodes_cleanly("FP32", count, [0.5] * count)


def test_proven_json_is_built_only_when_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the relay gains: a plain JSON request is checked without building its arrays."""
    import worker.protocol.checked as checked

    calls: list[int] = []
    real = checked._decode_tensors  # type: ignore[attr-defined]

    def counting(*args: Any) -> list[Tensor]:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(checked, "_decode_tensors", counting)
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2.5, 3, 4]}]})
    _, lazy = check_request(body.encode(), None, Limits())
    assert calls == []
    assert lazy[0].data.tolist() == [[1.0, 2.5], [3.0, 4.0]]
    assert calls == [1]
    unproven = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [2**60, 1.0]}]})
    check_request(unproven.encode(), None, Limits())
    assert calls == [1, 1]  # decoded at once, by the check itself


def test_a_sum_that_is_no_json_number_is_not_proven_and_raises_nothing() -> None:
    """Review: complex values sum, then `min` raised TypeError; the proof must answer, not fail."""
    assert not decodes_cleanly("FP32", 4, [1j, 1.0, 2.0, 3.0])


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "INT64", "UINT8"])
def test_json_booleans_are_no_numbers(datatype: str) -> None:
    """Regression (audit): `[true, false]` was accepted as 1 and 0 for numeric types (Triton refuses
    them); the proof must not prove what the decoder now refuses."""
    wire = WireTensor(name="x", shape=[2], datatype=datatype, data=[True, False])
    with pytest.raises(InvalidInput, match="is not"):
        tensor_from_json(wire, Limits())
    assert not decodes_cleanly(datatype, 2, [True, False])
    mixed = WireTensor(name="x", shape=[2], datatype="FP32", data=[True, 0.5])  # among numbers, as numpy casts
    assert tensor_from_json(mixed, Limits()).data.tolist() == [1.0, 0.5]
    flags = WireTensor(name="x", shape=[2], datatype="BOOL", data=[True, False])
    assert tensor_from_json(flags, Limits()).data.tolist() == [True, False]
    assert decodes_cleanly("BOOL", 2, [True, False])
