"""Where one hop's CPU goes at concurrency 1: `python -m bench.hop_profile`.

Starts a node, the minimal aiohttp pass-through and the gateway (fast lane, auth off), sends each
proxy one request at a time while `perf record` (cpu-clock sampling, kernel and native code
included) samples its process, and prints the CPU per request by shared object (the interpreter,
the kernel, uvloop, the HTTP parsers, pydantic-core) and the symbols that differ most, gateway
minus pass-through. At concurrency 1 the gateway's overhead over the pass-through follows its
extra CPU per request; this says which kind of work that is, where counting bytecode operations
(`bench.relay_ops`) cannot: operations in a tight loop cost far less than those spread over many
functions, and the kernel's share is invisible to Python.

Needs `perf` (Debian: `linux-perf`) and `kernel.perf_event_paranoid` <= 2; says so otherwise.

    python -m bench.hop_profile --encoding binary --seconds 5 [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import LoadSpec, run_load
from bench.scenarios.overhead import request_bodies
from bench.servers import start_passthrough
from gateway_plugin.processes import ServerProcess, start_gateway, start_node
from worker.bundled import bundled_models

__all__ = ["Profile", "main", "parse_report", "per_request_us"]

_NODE_PATH = "/v2/models/digits/infer"
_GATEWAY_PATH = "/api/v1/distributed" + _NODE_PATH
_SAMPLE_HZ = 4999
_ROW = re.compile(r"^\s+([\d.]+)%\s+(.+?)\s*$")
_TOTAL = re.compile(r"^# Event count \(approx\.\): (\d+)")


@dataclass(frozen=True, slots=True)
class Profile:
    """One proxy's samples: its CPU (ns) and requests in the sampled run, shares by object and symbol."""

    name: str
    cpu_ns: int
    requests: int
    by_object: dict[str, float]  # percent of the samples
    by_symbol: dict[str, float]


def parse_report(text: str) -> tuple[int, dict[str, float]]:
    """`perf report --stdio` text: the event count (ns of cpu-clock) and the percent per row key."""
    total = 0
    rows: dict[str, float] = {}
    for line in text.splitlines():
        found = _TOTAL.match(line)
        if found:
            if total:
                raise ValueError("more than one event in the report: record one (-e cpu-clock)")
            total = int(found.group(1))
            continue
        row = _ROW.match(line)
        if row and not line.startswith("#"):
            rows[row.group(2)] = rows.get(row.group(2), 0.0) + float(row.group(1))
    return total, rows


def per_request_us(profile: Profile, shares: dict[str, float]) -> dict[str, float]:
    """Percent shares of `profile`'s samples as µs of CPU per request."""
    return {key: share / 100 * profile.cpu_ns / 1000 / profile.requests for key, share in shares.items()}


def _report(data: Path, key: str) -> tuple[int, dict[str, float]]:
    command = ["perf", "report", "-i", str(data), "--stdio", "--no-children", "-g", "none", "--sort", key]
    text = subprocess.run([*command, "--percent-limit", "0"], capture_output=True, text=True, check=True).stdout
    return parse_report(text)


def _profile(name: str, server: ServerProcess, url: str, encoding: str, seconds: float, workdir: Path) -> Profile:
    body = request_bodies()[encoding]

    def load(duration_s: float) -> int:
        spec = LoadSpec(url=url, body=body.data, headers=body.headers, concurrency=1, duration_s=duration_s)
        result = asyncio.run(run_load(spec))
        if result.errors or result.timeouts:
            raise RuntimeError(f"{name}: {result.errors} errors, {result.timeouts} timeouts")
        return result.ok

    load(1.0)  # warm: connections, remembered headers, pickers
    data = workdir / f"{name}.data"
    # Sampled a little longer than the load runs, so that every request falls inside.
    # cpu-clock, not perf's default `cycles` where the CPU has counters: its event count is then ns.
    record = ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(_SAMPLE_HZ), "-p", str(server.process.pid)]
    perf = subprocess.Popen([*record, "-o", str(data), "--", "sleep", str(seconds + 1.0)], stderr=subprocess.PIPE)
    try:
        time.sleep(0.3)
        requests = load(seconds)
        _, err = perf.communicate(timeout=seconds + 30)
    except BaseException:  # a failed run or a timeout: perf must not outlive it
        perf.kill()
        perf.wait(10)
        raise
    if perf.returncode != 0:
        raise RuntimeError(f"perf record failed: {err.decode(errors='replace').strip()}")
    cpu_ns, by_object = _report(data, "dso")
    _, by_symbol = _report(data, "sym")
    return Profile(name, cpu_ns, requests, by_object, by_symbol)


def _perf_usable() -> str | None:
    """Why perf cannot sample here, or None."""
    if shutil.which("perf") is None:
        return "no perf binary (Debian: apt-get install linux-perf)"
    probe = subprocess.run(["perf", "record", "-q", "-o", "/dev/null", "--", "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"perf cannot record: {probe.stderr.strip()[:200]}"


def profile_hop(encoding: str, seconds: float) -> tuple[Profile, Profile]:
    """The pass-through's and the gateway's profiles, each over the same node, one after the other."""
    node = start_node(bundled_models(), "hop-profile-node", threads=1)
    servers: list[ServerProcess] = [node]
    try:
        node.wait_ready(60)
        passthrough = start_passthrough(node.url)
        servers.append(passthrough)
        env = {
            "ENABLE_DISTRIBUTED_INFERENCE": "true",
            "DISTINFER_NODES": node.url,
            "DISTINFER_AUTH_DISABLED": "true",
            "DISTINFER_PROBE_INTERVAL_S": "1",
        }
        gateway = start_gateway(env)
        servers.append(gateway)
        passthrough.wait_ready(60)
        gateway.wait_ready(60)
        with tempfile.TemporaryDirectory(prefix="distinfer-hop-") as tmp:
            work = Path(tmp)
            plain = _profile("passthrough", passthrough, passthrough.url + _NODE_PATH, encoding, seconds, work)
            ours = _profile("gateway", gateway, gateway.url + _GATEWAY_PATH, encoding, seconds, work)
        return plain, ours
    finally:
        for server in reversed(servers):
            server.stop()


def _table(title: str, plain: dict[str, float], ours: dict[str, float], top: int) -> list[str]:
    keys = sorted(set(plain) | set(ours), key=lambda k: -(ours.get(k, 0.0) - plain.get(k, 0.0)))
    lines = [title, f"  {'gateway':>9} {'passthru':>9} {'diff':>8}  (µs of CPU per request)"]
    for key in keys[:top]:
        mine, theirs = ours.get(key, 0.0), plain.get(key, 0.0)
        lines.append(f"  {mine:9.1f} {theirs:9.1f} {mine - theirs:+8.1f}  {key[:80]}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hop_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--encoding", choices=("json", "binary"), default="binary")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of load per proxy while sampled")
    parser.add_argument("--top", type=int, default=20, help="symbols listed, by difference")
    parser.add_argument("--out", type=Path, default=None, help="JSON file with both profiles")
    args = parser.parse_args(argv)
    why = _perf_usable()
    if why is not None:
        print(f"hop_profile: {why}", file=sys.stderr)
        return 2
    plain, ours = profile_hop(args.encoding, args.seconds)
    total_plain = plain.cpu_ns / 1000 / plain.requests
    total_ours = ours.cpu_ns / 1000 / ours.requests
    print(f"{args.encoding}, c=1: CPU per request gateway {total_ours:.1f} µs, pass-through {total_plain:.1f} µs")
    lines = _table("by shared object", per_request_us(plain, plain.by_object), per_request_us(ours, ours.by_object), 10)
    lines += _table("by symbol", per_request_us(plain, plain.by_symbol), per_request_us(ours, ours.by_symbol), args.top)
    print("\n".join(lines))
    if args.out is not None:
        found = {p.name: {"cpu_ns": p.cpu_ns, "requests": p.requests, "by_object": p.by_object} for p in (plain, ours)}
        args.out.write_text(json.dumps({"encoding": args.encoding, "profiles": found}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
