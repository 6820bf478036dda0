"""A configuration the operator got wrong ends the command with one line naming it and exit 2.

Regression (audit): each of these ended in a Python traceback (uvicorn's startup, the OTEL exporter
set-up, reading a key file), or in uvicorn's own error for an impossible port.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway_plugin.cli import main
from worker.bundled import bundled_models

REPO = str(bundled_models())


@pytest.mark.parametrize(
    ("argv", "env", "says"),
    [
        (["node", "--model-repository", "/nonexistent/models"], {}, "is not a folder"),
        (["node", "--model-repository", REPO], {"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER='zipkin'"),
        (["gateway"], {"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER='zipkin'"),
        (["gateway"], {"DISTINFER_JWT_PUBLIC_KEY": "no-such-key.pem"}, "DISTINFER_JWT_PUBLIC_KEY"),
        (["gateway"], {"DISTINFER_JWT_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----\nxx"}, "not a PEM public key"),
        (["token", "--private-key", "/nonexistent/key.pem"], {}, "--private-key"),
        (["token"], {"DISTINFER_CACHE_MAX_BYTES": "0"}, "invalid settings: cache.max_bytes"),
    ],
)
def test_a_bad_configuration_is_one_line_and_exit_2(
    argv: list[str],
    env: dict[str, str],
    says: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the checkout's
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main([*argv, "--port", "0"] if argv[0] != "token" else argv) == 2
    output = capsys.readouterr().err
    assert "Traceback" not in output
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"distinfer {argv[0]}: ")
    assert says in last


def test_a_signing_key_that_is_not_one_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "key.pem").write_text("not a key")
    assert main(["token", "--private-key", str(tmp_path / "key.pem")]) == 2
    assert capsys.readouterr().err.startswith("distinfer token: cannot sign a RS256 token with that key")


@pytest.mark.parametrize(
    "argv",
    [
        ["node", "--model-repository", REPO, "--port", "99999"],
        ["gateway", "--port", "-1"],
        ["node", "--model-repository", REPO, "--workers", "0"],
        ["node", "--model-repository", REPO, "--threads", "-2"],
        ["node", "--model-repository", REPO, "--max-body-bytes", "0"],
    ],
)
def test_impossible_numbers_are_refused_by_the_parser(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "must be" in capsys.readouterr().err
