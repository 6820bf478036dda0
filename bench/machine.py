"""What a bench result says about the machine it ran on: CPUs, platform and load, one shape for all.

Ratios are only comparable within a run on this shared 2-core machine; the load average at the
start and end of a run tells a reader whether other work disturbed it.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["describe_machine", "load_average"]


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(value, 2) for value in os.getloadavg()]


def describe_machine(**versions: str) -> dict[str, Any]:
    """CPUs, CPU model, platform, Python and the load average now; plus any library `versions` given."""
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": _cpu_model(),
        "loadavg_at_start": load_average(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **versions,
    }


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return ""
    names = [
        line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
    ]
    return names[0] if names else ""
