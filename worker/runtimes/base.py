"""The one small interface every model runtime implements."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

__all__ = ["Arrays", "Runtime"]

Arrays = Mapping[str, np.ndarray[Any, Any]]


class Runtime(Protocol):
    """Runs one loaded model on named numpy inputs; called from a worker thread, never the loop."""

    def run(self, inputs: Arrays) -> dict[str, np.ndarray[Any, Any]]: ...

    def close(self) -> None: ...
