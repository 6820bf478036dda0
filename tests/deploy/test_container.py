"""Dockerfile, .dockerignore and docker-compose.yml: parsed by real parsers (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dockerfile
import pytest
import yaml
from compose_spec import PyOptions

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway_plugin", "discovery", "balancer", "compat", "worker", "bench")
LOCAL_IMAGE = "distinfer:local"
# The one image the repo does not build: Redis, and only behind its opt-in profile.
OPTIONAL_IMAGES = {"redis": ("redis:7-alpine", "redis")}

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


def interpolate(text: str, environ: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR-default}` substitution, done before parsing."""

    def one(match: re.Match[str]) -> str:
        name, op, default = match["name"], match["op"], match["default"] or ""
        if op == ":-":
            return environ.get(name) or default
        if op == "-":
            return environ.get(name, default)
        return environ.get(name, "")

    return _VARIABLE.sub(one, text.replace("$$", "\0")).replace("\0", "$")


def _compose(environ: dict[str, str] | None = None) -> dict[str, Any]:
    text = interpolate((ROOT / "docker-compose.yml").read_text(encoding="utf-8"), environ or {})
    compose = PyOptions(apply_merge=True).from_yaml(text)  # raises ValueError on anything off-spec
    compose.validate()
    return compose.to_dict()


@pytest.fixture(scope="module")
def instructions() -> tuple[dockerfile.Command, ...]:
    return dockerfile.parse_file(str(ROOT / "Dockerfile"))


def _stages(instructions: tuple[dockerfile.Command, ...]) -> list[list[dockerfile.Command]]:
    stages: list[list[dockerfile.Command]] = []
    for command in instructions:
        if command.cmd == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(command)
    return stages


def test_the_image_is_slim_and_runs_as_a_non_root_user(instructions: tuple[dockerfile.Command, ...]) -> None:
    args = {
        c.value[0].split("=", 1)[0]: c.value[0].split("=", 1)[1]
        for c in instructions
        if c.cmd == "ARG" and "=" in c.value[0]
    }
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    final = _stages(instructions)[-1]
    assert final[0].value[0] == "${PYTHON_IMAGE}"
    [user] = [c.value[0] for c in final if c.cmd == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit()
    assert int(uid) >= 10000
    assert final[-1].cmd == "CMD"
    [entrypoint] = [c for c in final if c.cmd == "ENTRYPOINT"]
    assert entrypoint.json
    assert entrypoint.value == ("distinfer",)
    # Nothing but the built virtualenv and the models link is carried into the final stage.
    copies = [c for c in final if c.cmd == "COPY"]
    assert copies
    assert all(any(flag == "--from=build" for flag in c.flags) for c in copies)
    # The chart's and compose's model repository path comes from the image.
    build = " ".join(c.original for c in _stages(instructions)[0])
    assert "/opt/distinfer/models" in build


def test_torch_is_optional_pinned_and_cpu_only(instructions: tuple[dockerfile.Command, ...]) -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "ARG TORCH=0" in text
    installs = [c.value[0] for c in instructions if c.cmd == "RUN" and "torch" in c.value[0]]
    assert installs, "no torch install step"
    for step in installs:
        assert '[ "$TORCH" = "1" ]' in step  # only when asked for
        for command in re.findall(r"pip install [^;&]*", step):
            for token in command.split()[2:]:
                if token.strip("\"'").startswith("torch"):
                    assert token.strip("\"'") == "torch==2.13.0", command  # never an unpinned torch
    torch_step = next(step for step in installs if "torch==2.13.0" in step)
    assert "--index-url" in torch_step
    assert "TORCH_INDEX_URL" in torch_step
    assert "/whl/cpu" in text


def test_every_copied_path_exists_and_is_not_ignored(instructions: tuple[dockerfile.Command, ...]) -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    sources = [
        c.value[:-1] for c in instructions if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags)
    ]
    copied = {source for group in sources for source in group}
    assert set(PACKAGES) <= copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert source not in ignored, f"{source} is copied but .dockerignore drops it"
    for heavy in (".venv", ".git", "tests", "bench-results"):
        assert heavy in ignored


def test_compose_parses_and_names_only_what_the_repo_builds() -> None:
    services = _compose()["services"]
    assert {"gateway", "node-1", "node-2", "redis"} == set(services)
    for name, service in services.items():
        if name in OPTIONAL_IMAGES:
            image, profile = OPTIONAL_IMAGES[name]
            assert service["image"] == image
            assert service["profiles"] == [profile], "a foreign image must stay behind its opt-in profile"
            assert "build" not in service
            continue
        assert service["image"] == LOCAL_IMAGE
        assert service["build"]["context"] == "."
        assert "profiles" not in service
        assert service["read_only"] is True
        assert service["user"] == "10001:10001"
        assert service["cap_drop"] == ["ALL"]


def test_compose_wires_the_gateway_to_both_nodes() -> None:
    services = _compose()["services"]
    gateway = services["gateway"]
    env = gateway["environment"]
    urls = env["DISTINFER_NODES"].split(",")
    for url in urls:
        host, port = url.removeprefix("http://").split(":")
        node = services[host]
        assert node["command"][0] == "node"
        assert node["command"][node["command"].index("--port") + 1] == port
        assert gateway["depends_on"][host]["condition"] == "service_healthy"
    assert len(urls) == 2
    assert gateway["command"][0] == "gateway"
    # No secret in the repository: by default the gateway makes a random key per run and prints a dev
    # token (a written-down default let anyone mint admin tokens); the environment can give one.
    assert not env["DISTINFER_JWT_SECRET"]
    assert _compose({"DISTINFER_JWT_SECRET": "s" * 40})["services"]["gateway"]["environment"]["DISTINFER_JWT_SECRET"]
    assert "DISTINFER_AUTH_DISABLED" not in env
    assert gateway["ports"] == ["127.0.0.1:8000:8000"]


def test_compose_takes_the_task_store_from_the_environment() -> None:
    env = _compose({"DISTINFER_TASK_STORE": "redis://redis:6379/0", "TORCH": "1"})["services"]
    assert env["gateway"]["environment"]["DISTINFER_TASK_STORE"] == "redis://redis:6379/0"
    assert env["node-1"]["build"]["args"]["TORCH"] == "1"


def test_interpolation_follows_compose_rules() -> None:
    assert interpolate("${A:-x} ${B-y} ${C} $$D", {"A": "", "B": ""}) == "x   $D"
    assert interpolate("${A:-x}", {"A": "set"}) == "set"


def test_an_off_spec_compose_file_is_rejected() -> None:
    with pytest.raises(ValueError, match="extension key"):
        PyOptions(apply_merge=True).from_yaml(yaml.safe_dump({"services": {"web": {"image": "x", "imag": "y"}}}))
