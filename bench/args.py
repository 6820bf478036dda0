"""Argument types shared by the `distinfer bench` scenarios (light: imported whenever `distinfer` runs)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["concurrency", "duration", "int_list"]


def int_list(low: int, high: int, what: str) -> Callable[[str], tuple[int, ...]]:
    """An argparse type for a comma list of integers, each in low..high."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(part) for part in text.split(",") if part.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a comma list of integers: {text!r}") from exc
        if not values or not all(low <= value <= high for value in values):
            raise argparse.ArgumentTypeError(f"{what} must be integers in {low}..{high}")
        return values

    return parse


concurrency = int_list(1, 512, "concurrency levels")


def duration(text: str) -> float:
    """Seconds per measured run, in (0, 60]."""
    value = float(text)
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError("duration must be in (0, 60] seconds")
    return value
