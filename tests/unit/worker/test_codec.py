"""The v2 codec: JSON and binary tensor data extension, round trips, errors and the wire format."""

from __future__ import annotations

import contextlib
import json
import math
import struct
import time
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from worker.errors import InvalidInput, PayloadTooLarge
from worker.protocol import (
    DATATYPES,
    Limits,
    Tensor,
    check_response_frame,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    parse_header_length,
)
from worker.protocol.checked import check_request

ALL_DATATYPES = sorted(DATATYPES)
FIXED_DATATYPES = [name for name in ALL_DATATYPES if name != "BYTES"]

FAST = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

shapes = st.lists(st.integers(min_value=0, max_value=4), min_size=0, max_size=4).map(tuple)
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)
utf8_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8)


def _object_array(items: list[bytes], shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


@st.composite
def tensors(draw: st.DrawFn, datatype: str, name: str, *, text_only: bool = False, finite: bool = False) -> Tensor:
    """A tensor of `datatype` of random shape; with `text_only`, data that can travel as JSON.

    JSON carries BYTES as text, so they are UTF-8 text then; `finite`: no NaN or infinity (a JSON
    request may not carry them).
    """
    shape = draw(shapes)
    if datatype == "BYTES":
        count = math.prod(shape)
        element = utf8_text.map(str.encode) if text_only else st.binary(max_size=8)
        items = draw(st.lists(element, min_size=count, max_size=count))
        return Tensor(name, datatype, _object_array(items, shape))
    dtype = DATATYPES[datatype]
    elements = {"allow_nan": False, "allow_infinity": False} if finite and dtype.kind == "f" else None
    return Tensor(name, datatype, draw(hnp.arrays(dtype, shape, elements=elements)))


@st.composite
def tensor_lists(draw: st.DrawFn, *, text_only: bool = False, finite: bool = False) -> list[Tensor]:
    tensor_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    datatypes = st.sampled_from(ALL_DATATYPES)
    return [draw(tensors(draw(datatypes), name, text_only=text_only, finite=finite)) for name in tensor_names]


def assert_same_tensor(expected: Tensor, actual: Tensor, *, bitwise: bool) -> None:
    assert actual.name == expected.name
    assert actual.datatype == expected.datatype
    assert actual.shape == expected.shape
    assert actual.data.dtype == DATATYPES[expected.datatype]
    if expected.datatype == "BYTES":
        assert [bytes(item) for item in actual.data.ravel().tolist()] == expected.data.ravel().tolist()
        return
    equal_nan = expected.data.dtype.kind == "f"
    assert np.array_equal(actual.data, expected.data, equal_nan=equal_nan)
    if bitwise:
        assert actual.data.tobytes() == expected.data.tobytes()
    elif equal_nan:
        # -0.0 must stay -0.0 even through JSON.
        finite = ~np.isnan(expected.data)
        assert np.array_equal(np.signbit(actual.data[finite]), np.signbit(expected.data[finite]))


def hand_body(header: dict[str, Any], blob: bytes = b"") -> tuple[bytes, int | None]:
    head = json.dumps(header).encode()
    return head + blob, (len(head) if blob else None)


def request_body(*entries: dict[str, Any], blob: bytes = b"") -> tuple[bytes, int | None]:
    return hand_body({"inputs": list(entries)}, blob)


def decode(body_and_length: tuple[bytes, int | None], limits: Limits | None = None) -> list[Tensor]:
    body, length = body_and_length
    return decode_request(body, length, limits or Limits()).inputs


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("datatype", ALL_DATATYPES)
@FAST
@given(data=st.data())
def test_request_binary_round_trip_per_datatype(datatype: str, data: st.DataObject) -> None:
    tensor = data.draw(tensors(datatype, "x"))
    encoded = encode_request([tensor], binary=True)
    assert encoded.header_length is not None
    assert encoded.content_type == "application/octet-stream"
    decoded = decode_request(encoded.body, encoded.header_length, Limits())
    assert len(decoded.inputs) == 1
    assert_same_tensor(tensor, decoded.inputs[0], bitwise=True)
    assert decoded.parameters.get("binary_data_output") is True


@pytest.mark.parametrize("datatype", ALL_DATATYPES)
@FAST
@given(data=st.data())
def test_request_json_round_trip_per_datatype(datatype: str, data: st.DataObject) -> None:
    tensor = data.draw(tensors(datatype, "x", text_only=True, finite=True))
    encoded = encode_request([tensor], binary=False)
    assert encoded.header_length is None
    assert encoded.content_type == "application/json"
    json.loads(encoded.body, parse_constant=_no_constant)  # strict JSON, nothing after it
    decoded = decode_request(encoded.body, None, Limits())
    assert len(decoded.inputs) == 1
    assert_same_tensor(tensor, decoded.inputs[0], bitwise=False)
    assert "binary_data_output" not in decoded.parameters


def _no_constant(token: str) -> None:
    raise AssertionError(f"{token} is not JSON")


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_a_json_request_with_nan_or_infinity_is_refused(token: str, datatype: str) -> None:
    """Regression: Python's parser reads these (none is JSON), and the answer then carried `NaN`."""
    body = f'{{"inputs":[{{"name":"x","datatype":"{datatype}","shape":[2],"data":[1.0,{token}]}}]}}'.encode()
    with pytest.raises(InvalidInput, match="NaN and infinity"):
        decode_request(body, None, Limits())


def test_a_json_answer_may_carry_nan_a_model_computed() -> None:
    answer = b'{"model_name":"m","outputs":[{"name":"y","datatype":"FP32","shape":[2],"data":[NaN,1.0]}]}'
    [output] = decode_response(answer, None, Limits()).outputs
    assert np.isnan(output.data[0])
    assert output.data[1] == 1.0


@pytest.mark.parametrize("binary", [True, False])
@FAST
@given(
    inputs=tensor_lists(text_only=True, finite=True),  # a JSON request may not carry NaN or infinity
    request_id=st.none() | names,
    wanted=st.none() | st.lists(names),
)
def test_request_round_trip_several_tensors(
    binary: bool, inputs: list[Tensor], request_id: str | None, wanted: list[str] | None
) -> None:
    encoded = encode_request(inputs, request_id=request_id, outputs=wanted, parameters={"k": 3}, binary=binary)
    decoded = decode_request(encoded.body, encoded.header_length, Limits())
    assert decoded.id == request_id
    assert decoded.parameters["k"] == 3
    assert (None if decoded.outputs is None else [out.name for out in decoded.outputs]) == wanted
    assert len(decoded.inputs) == len(inputs)
    for expected, actual in zip(inputs, decoded.inputs, strict=True):
        assert_same_tensor(expected, actual, bitwise=binary)


@FAST
@given(outputs=tensor_lists(text_only=True), data=st.data())
def test_response_round_trip_with_mixed_binary(outputs: list[Tensor], data: st.DataObject) -> None:
    binary_names = data.draw(st.sets(st.sampled_from([tensor.name for tensor in outputs])))
    encoded = encode_response(
        model_name="m", model_version="7", request_id="r-1", outputs=outputs, binary=set(binary_names)
    )
    assert (encoded.header_length is None) == (not binary_names)
    header = json.loads(encoded.body[: encoded.header_length] if encoded.header_length else encoded.body)
    for entry in header["outputs"]:
        assert ("binary_data_size" in (entry.get("parameters") or {})) == (entry["name"] in binary_names)
        assert ("data" in entry) == (entry["name"] not in binary_names)
    decoded = decode_response(encoded.body, encoded.header_length, Limits())
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("m", "7", "r-1")
    assert len(decoded.outputs) == len(outputs)
    for expected, actual in zip(outputs, decoded.outputs, strict=True):
        assert_same_tensor(expected, actual, bitwise=expected.name in binary_names)


@FAST
@given(outputs=tensor_lists(text_only=True), data=st.data())
def test_response_frame_accepts_every_encoded_response_and_no_cut_or_padded_one(
    outputs: list[Tensor], data: st.DataObject
) -> None:
    """What the relay checks before passing a node's answer on unread."""
    binary_names = data.draw(st.sets(st.sampled_from([tensor.name for tensor in outputs])))
    encoded = encode_response(model_name="m", model_version="7", request_id=None, outputs=outputs, binary=binary_names)
    header = check_response_frame(encoded.body, encoded.header_length)
    assert (header.model_name, header.model_version, len(header.outputs)) == ("m", "7", len(outputs))
    if encoded.header_length is None:
        return
    blob = len(encoded.body) - encoded.header_length
    cut = data.draw(st.integers(min_value=1, max_value=blob)) if blob else 0
    for broken in ([encoded.body[:-cut]] if cut else []) + [encoded.body + b"\x00"]:
        with pytest.raises(InvalidInput):
            check_response_frame(broken, encoded.header_length)


@FUZZ
@given(body=st.binary(max_size=64), length=st.none() | st.integers(min_value=0, max_value=80))
def test_response_frame_refuses_garbage_with_invalid_input_only(body: bytes, length: int | None) -> None:
    with contextlib.suppress(InvalidInput):
        header = check_response_frame(body, length)
        assert isinstance(header.model_name, str)  # whatever passes is a real v2 header


@pytest.mark.parametrize("binary", [True, False])
@FAST
@given(outputs=tensor_lists(text_only=True))
def test_response_round_trip_all_or_nothing(binary: bool, outputs: list[Tensor]) -> None:
    encoded = encode_response(model_name="m", model_version=None, request_id=None, outputs=outputs, binary=binary)
    decoded = decode_response(encoded.body, encoded.header_length, Limits())
    assert decoded.model_version is None
    assert decoded.id is None
    for expected, actual in zip(outputs, decoded.outputs, strict=True):
        assert_same_tensor(expected, actual, bitwise=binary)


@pytest.mark.parametrize("datatype", ["FP16", "FP32"])
def test_json_keeps_narrow_floats_exact(datatype: str) -> None:
    dtype = DATATYPES[datatype]
    info = np.finfo(dtype)
    values = np.array([info.max, -info.max, info.tiny, info.smallest_subnormal, info.eps, 1 / 3, 0.1], dtype=dtype)
    encoded = encode_request([Tensor.of("x", values)], binary=False)
    (decoded,) = decode_request(encoded.body, None, Limits()).inputs
    assert decoded.data.dtype == dtype
    assert decoded.data.tobytes() == values.tobytes()


def test_uint64_and_int64_extremes_round_trip_through_json_one_sided() -> None:
    tensors_ = [
        Tensor.of("u", np.array([2**63, 2**64 - 1], dtype=np.uint64)),
        Tensor.of("i", np.array([-(2**63), 2**63 - 1], dtype=np.int64)),
    ]
    encoded = encode_request(tensors_, binary=False)
    decoded = decode_request(encoded.body, None, Limits()).inputs
    for expected, actual in zip(tensors_, decoded, strict=True):
        assert_same_tensor(expected, actual, bitwise=True)


def test_uint64_json_round_trip_mixing_small_and_large_values() -> None:
    """Regression: a UINT64 list on both sides of 2**63 became float64 and was refused."""
    tensor = Tensor.of("u", np.array([0, 2**64 - 1], dtype=np.uint64))
    encoded = encode_request([tensor], binary=False)
    (decoded,) = decode_request(encoded.body, None, Limits()).inputs
    assert_same_tensor(tensor, decoded, bitwise=True)


def test_big_endian_input_is_sent_little_endian() -> None:
    values = np.arange(6, dtype=">i4").reshape(2, 3)
    encoded = encode_request([Tensor.of("x", values)], binary=True)
    assert encoded.header_length is not None
    assert encoded.body[encoded.header_length :] == struct.pack("<6i", *range(6))
    (decoded,) = decode_request(encoded.body, encoded.header_length, Limits()).inputs
    assert decoded.datatype == "INT32"
    assert decoded.data.tolist() == values.tolist()


# ---------------------------------------------------------------- the wire format by hand


def test_decode_request_reads_a_hand_built_binary_body() -> None:
    floats = [1.5, -2.25, 3.0e-3, 1.0e30]
    strings = [b"abc", b"", "\u00e9t\u00e9".encode()]
    bytes_blob = b"".join(struct.pack("<I", len(item)) + item for item in strings)
    blob = struct.pack("<4f", *floats) + bytes_blob + bytes([1, 0, 1]) + struct.pack("<2h", -300, 12345)
    body, length = request_body(
        {"name": "f", "datatype": "FP32", "shape": [2, 2], "parameters": {"binary_data_size": 16}},
        {"name": "s", "datatype": "BYTES", "shape": [3], "parameters": {"binary_data_size": len(bytes_blob)}},
        {"name": "j", "datatype": "INT64", "shape": [2], "data": [-1, 7]},
        {"name": "b", "datatype": "BOOL", "shape": [3, 1], "parameters": {"binary_data_size": 3}},
        {"name": "h", "datatype": "INT16", "shape": [2], "parameters": {"binary_data_size": 4}},
        blob=blob,
    )
    f, s, j, b, h = decode((body, length))
    assert f.data.dtype == np.float32
    assert f.data.tolist() == np.array(floats, dtype=np.float32).reshape(2, 2).tolist()
    assert s.shape == [3]
    assert s.data.tolist() == strings
    assert j.data.dtype == np.int64
    assert j.data.tolist() == [-1, 7]
    assert b.data.dtype == np.bool_
    assert b.data.tolist() == [[True], [False], [True]]
    assert h.data.tolist() == [-300, 12345]


def test_encode_response_binary_part_is_the_little_endian_bytes() -> None:
    logits = np.array([[0.5, -1.0, 2.0], [4.0, 8.5, -0.125]], dtype=np.float32)
    counts = np.array([1, -2, 2**40], dtype=np.int64)
    words = _object_array([b"hi", b"", b"there"], (3,))
    encoded = encode_response(
        model_name="m",
        model_version="1",
        request_id=None,
        outputs=[Tensor.of("logits", logits), Tensor("words", "BYTES", words), Tensor.of("counts", counts)],
        binary=True,
    )
    assert encoded.header_length is not None
    header = json.loads(encoded.body[: encoded.header_length])
    expected_parts = [
        struct.pack("<6f", *logits.ravel().tolist()),
        struct.pack("<I", 2) + b"hi" + struct.pack("<I", 0) + struct.pack("<I", 5) + b"there",
        struct.pack("<3q", *counts.tolist()),
    ]
    assert [entry["parameters"]["binary_data_size"] for entry in header["outputs"]] == [
        len(part) for part in expected_parts
    ]
    assert [entry["shape"] for entry in header["outputs"]] == [[2, 3], [3], [3]]
    assert [entry["datatype"] for entry in header["outputs"]] == ["FP32", "BYTES", "INT64"]
    assert all("data" not in entry for entry in header["outputs"])
    assert encoded.body[encoded.header_length :] == b"".join(expected_parts)


def test_decode_response_reads_a_hand_built_triton_style_body() -> None:
    blob = struct.pack("<3d", 1.0, -0.5, 1e-300)
    body, length = hand_body(
        {
            "model_name": "m",
            "id": "42",
            "outputs": [
                {"name": "y", "datatype": "FP64", "shape": [1, 3], "parameters": {"binary_data_size": 24}},
                {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["seven"]},
            ],
        },
        blob,
    )
    decoded = decode_response(body, length, Limits())
    assert decoded.id == "42"
    y, label = decoded.outputs
    assert y.data.tolist() == [[1.0, -0.5, 1e-300]]
    assert label.data.tolist() == [b"seven"]


# ---------------------------------------------------------------- errors


def _binary_int32() -> tuple[bytes, int]:
    encoded = encode_request([Tensor.of("x", np.arange(5, dtype=np.int32))], binary=True)
    assert encoded.header_length is not None
    return encoded.body, encoded.header_length


def test_truncated_binary_body_is_invalid() -> None:
    body, length = _binary_int32()
    with pytest.raises(InvalidInput):
        decode_request(body[:-1], length, Limits())


def test_truncated_bytes_tensor_is_invalid() -> None:
    encoded = encode_request([Tensor("s", "BYTES", _object_array([b"abc", b"de"], (2,)))], binary=True)
    with pytest.raises(InvalidInput):
        decode_request(encoded.body[:-1], encoded.header_length, Limits())


def test_trailing_bytes_after_the_last_tensor_are_invalid() -> None:
    body, length = _binary_int32()
    decode_request(body, length, Limits())
    with pytest.raises(InvalidInput, match="follow the last tensor"):
        decode_request(body + b"\x00", length, Limits())


def test_bytes_after_a_json_only_header_are_invalid() -> None:
    body, _ = request_body({"name": "x", "datatype": "INT32", "shape": [1], "data": [1]})
    with pytest.raises(InvalidInput):
        decode_request(body + b"\x01\x02", len(body), Limits())


@pytest.mark.parametrize("delta", [1, 1000])
def test_header_length_beyond_the_body_is_invalid(delta: int) -> None:
    body, _ = _binary_int32()
    with pytest.raises(InvalidInput):
        decode_request(body, len(body) + delta, Limits())
    with pytest.raises(InvalidInput):
        decode_response(body, len(body) + delta, Limits())


@pytest.mark.parametrize("raw", ["²", "١٢", "-1", "1.5", "", " 12", "0x10"])
def test_a_header_length_that_is_not_ascii_digits_is_invalid_input(raw: str) -> None:
    """Regression: str.isdigit() accepts '²', which int() then refused with a ValueError (a 500)."""
    with pytest.raises(InvalidInput):
        parse_header_length(raw)


def test_negative_header_length_is_invalid() -> None:
    body, _ = _binary_int32()
    with pytest.raises(InvalidInput):
        decode_request(body, -1, Limits())


@pytest.mark.parametrize(
    ("shape", "data"),
    [
        ([2, 3], [1, 2, 3, 4, 5]),
        ([2, 3], [1, 2, 3, 4, 5, 6, 7]),
        ([0], [1]),
        ([], []),
        ([2, 2], [[1, 2], [3, 4], [5, 6]]),
    ],
)
def test_json_shape_and_element_count_must_agree(shape: list[int], data: list[Any]) -> None:
    with pytest.raises(InvalidInput):
        decode(request_body({"name": "x", "datatype": "INT32", "shape": shape, "data": data}))


@pytest.mark.parametrize("size", [8, 16])
def test_binary_size_must_agree_with_the_shape(size: int) -> None:
    entry = {"name": "x", "datatype": "INT32", "shape": [3], "parameters": {"binary_data_size": size}}
    with pytest.raises(InvalidInput):
        decode(request_body(entry, blob=bytes(size)))


def test_bytes_count_must_agree_with_the_shape() -> None:
    blob = struct.pack("<I", 1) + b"a"
    entry = {"name": "s", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(blob)}}
    with pytest.raises(InvalidInput):
        decode(request_body(entry, blob=blob))


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        ("INT32", [1.5, 2.0]),
        ("INT32", [1.0, 2.0]),
        ("INT64", [0.5, 1]),
        ("UINT8", [300, 1]),
        ("UINT8", [-1, 1]),
        ("INT8", [128, 0]),
        ("INT16", [-32769, 0]),
        ("UINT64", [-1, 0]),
        ("INT64", [2**70, 0]),
        ("FP32", ["1.0", "2.0"]),
        ("FP64", ["a", "b"]),
        ("BOOL", [1, 0]),
        ("BOOL", ["true", "false"]),
        ("BYTES", [1, 2]),
        ("INT32", [None, 1]),
        ("INT32", [{"a": 1}, 1]),
    ],
)
def test_json_data_of_the_wrong_kind_or_range_is_invalid(datatype: str, data: list[Any]) -> None:
    with pytest.raises(InvalidInput):
        decode(request_body({"name": "x", "datatype": datatype, "shape": [2], "data": data}))


@pytest.mark.parametrize("data", [None, 5, "abc", {"a": 1}])
def test_json_data_must_be_a_list(data: Any) -> None:
    with pytest.raises(InvalidInput):
        decode(request_body({"name": "x", "datatype": "INT32", "shape": [1], "data": data}))


def test_integer_json_data_at_the_range_edges_is_accepted() -> None:
    (uint8, int8) = decode(
        request_body(
            {"name": "u", "datatype": "UINT8", "shape": [2], "data": [0, 255]},
            {"name": "i", "datatype": "INT8", "shape": [2], "data": [-128, 127]},
        )
    )
    assert uint8.data.tolist() == [0, 255]
    assert int8.data.tolist() == [-128, 127]


@pytest.mark.parametrize("datatype", ["FP99", "BF16", "fp32", "STRING", ""])
def test_unknown_datatype_is_invalid(datatype: str) -> None:
    with pytest.raises(InvalidInput):
        decode(request_body({"name": "x", "datatype": datatype, "shape": [1], "data": [1]}))
    entry = {"name": "x", "datatype": datatype, "shape": [1], "parameters": {"binary_data_size": 4}}
    with pytest.raises(InvalidInput):
        decode(request_body(entry, blob=bytes(4)))


@pytest.mark.parametrize("shape", [[-1], [2, -1], [-1, -1], [3, -2]])
def test_negative_dimension_is_invalid(shape: list[int]) -> None:
    with pytest.raises(InvalidInput):
        decode(request_body({"name": "x", "datatype": "INT32", "shape": shape, "data": [1, 2]}))
    entry = {"name": "x", "datatype": "INT32", "shape": shape, "parameters": {"binary_data_size": 4}}
    with pytest.raises(InvalidInput):
        decode(request_body(entry, blob=bytes(4)))


@pytest.mark.parametrize("datatype", ["FP32", "BYTES", "BOOL"])
def test_huge_shape_is_refused_before_allocating(datatype: str) -> None:
    started = time.perf_counter()
    with pytest.raises(PayloadTooLarge):
        decode(request_body({"name": "x", "datatype": datatype, "shape": [100000, 100000], "data": []}))
    entry = {"name": "x", "datatype": datatype, "shape": [100000, 100000], "parameters": {"binary_data_size": 0}}
    with pytest.raises(PayloadTooLarge):
        decode_request(*hand_body({"inputs": [entry]}, b""), Limits())
    assert time.perf_counter() - started < 1.0


def test_element_limit_is_exact() -> None:
    limits = Limits(max_tensor_elements=12)
    (ok,) = decode(request_body({"name": "x", "datatype": "INT8", "shape": [3, 4], "data": [0] * 12}), limits)
    assert ok.shape == [3, 4]
    with pytest.raises(PayloadTooLarge):
        decode(request_body({"name": "x", "datatype": "INT8", "shape": [13], "data": [0] * 13}), limits)
    entry = {"name": "x", "datatype": "INT8", "shape": [13], "parameters": {"binary_data_size": 13}}
    with pytest.raises(PayloadTooLarge):
        decode(request_body(entry, blob=bytes(13)), limits)


def test_json_string_over_the_limit_is_too_large() -> None:
    limits = Limits(max_string_bytes=4)
    (ok,) = decode(request_body({"name": "s", "datatype": "BYTES", "shape": [1], "data": ["abcd"]}), limits)
    assert ok.data.tolist() == [b"abcd"]
    with pytest.raises(PayloadTooLarge):
        decode(request_body({"name": "s", "datatype": "BYTES", "shape": [1], "data": ["abcde"]}), limits)


def test_binary_string_over_the_limit_is_too_large() -> None:
    blob = struct.pack("<I", 5) + b"abcde"
    entry = {"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(blob)}}
    with pytest.raises(PayloadTooLarge):
        decode(request_body(entry, blob=blob), Limits(max_string_bytes=4))


@pytest.mark.parametrize(
    "blob",
    [
        struct.pack("<I", 3) + b"abc" + b"\x01\x00",  # a second prefix cut short
        b"\x02",  # a first prefix cut short
        struct.pack("<I", 10) + b"abc",  # the element cut short
        struct.pack("<I", 2**32 - 1) + b"x",  # a length far past the end
    ],
)
def test_truncated_bytes_length_prefix_is_invalid(blob: bytes) -> None:
    entry = {"name": "s", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(blob)}}
    with pytest.raises(InvalidInput):
        decode(request_body(entry, blob=blob))


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[]",
        b"null",
        b'{"inputs": []}',
        b'{"inputs": [{"name": "x"}]}',
        b'{"inputs": [{"name": "", "datatype": "INT32", "shape": [1], "data": [1]}]}',
        b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": "1", "data": [1]}]}',
        b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}]',
        b"\xff\xfe{}",
    ],
)
def test_malformed_json_header_is_invalid(body: bytes) -> None:
    with pytest.raises(InvalidInput):
        decode_request(body, None, Limits())


def test_malformed_response_header_is_invalid() -> None:
    with pytest.raises(InvalidInput):
        decode_response(b'{"outputs": []}', None, Limits())  # no model_name
    with pytest.raises(InvalidInput):
        decode_response(b"{", None, Limits())


@pytest.mark.parametrize("size", [-1, 1.5, True, "4", None])
def test_binary_data_size_must_be_a_non_negative_integer(size: Any) -> None:
    entry = {"name": "x", "datatype": "INT32", "shape": [1], "parameters": {"binary_data_size": size}}
    with pytest.raises(InvalidInput):
        decode(request_body(entry, blob=bytes(4)))


def test_duplicate_input_names_are_invalid() -> None:
    entry = {"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}
    with pytest.raises(InvalidInput, match="unique"):
        decode(request_body(entry, dict(entry)))


@pytest.mark.parametrize(
    ("datatype", "nested", "flat"),
    [
        ("INT32", [[1, 2, 3], [4, 5, 6]], [1, 2, 3, 4, 5, 6]),
        ("FP32", [[0.5, 1.5, 2.5], [3.5, 4.5, 5.5]], [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]),
        ("BOOL", [[True, False, True], [False, False, True]], [True, False, True, False, False, True]),
        ("BYTES", [["a", "b", "c"], ["d", "e", "f"]], ["a", "b", "c", "d", "e", "f"]),
    ],
)
def test_nested_data_equals_flat_data(datatype: str, nested: list[Any], flat: list[Any]) -> None:
    (from_nested,) = decode(request_body({"name": "x", "datatype": datatype, "shape": [2, 3], "data": nested}))
    (from_flat,) = decode(request_body({"name": "x", "datatype": datatype, "shape": [2, 3], "data": flat}))
    assert from_nested.shape == from_flat.shape == [2, 3]
    assert from_nested.data.dtype == from_flat.data.dtype == DATATYPES[datatype]
    assert from_nested.data.tolist() == from_flat.data.tolist()
    assert from_flat.data.ravel().tolist() == [item.encode() if isinstance(item, str) else item for item in flat]


@pytest.mark.parametrize("binary", [False, True])
def test_too_many_dimensions_is_invalid_input(binary: bool) -> None:
    shape = [1] * 70
    if binary:
        entry = {"name": "x", "datatype": "INT8", "shape": shape, "parameters": {"binary_data_size": 1}}
        body = request_body(entry, blob=b"\x01")
    else:
        body = request_body({"name": "x", "datatype": "INT8", "shape": shape, "data": [1]})
    with pytest.raises(InvalidInput):
        decode(body)


@pytest.mark.parametrize("shape", [[0, 10**30], [0, 2**62, 8]])
def test_zero_size_shape_with_a_huge_dimension_is_invalid_input(shape: list[int]) -> None:
    with pytest.raises((InvalidInput, PayloadTooLarge)):
        decode(request_body({"name": "x", "datatype": "INT32", "shape": shape, "data": []}))


@pytest.mark.parametrize(("datatype", "value"), [("FP32", 1e300), ("FP16", 1e6), ("FP16", 70000)])
def test_float_out_of_range_is_invalid(datatype: str, value: float) -> None:
    # Warnings are errors under pytest but not in a server: there the value silently becomes inf.
    with warnings.catch_warnings(), np.errstate(over="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(InvalidInput):
            decode(request_body({"name": "x", "datatype": datatype, "shape": [1], "data": [value]}))


# ---------------------------------------------------------------- fuzzing


def _decode_both(body: bytes, length: int | None, limits: Limits) -> None:
    """Decode as a request and as a response; anything but the codec's own two errors escapes."""
    for decoder in (decode_request, decode_response):
        with contextlib.suppress(InvalidInput, PayloadTooLarge):
            decoder(body, length, limits)


@FUZZ
@given(body=st.binary(max_size=256), length=st.none() | st.integers(min_value=-8, max_value=300))
def test_arbitrary_bytes_only_raise_worker_errors(body: bytes, length: int | None) -> None:
    _decode_both(body, length, Limits())


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-60000, max_value=60000)
    | st.floats(min_value=-6e4, max_value=6e4)
    | st.sampled_from([math.nan, math.inf, -math.inf])
    | st.text(max_size=4)
)
json_data = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=12)
size_values = st.none() | st.integers(min_value=-2, max_value=40) | st.booleans() | st.text(max_size=2)


@st.composite
def wire_entries(draw: st.DrawFn) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": draw(st.sampled_from(["a", "b", ""])),
        "datatype": draw(st.sampled_from([*ALL_DATATYPES, "BF16", "X"])),
        "shape": draw(st.lists(st.integers(min_value=-2, max_value=5), max_size=5)),
    }
    if draw(st.booleans()):
        entry["data"] = draw(json_data)
    if draw(st.booleans()):
        entry["parameters"] = {"binary_data_size": draw(size_values)}
    return entry


@FUZZ
@given(entries=st.lists(wire_entries(), max_size=3), blob=st.binary(max_size=48), limit=st.integers(1, 64))
def test_structured_garbage_only_raises_worker_errors(entries: list[dict[str, Any]], blob: bytes, limit: int) -> None:
    limits = Limits(max_tensor_elements=limit, max_string_bytes=limit)
    _decode_both(*hand_body({"inputs": entries, "model_name": "m", "outputs": entries}, blob), limits)
    head = json.dumps({"inputs": entries, "model_name": "m", "outputs": entries}).encode()
    _decode_both(head + blob, len(head), limits)


def test_a_tensor_with_both_data_and_binary_data_size_is_refused() -> None:
    """Regression (audit): the JSON `data` was silently ignored in favour of the binary bytes."""
    raw = np.zeros(2, np.float32).tobytes()
    tensor = {"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}
    tensor["parameters"] = {"binary_data_size": len(raw)}
    head = json.dumps({"inputs": [tensor]}).encode()
    with pytest.raises(InvalidInput, match="both data and binary_data_size"):
        decode_request(head + raw, len(head), Limits())
    with pytest.raises(InvalidInput, match="both data and binary_data_size"):  # the gateway's header check
        check_request(head + raw, len(head), Limits())
