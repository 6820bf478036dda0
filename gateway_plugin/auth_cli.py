"""The CLI's auth pieces: `distinfer token`, the gateway's dev token, the node's token and TLS flags.

`distinfer gateway` never turns auth off by itself: with no key configured it makes a random
HS256 secret for this run only and prints a short-lived token signed with it (CONTRACT §6).
"""

from __future__ import annotations

import argparse
import os
import secrets
import ssl
import sys
from pathlib import Path
from typing import Any

import jwt
from pydantic import SecretStr

from gateway_plugin.auth import ADMIN, INFER, mint_token
from gateway_plugin.settings import Settings
from worker.errors import ConfigurationError

__all__ = ["DEV_TOKEN_TTL_S", "add_node_security", "add_token_parser", "announce_dev_token", "node_security"]

DEV_TOKEN_TTL_S = 3600


def announce_dev_token(settings: Settings, *, out: Any = None) -> str | None:
    """With auth on and no key set: a random secret for this run, and a dev token printed to `out`."""
    auth = settings.auth
    if auth.disabled or auth.jwt_secret or auth.jwt_public_key or auth.jwt_jwks_url:
        return None
    secret = secrets.token_urlsafe(32)
    auth.jwt_secret = SecretStr(secret)
    token = mint_token(
        secret,
        scopes=(INFER, ADMIN),
        sub="distinfer-dev",
        ttl_s=DEV_TOKEN_TTL_S,
        audience=auth.jwt_audience,
        issuer=auth.jwt_issuer,
    )
    stream = out if out is not None else sys.stderr
    print(
        "distinfer: no JWT key is configured (DISTINFER_JWT_SECRET / _PUBLIC_KEY / _JWKS_URL), so this run\n"
        f"accepts tokens signed with a random key. Dev token (scopes infer admin, valid {DEV_TOKEN_TTL_S // 60} min):\n"
        f"DISTINFER_TOKEN={token}",
        file=stream,
        flush=True,
    )
    return token


def _run_token(args: argparse.Namespace) -> int:
    settings = Settings()
    scopes = args.scope or [INFER]
    if args.private_key:
        try:
            key: Any = Path(args.private_key).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"--private-key: cannot read a PEM key from {args.private_key}: {exc}") from exc
        algorithm = args.algorithm
    elif settings.auth.jwt_secret is not None:
        key, algorithm = settings.auth.jwt_secret.get_secret_value(), "HS256"
    else:
        print("distinfer token: set DISTINFER_JWT_SECRET, or pass --private-key", file=sys.stderr)
        return 2
    try:
        token = mint_token(
            key,
            scopes=scopes,
            sub=args.sub,
            ttl_s=args.ttl,
            algorithm=algorithm,
            audience=settings.auth.jwt_audience,
            issuer=settings.auth.jwt_issuer,
            kid=args.kid,
        )
    except (ValueError, TypeError, jwt.PyJWTError) as exc:  # a key that is not one, or not for that algorithm
        raise ConfigurationError(f"cannot sign a {algorithm} token with that key: {exc}") from exc
    print(token)
    return 0


def add_token_parser(commands: Any) -> None:
    token = commands.add_parser("token", help="mint a JWT from the configured secret (or a private key)")
    token.add_argument("--scope", action="append", choices=[INFER, ADMIN], help="repeatable (default: infer)")
    token.add_argument("--sub", default=os.environ.get("USER", "operator"), help="subject (default: $USER)")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token.add_argument("--private-key", default=None, help="PEM private key file (RS256/ES256) instead of the secret")
    token.add_argument("--algorithm", default="RS256", choices=["RS256", "ES256", "ES384"], help="with --private-key")
    token.add_argument("--kid", default=None, help="key id header (for JWKS)")
    token.set_defaults(run=_run_token)


def add_node_security(node: argparse.ArgumentParser) -> None:
    group = node.add_argument_group("security")
    group.add_argument("--node-token", default=None, help="require this bearer token (default: DISTINFER_NODE_TOKEN)")
    group.add_argument("--ssl-certfile", default=None, help="serve HTTPS with this certificate (PEM)")
    group.add_argument("--ssl-keyfile", default=None, help="its private key (PEM)")
    group.add_argument("--ssl-ca-certs", default=None, help="require client certificates signed by this CA")
    node.add_argument("--max-new-tokens", type=int, default=65_536, help="most tokens one generate_stream may ask")


def node_security(args: argparse.Namespace) -> tuple[str | None, dict[str, Any]]:
    """The node token (flag, else environment) and uvicorn's TLS options."""
    token = args.node_token or os.environ.get("DISTINFER_NODE_TOKEN") or None
    tls: dict[str, Any] = {}
    if args.ssl_certfile:
        tls = {"ssl_certfile": args.ssl_certfile, "ssl_keyfile": args.ssl_keyfile}
        if args.ssl_ca_certs:
            tls |= {"ssl_ca_certs": args.ssl_ca_certs, "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return token, tls
