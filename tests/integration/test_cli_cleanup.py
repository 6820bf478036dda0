"""`distinfer demo` (and every command that starts servers) stops them when it is itself stopped.

Regression: on SIGTERM (`kill`, a cancelled CI job, a supervisor) Python's default handling ended
the demo without running its cleanup, and its two nodes and gateway kept running, orphaned.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worker.bundled import bundled_models


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text(encoding="ascii").split()
        found.update(int(child) for child in text)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_the_demo_stops_its_nodes_when_it_is_stopped(stop: signal.Signals) -> None:
    command = [sys.executable, "-m", "gateway_plugin.cli", "demo", "--model-repository", str(bundled_models())]
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + 120
        lines: list[bytes] = []
        while time.monotonic() < deadline:  # until the nodes and the gateway run
            line = demo.stdout.readline()
            lines.append(line)
            if b"started" in line and b"gateway" in line:
                break
            assert line, b"".join(lines).decode()
        servers = _children(demo.pid)
        assert len(servers) == 3
        demo.send_signal(stop)
        code = demo.wait(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        if demo.stdout is not None:
            demo.stdout.close()
    assert code == 128 + stop if stop == signal.SIGTERM else code == 130, code
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in servers):
        time.sleep(0.1)
    assert not [pid for pid in servers if _alive(pid)], "servers left running after the demo stopped"
