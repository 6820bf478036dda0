"""Encode and decode v2 messages, JSON and the binary tensor data extension, to numpy tensors.

Binary extension (KServe v2 / Triton "binary_tensor_data"): the body is a JSON header of
`Inference-Header-Content-Length` bytes followed by the raw bytes of every tensor whose JSON
entry carries `parameters.binary_data_size`, in the order the tensors are listed. Fixed-size
types are little-endian, row-major; BOOL is one byte; BYTES elements are each a 4-byte
little-endian length followed by the bytes. Nothing here unpickles or evaluates anything.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from pydantic import ValidationError

from worker.errors import InvalidInput, PayloadTooLarge
from worker.protocol.datatypes import DATATYPES, datatype_of, element_size
from worker.protocol.models import (
    InferenceRequestHeader,
    InferenceResponseHeader,
    Parameters,
    RequestedOutput,
    WireTensor,
)

__all__ = [
    "HEADER_LENGTH",
    "DecodedRequest",
    "DecodedResponse",
    "EncodedBody",
    "Limits",
    "Tensor",
    "binary_outputs",
    "check_response_frame",
    "decode_request",
    "decode_response",
    "dumps",
    "encode_request",
    "encode_response",
    "json_tensor",
    "parse_header_length",
    "tensor_from_json",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_DIMS = 32  # numpy stops at 64; no model needs more than a handful
_LENGTH_PREFIX = struct.Struct("<I")
# Binary v2 headers up to this size are remembered by the checks, this many of them: a header is
# a few hundred bytes and repeats while the tensors' names and shapes do. A JSON message's header
# is the whole message, its data included, and is never remembered.
_REMEMBERED_HEADER_BYTES = 4096
_REMEMBERED_HEADERS = 512


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what a message may ask us to allocate."""

    max_tensor_elements: int = 16_777_216
    max_string_bytes: int = 1_048_576


@dataclass(frozen=True, slots=True)
class Tensor:
    """A named tensor: the v2 datatype name and its data as a numpy array of that shape."""

    name: str
    datatype: str
    data: np.ndarray[Any, Any]

    @property
    def shape(self) -> list[int]:
        return list(self.data.shape)

    @classmethod
    def of(cls, name: str, array: np.ndarray[Any, Any]) -> Tensor:
        return cls(name, datatype_of(array.dtype), array)


@dataclass(frozen=True, slots=True)
class DecodedRequest:
    id: str | None
    parameters: Parameters
    inputs: Sequence[Tensor]
    outputs: list[RequestedOutput] | None


@dataclass(frozen=True, slots=True)
class DecodedResponse:
    model_name: str
    model_version: str | None
    id: str | None
    parameters: Parameters
    outputs: list[Tensor]


@dataclass(frozen=True, slots=True)
class EncodedBody:
    """A message ready to send: its bytes, and the JSON header length when binary is used."""

    body: bytes
    header_length: int | None

    @property
    def content_type(self) -> str:
        return "application/octet-stream" if self.header_length is not None else "application/json"


def dumps(obj: Any) -> bytes:
    """JSON as bytes; NaN/Infinity allowed because model outputs can hold them (as Triton does)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()


# ---------------------------------------------------------------- tensors from and to JSON


def _element_count(shape: Sequence[int], limits: Limits, name: str) -> int:
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"tensor {name!r}: {len(shape)} dimensions is over the limit of {MAX_DIMS}")
    count = 1
    for dim in shape:  # a plain loop: this runs for every tensor of every request
        if not isinstance(dim, int) or dim < 0:
            raise InvalidInput(f"tensor {name!r}: shape {list(shape)} must hold non-negative integers")
        # Checked per dimension too: [0, 10**30] holds no elements but is still no shape numpy can make.
        if dim > limits.max_tensor_elements:
            raise PayloadTooLarge(f"tensor {name!r}: a dimension of shape {list(shape)} is over the element limit")
        count *= dim
    if count > limits.max_tensor_elements:
        raise PayloadTooLarge(f"tensor {name!r}: {count} elements is over the limit of {limits.max_tensor_elements}")
    return count


def _integers(data: list[Any], datatype: str, name: str) -> np.ndarray[Any, Any]:
    """Integer data numpy could not hold as int64 (say UINT64 values on both sides of 2**63)."""
    flat = np.asarray(data, dtype=object).ravel()
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in flat.tolist()):
        raise InvalidInput(f"tensor {name!r}: {datatype} data must be integers")
    try:
        return np.asarray(flat.tolist(), dtype=DATATYPES[datatype])
    except OverflowError as exc:
        raise InvalidInput(f"tensor {name!r}: values out of range for {datatype}") from exc


def _numbers(data: list[Any], datatype: str, name: str, *, finite: bool) -> np.ndarray[Any, Any]:
    """Numeric data as the datatype, refusing what numpy would coerce silently.

    Floats into ints, strings into numbers, and values beyond the datatype's range (ints that
    would wrap, floats that would become infinity) are refused rather than changed. `finite`:
    NaN and infinities are refused too (Python's parser reads `NaN`, `Infinity` and `1e999`,
    none of which is JSON).
    """
    raw = np.asarray(data)
    if finite and raw.dtype.kind == "f" and not np.isfinite(raw).all():
        raise InvalidInput(
            f"tensor {name!r}: NaN and infinity (or a number too large for a float) have no JSON form; "
            "send such values with the binary tensor extension"
        )
    is_int = datatype.startswith(("INT", "UINT"))
    if raw.size and is_int and raw.dtype.kind in "fO":
        return _integers(data, datatype, name)
    # Data of JSON true and false is no numbers: numpy would make it 1 and 0 (Triton refuses it too).
    # A bool among numbers is cast as numpy casts it: telling it apart would take a pass over every value.
    allowed = "b" if datatype == "BOOL" else ("iu" if is_int else "iuf")
    if raw.size and raw.dtype.kind not in allowed:
        raise InvalidInput(f"tensor {name!r}: data of kind {raw.dtype.kind!r} is not {datatype}")
    if is_int and raw.size and raw.dtype.kind in "iu":
        info = np.iinfo(DATATYPES[datatype])  # type: ignore[type-var]
        if raw.min() < info.min or raw.max() > info.max:
            raise InvalidInput(f"tensor {name!r}: values out of range for {datatype}")
    with np.errstate(over="ignore"):
        values = raw.astype(DATATYPES[datatype], copy=False)
    overflowed = datatype.startswith("FP") and raw.size and raw.dtype.kind in "iuf"
    if overflowed and np.any(np.isinf(values) & np.isfinite(raw)):
        raise InvalidInput(f"tensor {name!r}: values out of range for {datatype}")
    return values


def _bytes_elements(data: Any, name: str, limits: Limits) -> list[bytes]:
    flat = np.asarray(data, dtype=object).ravel().tolist()
    out: list[bytes] = []
    for item in flat:
        if isinstance(item, str):
            item = item.encode()
        if not isinstance(item, bytes):
            raise InvalidInput(f"tensor {name!r}: BYTES data must be strings")
        if len(item) > limits.max_string_bytes:
            raise PayloadTooLarge(f"tensor {name!r}: a string is over {limits.max_string_bytes} bytes")
        out.append(item)
    return out


def tensor_from_json(wire: WireTensor, limits: Limits, *, finite: bool = True) -> Tensor:
    """A tensor from its JSON form; `data` may be flat or nested, in row-major order.

    `finite=False` for answers: a model may compute NaN, which our JSON answers carry as `NaN`.
    """
    if wire.datatype not in DATATYPES:
        raise InvalidInput(f"tensor {wire.name!r}: unknown datatype {wire.datatype!r}")
    count = _element_count(wire.shape, limits, wire.name)
    if not isinstance(wire.data, list):
        raise InvalidInput(f"tensor {wire.name!r}: `data` must be a list")
    try:
        if wire.datatype == "BYTES":
            elements = _bytes_elements(wire.data, wire.name, limits)
            values = np.empty(len(elements), dtype=object)
            values[:] = elements
        else:
            values = _numbers(wire.data, wire.datatype, wire.name, finite=finite).ravel()
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"tensor {wire.name!r}: data is not a regular {wire.datatype} array") from exc
    if values.size != count:
        raise InvalidInput(f"tensor {wire.name!r}: shape {wire.shape} needs {count} elements, data has {values.size}")
    return Tensor(wire.name, wire.datatype, values.reshape(wire.shape))


def json_tensor(tensor: Tensor) -> dict[str, Any]:
    """A tensor in v2 JSON form, data flattened in row-major order."""
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape, "data": _json_data(tensor)}


def _json_data(tensor: Tensor) -> list[Any]:
    flat = tensor.data.ravel()
    if tensor.datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat.tolist()]
    return flat.tolist()


# ---------------------------------------------------------------- tensors from and to bytes


def _tensor_bytes(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        parts: list[bytes] = []
        for item in tensor.data.ravel().tolist():
            raw = item if isinstance(item, bytes) else str(item).encode()
            parts.append(_LENGTH_PREFIX.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    dtype = DATATYPES[tensor.datatype].newbyteorder("<")
    return np.ascontiguousarray(tensor.data, dtype=dtype).tobytes()


def _tensor_from_bytes(wire: WireTensor, raw: memoryview, limits: Limits) -> Tensor:
    if wire.datatype not in DATATYPES:
        raise InvalidInput(f"tensor {wire.name!r}: unknown datatype {wire.datatype!r}")
    count = _element_count(wire.shape, limits, wire.name)
    if wire.datatype != "BYTES":
        expected = count * element_size(wire.datatype)
        if len(raw) != expected:
            raise InvalidInput(
                f"tensor {wire.name!r}: shape {wire.shape} of {wire.datatype} needs {expected} bytes, got {len(raw)}"
            )
        dtype = DATATYPES[wire.datatype].newbyteorder("<")
        array = np.frombuffer(raw, dtype=dtype).reshape(wire.shape)
        return Tensor(wire.name, wire.datatype, array.astype(dtype.newbyteorder("="), copy=False))
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput(f"tensor {wire.name!r}: truncated BYTES length prefix")
        (length,) = _LENGTH_PREFIX.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(f"tensor {wire.name!r}: truncated BYTES element")
        if length > limits.max_string_bytes:
            raise PayloadTooLarge(f"tensor {wire.name!r}: a string is over {limits.max_string_bytes} bytes")
        elements.append(bytes(raw[offset : offset + length]))
        offset += length
    if len(elements) != count:
        raise InvalidInput(f"tensor {wire.name!r}: shape {wire.shape} needs {count} strings, got {len(elements)}")
    values = np.empty(count, dtype=object)
    values[:] = elements
    return Tensor(wire.name, wire.datatype, values.reshape(wire.shape))


# ---------------------------------------------------------------- whole messages


def _split(body: bytes, header_length: int | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    if header_length < 0 or header_length > len(body):
        raise InvalidInput(f"{HEADER_LENGTH} {header_length} does not fit a body of {len(body)} bytes")
    view = memoryview(body)
    return body[:header_length], view[header_length:]


def _binary_size(wire: WireTensor) -> int | None:
    """The tensor's `binary_data_size` (None: its data is in the JSON), checked to be a byte count."""
    size = (wire.parameters or {}).get("binary_data_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise InvalidInput(f"tensor {wire.name!r}: binary_data_size must be a non-negative integer")
    if size is not None and wire.data is not None:  # which one holds the values? (one was ignored)
        raise InvalidInput(f"tensor {wire.name!r}: has both data and binary_data_size; send one")
    return size


def _decode_tensors(
    wires: Iterable[WireTensor], blob: memoryview, limits: Limits, *, finite: bool = True
) -> list[Tensor]:
    tensors: list[Tensor] = []
    offset = 0
    for wire in wires:
        size = _binary_size(wire)
        if size is None:
            tensors.append(tensor_from_json(wire, limits, finite=finite))
            continue
        if offset + size > len(blob):
            raise InvalidInput(f"tensor {wire.name!r}: binary data truncated ({len(blob) - offset} of {size} bytes)")
        tensors.append(_tensor_from_bytes(wire, blob[offset : offset + size], limits))
        offset += size
    if offset != len(blob):
        raise InvalidInput(f"{len(blob) - offset} bytes of binary data follow the last tensor")
    return tensors


def _encode_tensors(tensors: Sequence[Tensor], binary: set[str] | bool) -> tuple[list[dict[str, Any]], list[bytes]]:
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor in tensors:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary is True or (isinstance(binary, set) and tensor.name in binary):
            raw = _tensor_bytes(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _json_data(tensor)
        entries.append(entry)
    return entries, blobs


def _join(header: dict[str, Any], blobs: list[bytes]) -> EncodedBody:
    head = dumps(header)
    if not blobs:
        return EncodedBody(head, None)
    return EncodedBody(b"".join([head, *blobs]), len(head))


def binary_outputs(request: DecodedRequest) -> set[str] | bool:
    """Which outputs the caller wants as binary: all (`binary_data_output`), or those it marked.

    As the binary extension says, an output's own `binary_data` overrides the request's
    `binary_data_output` either way; only the outputs a request lists are answered, so a set of
    their names is exact.
    """
    default = request.parameters.get("binary_data_output") is True
    if not request.outputs:
        return default
    return {out.name for out in request.outputs if (out.parameters or {}).get("binary_data", default) is True}


def parse_header_length(raw: str | None) -> int | None:
    """The `Inference-Header-Content-Length` header's value; InvalidInput when it is not a count."""
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()):  # str.isdigit() also takes '²', which int() refuses
        raise InvalidInput(f"{HEADER_LENGTH} must be a non-negative integer")
    return int(raw)


def decode_request(body: bytes, header_length: int | None, limits: Limits) -> DecodedRequest:
    head, blob = _split(body, header_length)
    try:
        header = InferenceRequestHeader.model_validate_json(head)
    except ValidationError as exc:
        raise InvalidInput(f"malformed inference request: {_first_error(exc)}") from exc
    names = [wire.name for wire in header.inputs]
    if len(set(names)) != len(names):
        raise InvalidInput("input names must be unique")
    inputs = _decode_tensors(header.inputs, blob, limits)
    return DecodedRequest(header.id, header.parameters or {}, inputs, header.outputs)


def encode_request(
    inputs: Sequence[Tensor],
    *,
    request_id: str | None = None,
    parameters: Parameters | None = None,
    outputs: Sequence[str] | None = None,
    binary: bool = True,
) -> EncodedBody:
    """A request body; with `binary`, inputs travel as bytes and outputs are asked for as bytes."""
    entries, blobs = _encode_tensors(inputs, binary)
    header: dict[str, Any] = {"inputs": entries}
    if request_id is not None:
        header["id"] = request_id
    params = dict(parameters or {})
    if binary:
        params["binary_data_output"] = True
    if params:
        header["parameters"] = params
    if outputs is not None:
        header["outputs"] = [{"name": name} for name in outputs]
    return _join(header, blobs)


def decode_response(body: bytes, header_length: int | None, limits: Limits) -> DecodedResponse:
    head, blob = _split(body, header_length)
    try:
        header = InferenceResponseHeader.model_validate_json(head)
    except ValidationError as exc:
        raise InvalidInput(f"malformed inference response: {_first_error(exc)}") from exc
    outputs = _decode_tensors(header.outputs, blob, limits, finite=False)
    return DecodedResponse(header.model_name, header.model_version, header.id, header.parameters or {}, outputs)


def check_response_frame(body: bytes, header_length: int | None) -> InferenceResponseHeader:
    """The header of `body`, after checking it is framed as a v2 response: binary parts fill the rest.

    What a relay that forwards a node's answer unread checks, so a node answering 200 with
    garbage or a truncated body is caught as cheaply as possible; tensors are not decoded. The
    header returned may be shared with other calls: callers read it, never change it.
    """
    head, blob = _split(body, header_length)
    # A node's binary header repeats for as long as the answers' shapes do: remember what it declares.
    remember = header_length is not None and len(head) <= _REMEMBERED_HEADER_BYTES
    header, declared = _remembered_response_head(head) if remember else _response_head(head)
    if declared != len(blob):
        raise InvalidInput(f"binary parts declare {declared} bytes, the body carries {len(blob)}")
    return header


def _response_head(head: bytes) -> tuple[InferenceResponseHeader, int]:
    """A response header and the bytes of binary data it declares; shared when remembered: read only."""
    try:
        header = InferenceResponseHeader.model_validate_json(head)
    except ValidationError as exc:
        raise InvalidInput(f"malformed inference response: {_first_error(exc)}") from exc
    return header, sum(_binary_size(wire) or 0 for wire in header.outputs)


_remembered_response_head = lru_cache(maxsize=_REMEMBERED_HEADERS)(_response_head)


def encode_response(
    *,
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: Sequence[Tensor],
    binary: set[str] | bool = False,
    parameters: Parameters | None = None,
) -> EncodedBody:
    entries, blobs = _encode_tensors(outputs, binary)
    header: dict[str, Any] = {"model_name": model_name, "outputs": entries}
    if model_version is not None:
        header["model_version"] = model_version
    if request_id is not None:
        header["id"] = request_id
    if parameters:
        header["parameters"] = parameters
    return _join(header, blobs)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in err.get("loc", ())) or "body"
    return f"{where}: {err.get('msg', 'invalid')}"
