"""A request's tensors against a model's signature (names, datatypes, shapes, batch sizes), remembered.

A client's binary requests repeat their JSON header for as long as their tensors' names and
shapes do, and `check_request` then hands out one shared `same_meta` object for them. What the
checks decide depends on nothing else than that header, the model's metadata and the batch limit,
so the verdict is remembered per (metadata, header, limit), by identity: the relay's hottest path
pays a dictionary lookup instead of walking every tensor again.
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
# The remembered verdict, with the objects its key names by id: holding them keeps the ids from being reused.
_Entry = tuple[ModelInfo, object, _Fault | None]


class SignatureChecks:
    """`check_batch_size` then `check_signature`, remembered for inputs with a `same_meta` (bounded)."""

    def __init__(self, max_entries: int = 256) -> None:
        self._max_entries = max_entries
        self._verdicts: dict[tuple[int, int, int], _Entry] = {}

    def check(self, info: ModelInfo, inputs: LazyTensors, max_batch_size: int) -> None:
        same = inputs.same_meta
        if same is None:
            _check(info, inputs, max_batch_size)
            return
        key = (id(info), id(same), max_batch_size)
        entry = self._verdicts.get(key)
        if entry is None or entry[0] is not info or entry[1] is not same:
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
