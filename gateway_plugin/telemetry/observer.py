"""What the dispatcher tells telemetry, as a protocol with a no-op default.

`Dispatcher` takes an observer in its constructor and brackets each logical call and each node
attempt with it; everything else (metrics, spans, stats, request logs) happens behind this
interface, so dispatch stays about dispatching and a test can pass its own observer::

    with observer.dispatch(model, request_id, strategy) as call:
        with observer.attempt(model, node_id, 1) as attempt:
            await client.infer(..., headers=attempt.headers)   # traceparent, X-Request-ID
        call.finished(node_id, "distributed", 1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

__all__ = ["NO_OBSERVER", "AttemptScope", "DispatchObserver", "DispatchScope", "NullObserver"]


class AttemptScope(Protocol):
    @property
    def headers(self) -> Mapping[str, str]:
        """Headers to send with this attempt (trace context, request id)."""
        ...


class DispatchScope(Protocol):
    def finished(self, node_id: str | None, mode: str, attempts: int) -> None:
        """The call succeeded: served by `node_id` (None when local) in `mode` after `attempts`."""
        ...


class DispatchObserver(Protocol):
    def dispatch(self, model: str, request_id: str, strategy: str) -> AbstractContextManager[DispatchScope]:
        """Around one logical call; an exception leaving it is the call's failure."""
        ...

    def attempt(
        self, model: str, node_id: str, number: int, *, hedge: bool = False
    ) -> AbstractContextManager[AttemptScope]:
        """Around one call to one node; an exception leaving it is that attempt's failure."""
        ...

    def later(self, work: Callable[[], None]) -> None:
        """Run `work` once the current request's response is sent (at once when there is none)."""
        ...


class _Quiet:
    headers: Mapping[str, str] = {}

    def finished(self, node_id: str | None, mode: str, attempts: int) -> None:
        return None


class NullObserver:
    """Observes nothing; the default, and what unit tests of dispatch use."""

    @contextmanager
    def dispatch(self, model: str, request_id: str, strategy: str) -> Iterator[DispatchScope]:
        yield _QUIET

    @contextmanager
    def attempt(self, model: str, node_id: str, number: int, *, hedge: bool = False) -> Iterator[AttemptScope]:
        yield _QUIET

    def later(self, work: Callable[[], None]) -> None:
        work()


_QUIET = _Quiet()
NO_OBSERVER: DispatchObserver = NullObserver()
