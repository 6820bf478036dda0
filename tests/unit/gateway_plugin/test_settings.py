"""Settings from the contract's environment names, a `.env` file and keyword arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway_plugin.settings import ENVIRONMENT, BalancerSettings, FlagSettings, Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No contract variable from the outer environment, and a cwd with no stray `.env`."""
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_env(folder: Path, **values: str) -> None:
    (folder / ".env").write_text("".join(f"{name}={value}\n" for name, value in values.items()))


def test_contract_names_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ENABLE_DISTRIBUTED_INFERENCE", "true")
    monkeypatch.setenv("DISTRIBUTED_INFERENCE_ROLLOUT_PERCENT", "37.5")
    monkeypatch.setenv("DISTRIBUTED_INFERENCE_MODE", "shadow")
    monkeypatch.setenv("DISTINFER_NODES", " http://a:8001 ,http://b:8002,  , http://c:8003  ")
    monkeypatch.setenv("DISTINFER_LOCAL_MODEL_REPOSITORY", str(tmp_path / "models"))
    monkeypatch.setenv("DISTINFER_MAX_ATTEMPTS", "4")
    monkeypatch.setenv("DISTINFER_DISCOVERY", "static, dns")
    monkeypatch.setenv("DISTINFER_DNS_SRV", "_http._tcp.nodes.example")
    monkeypatch.setenv("DISTINFER_DNS_NAMESERVER", "127.0.0.1:5353")
    monkeypatch.setenv("DISTINFER_CONSUL_URL", "http://consul:8500")
    monkeypatch.setenv("DISTINFER_CONSUL_SERVICE", "gpu-nodes")
    monkeypatch.setenv("DISTINFER_CONSUL_TOKEN", "s3cret")
    monkeypatch.setenv("DISTINFER_CONSUL_DC", "eu1")
    settings = Settings()
    assert settings.discovery.dns_srv == "_http._tcp.nodes.example"
    assert settings.discovery.dns_nameserver == "127.0.0.1:5353"
    assert (settings.discovery.consul_url, settings.discovery.consul_service) == ("http://consul:8500", "gpu-nodes")
    assert settings.discovery.consul_token is not None
    assert settings.discovery.consul_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert settings.discovery.consul_dc == "eu1"
    assert settings.flags.enabled is True
    assert settings.flags.rollout_percent == 37.5
    assert settings.flags.mode == "shadow"
    assert settings.discovery.nodes == ["http://a:8001", "http://b:8002", "http://c:8003"]
    assert settings.discovery.sources == ["static", "dns"]
    assert settings.local.model_repository == tmp_path / "models"
    assert settings.balancer.max_attempts == 4


@pytest.mark.parametrize(("raw", "enabled"), [("true", True), ("1", True), ("false", False), ("0", False)])
def test_flag_values(monkeypatch: pytest.MonkeyPatch, raw: str, enabled: bool) -> None:
    monkeypatch.setenv("ENABLE_DISTRIBUTED_INFERENCE", raw)
    assert Settings().flags.enabled is enabled


def test_nothing_set_gives_the_contract_defaults() -> None:
    settings = Settings()
    assert settings.flags.enabled is False
    assert settings.flags.rollout_percent == 100
    assert settings.flags.mode == "serve"
    assert settings.discovery.nodes == []
    assert settings.local.model_repository is None


def test_settings_are_read_when_built_not_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    before = Settings()
    monkeypatch.setenv("DISTRIBUTED_INFERENCE_MODE", "shadow")
    assert before.flags.mode == "serve"
    assert Settings().flags.mode == "shadow"


def test_dot_env_in_the_working_folder_is_read(tmp_path: Path) -> None:
    write_env(
        tmp_path,
        ENABLE_DISTRIBUTED_INFERENCE="true",
        DISTRIBUTED_INFERENCE_ROLLOUT_PERCENT="12",
        DISTINFER_NODES="http://x:1, http://y:2",
        SOMETHING_ELSE="ignored",
    )
    settings = Settings()
    assert settings.flags.enabled is True
    assert settings.flags.rollout_percent == 12
    assert settings.discovery.nodes == ["http://x:1", "http://y:2"]


def test_dot_env_elsewhere_is_not_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_env(tmp_path, ENABLE_DISTRIBUTED_INFERENCE="true")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert Settings().flags.enabled is False


def test_real_environment_wins_over_dot_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_env(tmp_path, DISTRIBUTED_INFERENCE_MODE="shadow", DISTRIBUTED_INFERENCE_ROLLOUT_PERCENT="10")
    monkeypatch.setenv("DISTRIBUTED_INFERENCE_MODE", "serve")
    settings = Settings()
    assert settings.flags.mode == "serve"
    assert settings.flags.rollout_percent == 10  # not in the real environment: .env still counts


def test_keyword_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ENABLE_DISTRIBUTED_INFERENCE", "true")
    monkeypatch.setenv("DISTINFER_NODES", "http://env:1")
    write_env(tmp_path, DISTRIBUTED_INFERENCE_MODE="shadow")
    settings = Settings(flags=FlagSettings(enabled=False, mode="serve"), discovery={"nodes": ["http://kw:1"]})
    assert settings.flags.enabled is False
    assert settings.flags.mode == "serve"
    assert settings.discovery.nodes == ["http://kw:1"]


def test_empty_value_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTINFER_MAX_ATTEMPTS", "")
    monkeypatch.setenv("DISTRIBUTED_INFERENCE_ROLLOUT_PERCENT", "")
    settings = Settings()
    assert settings.balancer.max_attempts == BalancerSettings().max_attempts
    assert settings.flags.rollout_percent == 100


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DISTINFER_MAX_ATTEMPTS", "abc"),
        ("DISTINFER_MAX_ATTEMPTS", "0"),
        ("DISTRIBUTED_INFERENCE_ROLLOUT_PERCENT", "150"),
        ("DISTRIBUTED_INFERENCE_ROLLOUT_PERCENT", "-1"),
        ("DISTRIBUTED_INFERENCE_MODE", "canary"),
        ("ENABLE_DISTRIBUTED_INFERENCE", "maybe"),
        ("DISTINFER_DISCOVERY", "static,zookeeper"),
        ("DISTINFER_NODES", "http://127.0.0.1:8001,ftp://127.0.0.1:21"),
        ("DISTINFER_NODES", "http://user:secret@127.0.0.1:8001"),
        ("DISTINFER_NODES", "http://127.0.0.1:99999"),
    ],
)
def test_invalid_values_raise(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_invalid_value_in_dot_env_raises(tmp_path: Path) -> None:
    write_env(tmp_path, DISTRIBUTED_INFERENCE_ROLLOUT_PERCENT="150")
    with pytest.raises(ValidationError):
        Settings()


def test_invalid_keyword_argument_raises() -> None:
    with pytest.raises(ValidationError):
        Settings(flags={"rollout_percent": 101})
    with pytest.raises(ValidationError):
        Settings(nonsense=True)


def test_the_gateway_command_names_a_bad_setting_instead_of_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway_plugin.cli import main

    monkeypatch.setenv("DISTINFER_NODES", "http://127.0.0.1:99999")
    assert main(["gateway", "--port", "0"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("distinfer gateway: invalid settings: discovery.nodes:")
    assert "port 1-65535" in error


def test_the_gateway_command_names_an_unknown_strategy_instead_of_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from gateway_plugin.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISTINFER_STRATEGY", "fastest")
    assert main(["gateway", "--port", "0"]) == 2
    output = capsys.readouterr().err
    error = output.splitlines()[-1]  # after any warning the build logged
    assert error.startswith("distinfer gateway: invalid settings: DISTINFER_STRATEGY:")
    assert "'fastest'" in error
    assert "Traceback" not in output


def test_the_env_file_is_the_callers_choice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Regression: `.env` in the working directory was always read: `_env_file` named another file
    in vain, and `_env_file=None` still read `.env`."""
    monkeypatch.chdir(tmp_path)
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".env").write_text("DISTINFER_MAX_ATTEMPTS=7\n")
    (tmp_path / "prod.env").write_text("DISTINFER_MAX_ATTEMPTS=2\n")
    assert Settings().balancer.max_attempts == 7  # the default: ./.env
    assert Settings(_env_file="prod.env").balancer.max_attempts == 2  # type: ignore[call-arg]
    assert Settings(_env_file=None).balancer.max_attempts == 3  # type: ignore[call-arg]  # none: the code's default
    assert Settings(_env_file=(".env", "prod.env")).balancer.max_attempts == 2  # type: ignore[call-arg]  # later wins


def test_the_dev_token_the_gateway_command_prints_is_accepted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Regression: the run-only key was made after the app was built, whose authenticator had already
    read the settings: with no key configured (compose's default) every request was 401."""
    import re

    from starlette.testclient import TestClient

    from gateway_plugin import cli

    monkeypatch.chdir(tmp_path)
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    served: list[Any] = []
    monkeypatch.setattr(cli, "_serve", lambda app, *args, **kwargs: served.append(app))
    assert cli.main(["gateway", "--port", "0"]) == 0
    token = re.search(r"DISTINFER_TOKEN=(\S+)", capsys.readouterr().err)
    assert token is not None
    with TestClient(served[0]) as client:
        accepted = client.get("/api/v1/distributed/nodes", headers={"Authorization": f"Bearer {token.group(1)}"})
        refused = client.get("/api/v1/distributed/nodes", headers={"Authorization": "Bearer x.y.z"})
    assert accepted.status_code == 200, accepted.text
    assert refused.status_code == 401


@pytest.mark.parametrize(
    ("name", "value"), [("DISTINFER_NODES", "http://127.0.0.1:8001"), ("DISTINFER_NODES_FILE", "/etc/nodes.yaml")]
)
def test_static_nodes_without_the_static_source_are_refused_not_ignored(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv("DISTINFER_DISCOVERY", "consul")
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match="no static"):
        Settings()
    monkeypatch.setenv("DISTINFER_DISCOVERY", "static,consul")
    assert Settings().discovery.sources == ["static", "consul"]
