"""Peer server processes: started in their own session, stopped with everything they spawned, CPU counted.

MLServer forks inference workers and Ray starts a whole cluster (GCS, raylet, actors); a SIGTERM
to the command we started is the clean stop, and whatever of its session survives it is then
killed by session id: only processes this bench started, never anything found by name. The CPU
time of a process tree (read from /proc) tells what each server spent per request.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from gateway_plugin.processes import ServerProcess

__all__ = [
    "ProcStat",
    "busy_cpu_seconds",
    "parse_stat",
    "proc_stats",
    "spawn_session",
    "stop_session",
    "tree_cpu_seconds",
]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PROC = Path("/proc")


def spawn_session(
    name: str,
    command: Sequence[str],
    port: int,
    health_path: str,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ServerProcess:
    """Start `command` as the leader of a new session, output to a temp file; wait_ready() polls its health."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by ServerProcess.stop)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(
        list(command), stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd, start_new_session=True
    )
    return ServerProcess(name, f"http://127.0.0.1:{port}", health_path, process, log)


def stop_session(server: ServerProcess, timeout_s: float = 30.0) -> int:
    """SIGTERM the leader (its clean shutdown), then SIGKILL what is left of its session; returns its exit code."""
    session = server.process.pid
    code = server.stop(timeout_s=timeout_s)
    deadline = time.monotonic() + 10.0
    while (left := _session_members(session)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    return code


class ProcStat:
    """The fields of /proc/<pid>/stat the bench uses."""

    __slots__ = ("cpu_ticks", "pid", "ppid", "session")

    def __init__(self, pid: int, ppid: int, session: int, cpu_ticks: int) -> None:
        self.pid, self.ppid, self.session, self.cpu_ticks = pid, ppid, session, cpu_ticks


def parse_stat(text: str) -> ProcStat:
    """Parse one /proc/<pid>/stat line; the command name may hold spaces and parentheses."""
    head, _, rest = text.rpartition(")")
    pid = int(head.split("(", 1)[0])
    fields = rest.split()
    # after the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    return ProcStat(pid=pid, ppid=int(fields[1]), session=int(fields[3]), cpu_ticks=int(fields[11]) + int(fields[12]))


def proc_stats() -> list[ProcStat]:
    stats: list[ProcStat] = []
    for entry in _PROC.iterdir() if _PROC.is_dir() else ():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stats.append(parse_stat((entry / "stat").read_text()))
    return stats


def _session_members(session: int) -> list[int]:
    return [stat.pid for stat in proc_stats() if stat.session == session and stat.pid != os.getpid()]


def tree_cpu_seconds(roots: Iterable[int], stats: list[ProcStat] | None = None) -> float:
    """User + system CPU seconds of the live processes under `roots` (roots included)."""
    stats = proc_stats() if stats is None else stats
    children: dict[int, list[ProcStat]] = {}
    by_pid = {stat.pid: stat for stat in stats}
    for stat in stats:
        children.setdefault(stat.ppid, []).append(stat)
    seen: set[int] = set()
    todo = [pid for pid in roots if pid in by_pid]
    ticks = 0
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        ticks += by_pid[pid].cpu_ticks
        todo.extend(child.pid for child in children.get(pid, ()))
    return ticks / _TICKS


def busy_cpu_seconds(text: str | None = None) -> float:
    """CPU seconds all cores spent running tasks since boot: user, nice, system and steal from /proc/stat.

    Interrupt time is left out: the bench's own loopback traffic is handled there, and charged to no
    process. Steal (the hypervisor running someone else) counts: it is CPU this machine did not get.
    """
    if text is None:
        try:
            text = (_PROC / "stat").read_text()
        except OSError:
            return 0.0
    fields = [int(value) for value in text.splitlines()[0].split()[1:]] + [0] * 8
    user, nice, system, steal = fields[0], fields[1], fields[2], fields[7]
    return (user + nice + system + steal) / _TICKS
