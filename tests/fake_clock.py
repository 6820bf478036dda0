"""`FakeClock`: a clock the test reads like `time.monotonic` and moves by hand (one, for every test)."""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    """A callable clock at `start` seconds until the test sets `now` or calls `advance`."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
