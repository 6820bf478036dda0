"""A v2 request checked as `decode_request` checks it, its binary tensors decoded only if read.

A relay passes the client's body to a node unread, so building numpy arrays for every request
is wasted work on its hottest path. `check_request` refuses exactly what `decode_request`
refuses. Fixed-size binary tensors are checked from the header alone (datatype, shape against the
element limit, byte sizes, framing) and built lazily, on first read (local fallback, the cache key,
a node without the binary extension). Small JSON tensors of plain numbers are proven to decode by
`json_proof` (a loop over the values, without numpy) and built lazily too; any other JSON data,
and BYTES tensors, can only be checked by decoding them, so such a request is decoded at once.

A client's binary header repeats for as long as its tensors' names and shapes do (only the bytes
after it change), so what the header alone decides is remembered per header (`_header_verdict`,
bounded): a repeated header costs a dictionary lookup instead of a pydantic parse and the checks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol, overload

from pydantic import ValidationError

from worker.errors import InvalidInput, PayloadTooLarge, WorkerError
from worker.protocol.codec import (
    _REMEMBERED_HEADER_BYTES,
    _REMEMBERED_HEADERS,
    DecodedRequest,
    Limits,
    Tensor,
    _binary_size,
    _decode_tensors,
    _element_count,
    _first_error,
    _split,
)
from worker.protocol.datatypes import DATATYPES, element_size
from worker.protocol.json_proof import decodes_cleanly
from worker.protocol.models import InferenceRequestHeader, WireTensor

__all__ = ["LazyTensors", "TensorMeta", "check_request"]


class TensorMeta(Protocol):
    """What checks against a model's signature read of a tensor: a `Tensor` or a `WireTensor`."""

    @property
    def name(self) -> str: ...

    @property
    def datatype(self) -> str: ...

    @property
    def shape(self) -> Sequence[int]: ...


class LazyTensors(Sequence[Tensor]):
    """Tensors decoded on first read, once; `meta` describes them without decoding.

    `same_meta`, when not None, is shared by every request whose tensors have the same names,
    datatypes and shapes (a remembered binary header), so a check of `meta` may be remembered
    under it, by identity.
    """

    def __init__(
        self, meta: Sequence[WireTensor], decode: Callable[[], list[Tensor]], same_meta: object | None = None
    ) -> None:
        self.meta = meta
        self.same_meta = same_meta
        self._decode: Callable[[], list[Tensor]] | None = decode
        self._tensors: list[Tensor] = []

    @classmethod
    def decoded(cls, meta: Sequence[WireTensor], tensors: list[Tensor]) -> LazyTensors:
        """Tensors already built."""
        done = cls(meta, list)
        done._tensors, done._decode = tensors, None
        return done

    def _read(self) -> list[Tensor]:
        if self._decode is not None:
            self._tensors = self._decode()
            self._decode = None
        return self._tensors

    def __len__(self) -> int:
        return len(self.meta)

    @overload
    def __getitem__(self, index: int) -> Tensor: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Tensor]: ...

    def __getitem__(self, index: int | slice) -> Tensor | Sequence[Tensor]:
        return self._read()[index]


_Fault = tuple[type[WorkerError], str]  # an error's class and message, raised anew for each request


@dataclass(frozen=True, slots=True)
class _HeaderVerdict:
    """What a request's JSON header alone decides; shared by every request with the same header.

    Nothing here may be mutated: `check_request` copies the containers it hands out.
    """

    header: InferenceRequestHeader
    fault: _Fault | None  # a refusal decided before any tensor is read (repeated names, a bad byte count)
    fixed: bool  # every tensor is fixed-size binary: checked from the header, decoded lazily
    sizes: tuple[int, ...] = ()  # each tensor's binary byte count (when `fixed`)
    tensor_faults: tuple[_Fault | None, ...] = ()  # each tensor's own refusal, found from the header (when `fixed`)
    early: bool = False  # the last tensor's fault (a bad binary_data_size) comes before its bytes are looked at
    clean_size: int | None = None  # with no fault at all: the bytes the tensors take, which the body must carry


def check_request(body: bytes, header_length: int | None, limits: Limits) -> tuple[DecodedRequest, LazyTensors]:
    """`decode_request`, with fixed-size binary tensors checked from the header and decoded lazily."""
    head, blob = _split(body, header_length)
    remembered = header_length is not None and len(head) <= _REMEMBERED_HEADER_BYTES
    verdict = _remembered_verdict(head, limits) if remembered else _header_verdict(head, limits)
    if verdict.fault is not None:
        raise _refusal(verdict.fault)
    header = verdict.header
    wires = list(header.inputs)
    if verdict.fixed:
        _check_framing(verdict, blob)
        inputs = LazyTensors(wires, lambda: _decode_tensors(wires, blob, limits), verdict if remembered else None)
    elif not blob and _json_proven(wires, limits):
        inputs = LazyTensors(wires, lambda: _decode_tensors(wires, blob, limits))
    else:
        inputs = LazyTensors.decoded(wires, _decode_tensors(wires, blob, limits))
    parameters = dict(header.parameters) if header.parameters else {}
    outputs = list(header.outputs) if header.outputs is not None else None
    return DecodedRequest(header.id, parameters, inputs, outputs), inputs


def _header_verdict(head: bytes, limits: Limits) -> _HeaderVerdict:
    """Parse and check `head`; a malformed header raises (and is not remembered)."""
    try:
        header = InferenceRequestHeader.model_validate_json(head)
    except ValidationError as exc:
        raise InvalidInput(f"malformed inference request: {_first_error(exc)}") from exc
    wires = header.inputs
    if len({wire.name for wire in wires}) != len(wires):
        return _HeaderVerdict(header, (InvalidInput, "input names must be unique"), fixed=False)
    sizes: list[int] = []
    faults: list[_Fault | None] = []
    for wire in wires:  # in `_decode_tensors`' order, so that the same fault wins
        try:
            size = _binary_size(wire)
        except InvalidInput as exc:  # decoding stops at this tensor, before reading its bytes
            sizes.append(0)
            faults.append((InvalidInput, exc.message))
            return _HeaderVerdict(header, None, fixed=True, sizes=tuple(sizes), tensor_faults=tuple(faults), early=True)
        if size is None or wire.datatype == "BYTES":  # JSON data or strings: only decoding can check them
            return _HeaderVerdict(header, None, fixed=False)
        sizes.append(size)
        faults.append(_tensor_fault(wire, size, limits))
    clean_size = sum(sizes) if not any(faults) else None
    return _HeaderVerdict(
        header, None, fixed=True, sizes=tuple(sizes), tensor_faults=tuple(faults), clean_size=clean_size
    )


_remembered_verdict = lru_cache(maxsize=_REMEMBERED_HEADERS)(_header_verdict)


def _tensor_fault(wire: WireTensor, size: int, limits: Limits) -> _Fault | None:
    """Why a fixed-size binary tensor's header entry is refused, whatever its bytes; None if it is not."""
    if wire.datatype not in DATATYPES:
        return InvalidInput, f"tensor {wire.name!r}: unknown datatype {wire.datatype!r}"
    try:
        count = _element_count(wire.shape, limits, wire.name)
    except (InvalidInput, PayloadTooLarge) as exc:
        return type(exc), exc.message
    expected = count * element_size(wire.datatype)
    if size != expected:
        return (
            InvalidInput,
            f"tensor {wire.name!r}: shape {wire.shape} of {wire.datatype} needs {expected} bytes, got {size}",
        )
    return None


def _json_proven(wires: Sequence[WireTensor], limits: Limits) -> bool:
    """Every tensor has JSON data that `json_proof` proves decodes: building them can wait."""
    for wire in wires:
        try:
            if _binary_size(wire) is not None or wire.datatype not in DATATYPES:
                return False
            count = _element_count(wire.shape, limits, wire.name)
        except WorkerError:
            return False
        if not decodes_cleanly(wire.datatype, count, wire.data):
            return False
    return True


def _refusal(fault: _Fault) -> WorkerError:
    kind, message = fault
    return kind(message)


def _check_framing(verdict: _HeaderVerdict, blob: memoryview) -> None:
    """What decoding fixed-size binary tensors checks, without building them, in `_decode_tensors`' order."""
    if verdict.clean_size == len(blob):  # the usual request: nothing to refuse, and the bytes all there
        return
    offset = 0
    last = len(verdict.sizes) - 1
    # Not strict: an early verdict holds the tensors up to the faulty one only.
    for index, (wire, size, fault) in enumerate(
        zip(verdict.header.inputs, verdict.sizes, verdict.tensor_faults, strict=False)
    ):
        if fault is not None and verdict.early and index == last:
            raise _refusal(fault)
        if offset + size > len(blob):
            raise InvalidInput(f"tensor {wire.name!r}: binary data truncated ({len(blob) - offset} of {size} bytes)")
        if fault is not None:
            raise _refusal(fault)
        offset += size
    if offset != len(blob):
        raise InvalidInput(f"{len(blob) - offset} bytes of binary data follow the last tensor")
