"""Private virtualenvs for the peer servers the bench compares against (MLServer, Ray Serve).

A peer cannot share distinfer's venv: MLServer pins an old FastAPI, Ray brings its own world. Each
peer gets `build/venvs/<name>`, created on first use with `python -m venv` + pip and reused while
its stamp file lists the same requirements. Every step is bounded by a timeout and fails with a
`PeerSetupError` that says which step, how long it ran and the end of its output.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MLSERVER_ENV",
    "RAY_SERVE_ENV",
    "VENVS_ROOT",
    "PeerEnv",
    "PeerSetupError",
    "ReadyEnv",
    "ensure_env",
    "install_command",
    "needs_install",
]

VENVS_ROOT = Path("build/venvs")
_STAMP = ".distinfer-peer.json"

# Versions verified together on Python 3.11 (x86_64). uvloop: MLServer 1.7.1's inference workers call
# asyncio.get_event_loop() in a fresh process, which uvloop >= 0.22 turns into a RuntimeError.
_ONNX = ("onnxruntime==1.32.0", "numpy==2.4.6")


@dataclass(frozen=True, slots=True)
class PeerEnv:
    """What one peer needs: pinned requirements, and the distributions whose versions the results record."""

    name: str
    requirements: tuple[str, ...]
    probe_modules: tuple[str, ...]
    reported: tuple[str, ...]


MLSERVER_ENV = PeerEnv(
    name="mlserver",
    requirements=("mlserver==1.7.1", "uvloop==0.21.0", *_ONNX),
    probe_modules=("mlserver", "onnxruntime"),
    reported=("mlserver", "onnxruntime", "numpy", "fastapi", "uvicorn", "uvloop", "pydantic"),
)
RAY_SERVE_ENV = PeerEnv(
    name="ray-serve",
    requirements=("ray[serve]==2.60.0", *_ONNX),
    probe_modules=("ray.serve", "onnxruntime"),
    reported=("ray", "onnxruntime", "numpy", "fastapi", "starlette", "uvicorn"),
)


class PeerSetupError(RuntimeError):
    """A peer's venv could not be created, installed or checked (the message says which step and why)."""


@dataclass(frozen=True, slots=True)
class ReadyEnv:
    """A usable peer venv: where it is, whether this run created it (and how long that took), versions."""

    name: str
    root: Path
    created: bool
    setup_s: float
    versions: dict[str, str]

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def script(self, name: str) -> Path:
        return self.root / "bin" / name


def install_command(python: Path, env: PeerEnv) -> list[str]:
    """The pip call that fills a fresh venv (quiet, no version check, binary wheels only: no compiler needed)."""
    return [
        str(python),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        *env.requirements,
    ]


def needs_install(root: Path, env: PeerEnv) -> bool:
    """True unless `root` holds a venv whose stamp lists exactly `env.requirements`."""
    stamp = root / _STAMP
    if not (root / "bin" / "python").exists() or not stamp.exists():
        return True
    try:
        recorded = json.loads(stamp.read_text(encoding="utf-8")).get("requirements")
    except (OSError, ValueError, AttributeError):
        return True
    return bool(recorded != list(env.requirements))


def _run(step: str, command: Sequence[str], timeout_s: float) -> str:
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout if isinstance(exc.stdout, str) else ""
        raise PeerSetupError(f"{step}: no result within {timeout_s:.0f} s; last output:\n{_tail(output)}") from exc
    except OSError as exc:
        raise PeerSetupError(f"{step}: could not run {command[0]}: {exc}") from exc
    if done.returncode != 0:
        took = time.monotonic() - started
        raise PeerSetupError(f"{step}: exit {done.returncode} after {took:.0f} s:\n{_tail(done.stderr or done.stdout)}")
    return done.stdout


def _tail(text: str, lines: int = 15) -> str:
    # pip prints a warning per package for find-links/extra-index locations that do not exist here
    kept = [line for line in text.splitlines() if not line.startswith("WARNING: Location ")]
    return "\n".join(kept[-lines:])


def _versions(python: Path, env: PeerEnv, timeout_s: float) -> dict[str, str]:
    probe = (
        "import importlib, importlib.metadata as m, json, sys\n"
        f"for name in {list(env.probe_modules)!r}: importlib.import_module(name)\n"
        "found = {}\n"
        f"for name in {list(env.reported)!r}:\n"
        "    try: found[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: pass\n"
        "found['python'] = sys.version.split()[0]\n"
        "print(json.dumps(found))\n"
    )
    output = _run(f"{env.name}: import check", [str(python), "-c", probe], timeout_s)
    try:
        versions = json.loads(output.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise PeerSetupError(f"{env.name}: import check printed no versions: {output[-500:]!r}") from exc
    return {str(key): str(value) for key, value in versions.items()}


def ensure_env(
    env: PeerEnv,
    root_dir: Path = VENVS_ROOT,
    *,
    install_timeout_s: float = 900.0,
    step_timeout_s: float = 180.0,
) -> ReadyEnv:
    """The peer's venv, created and installed first if missing or stale; raises `PeerSetupError`."""
    root = (root_dir / env.name).absolute()  # servers run with another working directory
    started = time.monotonic()
    created = needs_install(root, env)
    if created:
        if root.exists():
            shutil.rmtree(root)  # a half-made or stale venv of ours: rebuilt from scratch
        root.parent.mkdir(parents=True, exist_ok=True)
        _run(f"{env.name}: python -m venv {root}", [sys.executable, "-m", "venv", str(root)], step_timeout_s)
        python = root / "bin" / "python"
        _run(f"{env.name}: pip install {' '.join(env.requirements)}", install_command(python, env), install_timeout_s)
    versions = _versions(root / "bin" / "python", env, step_timeout_s)
    if created:
        stamp = {"requirements": list(env.requirements), "versions": versions}
        (root / _STAMP).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    return ReadyEnv(env.name, root, created, round(time.monotonic() - started, 2), versions)
