"""Where the bundled demo models live (produced by scripts/train_digits.py, shipped in the package)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["bundled_models"]


def bundled_models() -> Path:
    return Path(__file__).resolve().parent / "bundled_models"
