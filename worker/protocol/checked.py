"""A v2 request checked as `decode_request` checks it, its binary tensors decoded only if read.

A relay passes the client's body to a node unread, so building numpy arrays for every request
is wasted work on its hottest path. `check_request` refuses exactly what `decode_request`
refuses. Fixed-size binary tensors are checked from the header alone (datatype, shape against the
element limit, byte sizes, framing) and built lazily, on first read (local fallback, the cache key,
a node without the binary extension). JSON data and BYTES tensors can only be checked by decoding
them, so a request holding any is decoded at once, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, overload

from pydantic import ValidationError

from worker.errors import InvalidInput
from worker.protocol.codec import (
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
    """Tensors decoded on first read, once; `meta` describes them without decoding."""

    def __init__(self, meta: Sequence[WireTensor], decode: Callable[[], list[Tensor]]) -> None:
        self.meta = meta
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


def check_request(body: bytes, header_length: int | None, limits: Limits) -> tuple[DecodedRequest, LazyTensors]:
    """`decode_request`, with fixed-size binary tensors checked from the header and decoded lazily."""
    head, blob = _split(body, header_length)
    try:
        header = InferenceRequestHeader.model_validate_json(head)
    except ValidationError as exc:
        raise InvalidInput(f"malformed inference request: {_first_error(exc)}") from exc
    wires = header.inputs
    if len({wire.name for wire in wires}) != len(wires):
        raise InvalidInput("input names must be unique")
    if any(_binary_size(wire) is None or wire.datatype == "BYTES" for wire in wires):
        inputs = LazyTensors.decoded(wires, _decode_tensors(wires, blob, limits))
    else:
        _check_fixed_size(wires, blob, limits)
        inputs = LazyTensors(wires, lambda: _decode_tensors(wires, blob, limits))
    return DecodedRequest(header.id, header.parameters or {}, inputs, header.outputs), inputs


def _check_fixed_size(wires: Sequence[WireTensor], blob: memoryview, limits: Limits) -> None:
    """What decoding fixed-size binary tensors checks, without building them."""
    offset = 0
    for wire in wires:  # in `_decode_tensors`' order, so that the same fault wins
        size = _binary_size(wire) or 0
        if offset + size > len(blob):
            raise InvalidInput(f"tensor {wire.name!r}: binary data truncated ({len(blob) - offset} of {size} bytes)")
        if wire.datatype not in DATATYPES:
            raise InvalidInput(f"tensor {wire.name!r}: unknown datatype {wire.datatype!r}")
        count = _element_count(wire.shape, limits, wire.name)
        expected = count * element_size(wire.datatype)
        if size != expected:
            raise InvalidInput(
                f"tensor {wire.name!r}: shape {wire.shape} of {wire.datatype} needs {expected} bytes, got {size}"
            )
        offset += size
    if offset != len(blob):
        raise InvalidInput(f"{len(blob) - offset} bytes of binary data follow the last tensor")
