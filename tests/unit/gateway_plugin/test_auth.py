"""JWT verification with real signed tokens; every key is generated here (CONTRACT §6)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr

from gateway_plugin.auth import Authenticator, Principal, mint_token, scopes_of
from gateway_plugin.errors import AuthUnavailable, Forbidden, Unauthorized
from gateway_plugin.settings import AuthSettings
from tests.fake_clock import FakeClock

SECRET = "unit-test-secret-that-is-long-enough-0123456789"


def pem(public_key: Any) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def hs(**settings: Any) -> Authenticator:
    return Authenticator(AuthSettings(jwt_secret=SecretStr(SECRET), **settings))


async def rejected(auth: Authenticator, token: str, words: str) -> Unauthorized:
    with pytest.raises(Unauthorized) as caught:
        await auth.verify(token)
    assert words in caught.value.detail
    challenge = caught.value.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="distinfer", error="invalid_token", error_description="')
    return caught.value


async def test_hs256_token_gives_subject_and_scopes() -> None:
    principal = await hs().verify(mint_token(SECRET, scopes=("infer",), sub="alice"))
    assert principal == Principal(sub="alice", scopes=frozenset({"infer"}), claims=principal.claims)


def test_admin_implies_infer_and_scp_is_read() -> None:
    assert scopes_of({"scope": "admin"}) == {"admin", "infer"}
    assert scopes_of({"scp": ["infer", "other"]}) == {"infer", "other"}
    assert scopes_of({"scp": "admin"}) == {"admin", "infer"}
    assert scopes_of({"scope": 3}) == frozenset()


async def test_malformed_and_bad_signature_are_401() -> None:
    auth = hs()
    await rejected(auth, "not-a-jwt", "malformed")
    await rejected(auth, "a.b.c", "malformed")
    forged = mint_token("another-secret-that-is-long-enough-987654321", sub="mallory")
    await rejected(auth, forged, "bad signature")


async def test_expired_and_not_yet_valid_respect_the_leeway() -> None:
    auth = hs(leeway_s=30)
    now = time.time()
    assert await auth.verify(mint_token(SECRET, ttl_s=60, now=now - 70))  # expired 10 s ago: inside leeway
    await rejected(auth, mint_token(SECRET, ttl_s=60, now=now - 200), "expired")
    early = jwt.encode({"sub": "x", "exp": int(now) + 600, "nbf": int(now) + 300}, SECRET, algorithm="HS256")
    await rejected(auth, early, "not valid yet")


async def test_missing_exp_is_refused() -> None:
    await rejected(hs(), jwt.encode({"sub": "x", "scope": "infer"}, SECRET, algorithm="HS256"), "'exp'")


async def test_audience_and_issuer_are_checked() -> None:
    auth = hs(jwt_audience="distinfer", jwt_issuer="https://issuer.example")
    good = mint_token(SECRET, audience="distinfer", issuer="https://issuer.example")
    assert (await auth.verify(good)).sub == "distinfer-dev"
    await rejected(auth, mint_token(SECRET, audience="someone-else", issuer="https://issuer.example"), "audience")
    await rejected(auth, mint_token(SECRET, audience="distinfer", issuer="https://evil.example"), "issuer")
    await rejected(auth, mint_token(SECRET, issuer="https://issuer.example"), "aud")


def _unsigned(claims: dict[str, Any], alg: str = "none") -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': alg, 'typ': 'JWT'})}.{part(claims)}."


async def test_alg_none_is_refused_in_every_spelling() -> None:
    claims = {"sub": "x", "scope": "admin", "exp": int(time.time()) + 600}
    for alg in ("none", "None", "NONE"):
        await rejected(hs(), _unsigned(claims, alg), "alg none")


@pytest.mark.parametrize(
    "alg", ["RS256\u4e2d", "X\r\nSet-Cookie: injected=1", 'RS"256\\', "X\u00e9", "A" * 5000], ids=str.__len__
)
async def test_a_tokens_own_header_cannot_break_the_challenge(alg: str) -> None:
    """The refusal quotes the token's alg; the WWW-Authenticate value stays printable ASCII, quoted, bounded."""
    caught = await rejected(hs(), _unsigned({"sub": "x", "exp": int(time.time()) + 600}, alg), "")
    challenge = caught.headers["WWW-Authenticate"]
    challenge.encode("ascii")  # what a server can send at all (uvicorn refuses CR/LF, Starlette non-latin-1)
    assert all(" " <= char <= "~" for char in challenge)
    description = challenge.split('error_description="', 1)[1]
    assert description.endswith('"')
    assert '"' not in description[:-1]
    assert "\\" not in description
    assert len(challenge) < 300


async def test_rs256_public_key_and_algorithm_confusion(rsa_key: rsa.RSAPrivateKey) -> None:
    public = pem(rsa_key.public_key())
    auth = Authenticator(AuthSettings(jwt_public_key=SecretStr(public)))
    token = mint_token(rsa_key, algorithm="RS256", scopes=("admin",), sub="ops")
    assert (await auth.verify(token)).is_admin
    # The classic confusion: an HS256 token whose HMAC key is the (public) PEM itself.
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(
        json.dumps({"sub": "mallory", "scope": "admin", "exp": int(time.time()) + 600}).encode()
    ).rstrip(b"=")
    signature = base64.urlsafe_b64encode(
        hmac.new(public.encode(), header + b"." + body, hashlib.sha256).digest()
    ).rstrip(b"=")
    confused = (header + b"." + body + b"." + signature).decode()
    await rejected(auth, confused, "HS256 tokens are not accepted")
    # And the other way round: an RS256 token where only an HS secret is configured.
    await rejected(hs(), token, "RS256 is not accepted")


async def test_es256_public_key_from_a_file(ec_key: ec.EllipticCurvePrivateKey, tmp_path: Any) -> None:
    path = tmp_path / "ec.pem"
    path.write_text(pem(ec_key.public_key()))
    auth = Authenticator(AuthSettings(jwt_public_key=SecretStr(str(path))))
    assert (await auth.verify(mint_token(ec_key, algorithm="ES256", sub="edge"))).sub == "edge"
    other = ec.generate_private_key(ec.SECP256R1())
    await rejected(auth, mint_token(other, algorithm="ES256"), "bad signature")


class _Jwks:
    """A real HTTP server on loopback serving a JWK set that the test can rotate."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.down = False
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                if owner.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.dumps({"keys": owner.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def publish(self, kid: str, key: rsa.RSAPrivateKey) -> None:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        self.keys.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})


@pytest.fixture
def jwks() -> Iterator[_Jwks]:
    server = _Jwks()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


async def test_jwks_keys_are_cached_and_refreshed_on_an_unknown_kid(jwks: _Jwks, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks.publish("k1", rsa_key)
    auth = Authenticator(AuthSettings(jwt_jwks_url=jwks.url, jwks_refresh_s=0))
    for _ in range(3):
        assert (await auth.verify(mint_token(rsa_key, algorithm="RS256", kid="k1", sub="a"))).sub == "a"
    assert jwks.fetches == 1  # cached after the first
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.publish("k2", rotated)  # a new key appears: its first token triggers one refetch
    assert (await auth.verify(mint_token(rotated, algorithm="RS256", kid="k2", sub="b"))).sub == "b"
    assert jwks.fetches == 2
    await rejected(auth, mint_token(rotated, algorithm="RS256", kid="k9"), "unknown signing key id 'k9'")
    await rejected(auth, mint_token(rotated, algorithm="RS256"), "no key id")
    # A token that names k1 but is signed by k2's key.
    await rejected(auth, mint_token(rotated, algorithm="RS256", kid="k1"), "bad signature")


async def test_a_symmetric_key_in_the_jwks_verifies_nothing(jwks: _Jwks) -> None:
    """Regression (audit): an `oct` key published with alg HS384 or HS512 verified tokens signed with
    it, and a JWKS is public: anyone who read the set could mint admin tokens."""
    secret = b"published-in-the-jwks-for-all-to-read-" + b"0123456789abcdef" * 3
    for alg in ("HS384", "HS512"):
        oct_key = {"kty": "oct", "k": base64.urlsafe_b64encode(secret).rstrip(b"=").decode(), "alg": alg}
        jwks.keys.append({**oct_key, "kid": f"oct-{alg}", "use": "sig"})
    auth = Authenticator(AuthSettings(jwt_jwks_url=jwks.url, jwks_refresh_s=0))
    for alg in ("HS384", "HS512"):
        forged = jwt.encode(
            {"sub": "mallory", "scope": "admin", "exp": time.time() + 60},
            secret,
            algorithm=alg,
            headers={"kid": f"oct-{alg}"},
        )
        await rejected(auth, forged, "is symmetric")


async def test_jwks_down_is_503_not_401(jwks: _Jwks, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks.down = True
    auth = Authenticator(AuthSettings(jwt_jwks_url=jwks.url, jwks_refresh_s=0))
    with pytest.raises(AuthUnavailable):
        await auth.verify(mint_token(rsa_key, algorithm="RS256", kid="k1"))


async def test_scope_dependencies() -> None:
    from fastapi.security import HTTPAuthorizationCredentials

    auth = hs()

    def creds(*scopes: str) -> HTTPAuthorizationCredentials:
        return HTTPAuthorizationCredentials(scheme="Bearer", credentials=mint_token(SECRET, scopes=scopes))

    assert (await auth.require_infer(creds("admin"))).is_admin
    with pytest.raises(Forbidden) as caught:
        await auth.require_admin(creds("infer"))
    assert caught.value.headers["WWW-Authenticate"].endswith('error="insufficient_scope", scope="admin"')
    with pytest.raises(Forbidden):
        await auth.require_infer(creds("other"))
    with pytest.raises(Unauthorized) as missing:
        await auth.require_infer(None)
    assert missing.value.headers["WWW-Authenticate"] == 'Bearer realm="distinfer"'


async def test_disabled_is_the_only_way_off_and_no_key_refuses_everyone() -> None:
    off = Authenticator(AuthSettings(disabled=True))
    assert (await off.require_admin(None)).anonymous
    nokey = Authenticator(AuthSettings())
    assert not nokey.configured
    from fastapi.security import HTTPAuthorizationCredentials

    with pytest.raises(Unauthorized, match="no verification key"):
        await nokey.require_infer(HTTPAuthorizationCredentials(scheme="Bearer", credentials=mint_token(SECRET)))


async def test_subject_is_verified_or_none() -> None:
    auth = hs()
    assert await auth.subject(f"Bearer {mint_token(SECRET, sub='carol')}") == "carol"
    assert await auth.subject(f"Bearer {mint_token('a-different-secret-long-enough-0123456789', sub='eve')}") is None
    assert await auth.subject("Basic abc") is None
    assert await auth.subject(None) is None


async def test_a_verified_token_is_checked_once_until_exp_or_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(time.time())
    auth = Authenticator(AuthSettings(jwt_secret=SecretStr(SECRET), leeway_s=5), wall_clock=clock)
    decoded: list[str] = []
    real_decode = jwt.decode

    def counting_decode(token: str, *args: Any, **kwargs: Any) -> Any:
        decoded.append(token)
        return real_decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    long_lived = mint_token(SECRET, ttl_s=3600, sub="alice")
    short = mint_token(SECRET, ttl_s=20, sub="bob")
    for _ in range(3):
        assert (await auth.verify(long_lived)).sub == "alice"
        assert (await auth.verify(short)).sub == "bob"
    assert decoded == [long_lived, short]  # each checked once
    clock.now += 30  # past bob's exp: checked again (PyJWT's own clock still says valid)
    assert (await auth.verify(short)).sub == "bob"
    assert (await auth.verify(long_lived)).sub == "alice"
    assert decoded == [long_lived, short, short]
    clock.now += 31  # past the cache's minute: even a valid token is checked again
    await auth.verify(long_lived)
    assert decoded == [long_lived, short, short, long_lived]


async def test_refused_tokens_are_never_remembered() -> None:
    auth = hs()
    forged = mint_token("another-secret-that-is-long-enough-987654321", sub="mallory")
    for _ in range(2):
        await rejected(auth, forged, "bad signature")
    assert (await auth.verify(mint_token(SECRET, sub="alice"))).sub == "alice"
