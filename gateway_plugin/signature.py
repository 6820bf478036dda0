"""A request's tensors against a model's signature (names, datatypes, shapes, batch sizes), remembered.

What the checks decide depends on nothing but the tensors' names, datatypes and shapes, the
model's metadata and the batch limit, and a client sends the same names and shapes request after
request. So the verdict is remembered per (metadata, tensors, limit): the relay's hottest path pays
a dictionary lookup instead of walking every tensor against the model again. A client's binary
requests repeat their JSON header as well, and `check_request` then hands out one shared
`same_meta` object for them, which names the tensors by identity; other requests (JSON data) are
named by a tuple of their names, datatypes and shapes.
"""

from __future__ import annotations

from collections.abc import Callable

from discovery.node import ModelInfo
from gateway_plugin.errors import PayloadTooLarge
from gateway_plugin.inputs import check_batch_size
from worker.engine import check_signature
from worker.errors import WorkerError
from worker.protocol.checked import LazyTensors

__all__ = ["SignatureChecks"]

# An error's class and message, raised anew for each request (an exception carries its traceback).
_Fault = tuple[Callable[[str], Exception], str]
# The remembered verdict, with the objects its key names by id: holding them keeps those ids from being
# reused by other objects, so a key found is always about these very objects.
_Entry = tuple[ModelInfo, object, _Fault | None]
# What a key names the tensors by: the id of a shared `same_meta`, or their (name, datatype, shape)s,
# for at most this many tensors (names are at most 256 characters, shapes 32 dimensions): a few KB.
_MAX_NAMED_TENSORS = 8
_Tensors = int | tuple[tuple[str, str, tuple[int, ...]], ...]


class SignatureChecks:
    """`check_batch_size` then `check_signature`, remembered for inputs with a `same_meta` (bounded)."""

    def __init__(self, max_entries: int = 256) -> None:
        self._max_entries = max_entries
        self._verdicts: dict[tuple[int, _Tensors, int], _Entry] = {}

    def check(self, info: ModelInfo, inputs: LazyTensors, max_batch_size: int) -> None:
        same = inputs.same_meta
        tensors: _Tensors
        if same is not None:
            tensors = id(same)
        elif len(inputs.meta) <= _MAX_NAMED_TENSORS:  # named by content: equal keys are the same tensors
            same = tensors = tuple((meta.name, meta.datatype, tuple(meta.shape)) for meta in inputs.meta)
        else:  # a key as large as the request would let callers fill memory with refused requests
            _check(info, inputs, max_batch_size)
            return
        key = (id(info), tensors, max_batch_size)
        entry = self._verdicts.get(key)
        if entry is None:
            if len(self._verdicts) >= self._max_entries:
                self._verdicts.clear()  # headers and models are few; a flood of new ones starts over
            entry = self._verdicts[key] = (info, same, _fault(info, inputs, max_batch_size))
        fault = entry[2]
        if fault is not None:
            raise fault[0](fault[1])


def _check(info: ModelInfo, inputs: LazyTensors, max_batch_size: int) -> None:
    check_batch_size(info, inputs.meta, max_batch_size)
    check_signature(info.name, info.inputs, inputs.meta, max_batch_size=info.max_batch_size)


def _fault(info: ModelInfo, inputs: LazyTensors, max_batch_size: int) -> _Fault | None:
    try:
        _check(info, inputs, max_batch_size)
    except (PayloadTooLarge, WorkerError) as exc:  # what the two checks raise
        return type(exc), str(exc)
    return None
