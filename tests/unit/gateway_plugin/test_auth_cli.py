"""`distinfer token`, and the dev token `distinfer gateway` prints instead of turning auth off."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from gateway_plugin.auth import Authenticator
from gateway_plugin.auth_cli import announce_dev_token
from gateway_plugin.cli import main
from gateway_plugin.settings import ENVIRONMENT, AuthSettings, Settings

SECRET = "cli-test-secret-that-is-long-enough-0123456789"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


async def test_no_key_means_a_run_only_key_and_a_printed_dev_token() -> None:
    settings = Settings()
    out = io.StringIO()
    token = announce_dev_token(settings, out=out)
    assert token is not None
    assert f"DISTINFER_TOKEN={token}" in out.getvalue()
    assert settings.auth.jwt_secret is not None
    assert not settings.auth.disabled
    principal = await Authenticator(settings.auth).verify(token)
    assert principal.is_admin
    assert principal.claims["exp"] - principal.claims["iat"] == 3600


def test_a_configured_key_or_disabled_auth_prints_nothing() -> None:
    for auth in (AuthSettings(jwt_secret=SecretStr(SECRET)), AuthSettings(disabled=True)):
        settings = Settings(auth=auth)
        out = io.StringIO()
        assert announce_dev_token(settings, out=out) is None
        assert out.getvalue() == ""
        assert settings.auth == auth


async def test_distinfer_token_mints_from_the_configured_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DISTINFER_JWT_SECRET", SECRET)
    monkeypatch.setenv("DISTINFER_JWT_AUDIENCE", "distinfer")
    assert main(["token", "--scope", "admin", "--sub", "ops", "--ttl", "60"]) == 0
    token = capsys.readouterr().out.strip()
    auth = Authenticator(AuthSettings(jwt_secret=SecretStr(SECRET), jwt_audience="distinfer"))
    principal = await auth.verify(token)
    assert principal.sub == "ops"
    assert principal.scopes == {"admin", "infer"}


async def test_distinfer_token_signs_with_a_private_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "key.pem").write_bytes(pem)
    assert main(["token", "--private-key", str(tmp_path / "key.pem"), "--algorithm", "ES256"]) == 0
    token = capsys.readouterr().out.strip()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert (await Authenticator(AuthSettings(jwt_public_key=SecretStr(public.decode()))).verify(token)).scopes == {
        "infer"
    }


def test_distinfer_token_without_a_key_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token"]) == 2
    assert "DISTINFER_JWT_SECRET" in capsys.readouterr().err
