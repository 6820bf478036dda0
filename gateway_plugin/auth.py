"""Bearer JWT authentication (CONTRACT §6), as FastAPI dependencies bound to one `Authenticator`.

Keys come from settings only: an HS256 secret, a PEM public key (RSA: RS256, EC: ES256/ES384),
and/or a JWKS URL (PyJWT's `PyJWKClient`, keys cached by `kid`; an unknown `kid` refetches the
set, at most once per `jwks_refresh_s`). Each key verifies only its own algorithms, so `alg:
none` and HS/RS confusion (an HS256 token "signed" with the public key) are refused before any
signature check. `exp` is required; `exp`/`nbf` get `leeway_s`. Scopes come from `scope`
(space separated) or `scp` (list or string); `admin` implies `infer`.

    401  WWW-Authenticate: Bearer realm="distinfer", error="invalid_token", error_description="..."
    403  WWW-Authenticate: Bearer realm="distinfer", error="insufficient_scope", scope="admin"

A request without credentials gets the bare challenge (RFC 6750 §3.1: no error code).
`DISTINFER_AUTH_DISABLED=true` is the only way off; then every caller is an anonymous admin.
"""

import asyncio
import hashlib
import logging
import re
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from gateway_plugin.errors import AuthUnavailable, Forbidden, Unauthorized
from gateway_plugin.settings import AuthSettings
from worker.errors import ConfigurationError

__all__ = ["ADMIN", "INFER", "Authenticator", "Principal", "mint_token", "node_ssl_context", "scopes_of"]

log = logging.getLogger(__name__)

INFER = "infer"
ADMIN = "admin"
_REALM = 'Bearer realm="distinfer"'
_UNSAFE_IN_CHALLENGE = re.compile(r'[^\x20-\x7e]|["\\]')
_CHALLENGE_DESCRIPTION_MAX = 200
_HMAC = ("HS256",)
_JWKS_LIFESPAN_S = 300.0
# Stateless: reads the Authorization header, and documents the scheme in OpenAPI.
_BEARER = HTTPBearer(auto_error=False, scheme_name="bearer", description="JWT with scope `infer` or `admin`")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's subject and scopes (`admin` already implies `infer`)."""

    sub: str | None
    scopes: frozenset[str]
    claims: Mapping[str, Any] = field(default_factory=dict)
    anonymous: bool = False

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.scopes

    def has(self, scope: str) -> bool:
        return scope in self.scopes


# Everyone, when auth is disabled: one immutable principal, not a new one per request.
_ANONYMOUS = Principal(sub=None, scopes=frozenset({INFER, ADMIN}), anonymous=True)


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """Scopes from `scope` ("a b c") or `scp` (["a", "b"] or "a b"); `admin` implies `infer`."""
    found: set[str] = set()
    for claim in ("scope", "scp"):
        value = claims.get(claim)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(item for item in value if isinstance(item, str))
    if ADMIN in found:
        found.add(INFER)
    return frozenset(found)


def _invalid(description: str) -> Unauthorized:
    # The description may quote the token's own header (its alg, its kid): attacker-chosen text.
    # A header value takes printable ASCII only (RFC 6750 §3 for error_description); anything else
    # would break the response (a 500, or a line break injected into the headers).
    quoted = _UNSAFE_IN_CHALLENGE.sub("?", description)[:_CHALLENGE_DESCRIPTION_MAX]
    header = f'{_REALM}, error="invalid_token", error_description="{quoted}"'
    return Unauthorized(description, headers={"WWW-Authenticate": header})


def _public_key(value: str) -> tuple[Any, tuple[str, ...]]:
    """A PEM public key (text, or a file path) and the algorithms it may verify."""
    try:
        pem = value if "-----BEGIN" in value else Path(value).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"DISTINFER_JWT_PUBLIC_KEY is not a PEM key, nor a readable PEM file: {exc}") from exc
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"DISTINFER_JWT_PUBLIC_KEY: not a PEM public key ({exc})") from exc
    if isinstance(key, rsa.RSAPublicKey):
        return key, ("RS256",)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key, ({"secp256r1": "ES256", "secp384r1": "ES384"}.get(key.curve.name, "ES256"),)
    raise ConfigurationError(f"DISTINFER_JWT_PUBLIC_KEY: unsupported key type {type(key).__name__}")


class _JwksKeys:
    """Signing keys by `kid` from a JWKS URL; PyJWKClient does the fetching (in a thread)."""

    def __init__(self, url: str, refresh_s: float, clock: Callable[[], float]) -> None:
        self._client = jwt.PyJWKClient(url, lifespan=_JWKS_LIFESPAN_S, cooldown_duration=refresh_s, timeout=5)
        self._keys: dict[str, tuple[jwt.PyJWK, float]] = {}
        self._clock = clock
        self._lock = asyncio.Lock()

    async def get(self, kid: str) -> jwt.PyJWK:
        cached = self._keys.get(kid)
        if cached is not None and self._clock() - cached[1] < _JWKS_LIFESPAN_S:
            return cached[0]
        async with self._lock:  # one fetch at a time; PyJWKClient's cooldown bounds the refetches
            try:
                key = await asyncio.to_thread(self._client.get_signing_key, kid)
            except jwt.PyJWKClientConnectionError as exc:
                log.warning("JWKS fetch failed: %s", exc)
                raise AuthUnavailable("the token's signing keys cannot be fetched now") from exc
            except jwt.PyJWKClientError as exc:
                raise _invalid(f"unknown signing key id {kid!r}") from exc
            if len(self._keys) >= 64:  # bounded: kids are attacker-chosen until verified
                self._keys.clear()
            self._keys[kid] = (key, self._clock())
            return key


class _VerifiedTokens:
    """Principals of tokens verified lately: a client's token is checked once, not on every request.

    A signature check costs ~40 us per request (PyJWT, HS256; more for RS/ES). Keys are digests
    (the token is a credential); only successes are kept. An entry lives until the token's `exp`
    (plus leeway) or `ttl_s`, whichever is first, so a key taken out of the JWKS stops working
    within `ttl_s`. Bounded: the oldest entry goes when full.
    """

    def __init__(self, *, max_entries: int = 10_000, ttl_s: float = 60.0, clock: Callable[[], float] = time.time):
        self._entries: dict[bytes, tuple[Principal, float]] = {}
        self._max = max_entries
        self._ttl = ttl_s
        self._clock = clock

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.blake2b(token.encode(), digest_size=32).digest()

    def get(self, token: str) -> Principal | None:
        key = self._key(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() >= entry[1]:
            del self._entries[key]
            return None
        return entry[0]

    def put(self, token: str, principal: Principal, expires_at: float) -> None:
        if len(self._entries) >= self._max:
            del self._entries[next(iter(self._entries))]
        self._entries[self._key(token)] = (principal, min(expires_at, self._clock() + self._ttl))


class Authenticator:
    """Verifies bearer tokens; its bound methods are the FastAPI dependencies."""

    def __init__(
        self,
        settings: AuthSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._verified = _VerifiedTokens(clock=wall_clock)
        self.disabled = settings.disabled
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway = settings.leeway_s
        self._secret = settings.jwt_secret.get_secret_value().encode() if settings.jwt_secret else None
        self._public: tuple[Any, tuple[str, ...]] | None = None
        if settings.jwt_public_key is not None:
            self._public = _public_key(settings.jwt_public_key.get_secret_value())
        self._jwks = _JwksKeys(settings.jwt_jwks_url, settings.jwks_refresh_s, clock) if settings.jwt_jwks_url else None
        if not self.disabled and not self.configured:
            log.warning(
                "auth is on but no key is set (DISTINFER_JWT_SECRET, DISTINFER_JWT_PUBLIC_KEY or "
                "DISTINFER_JWT_JWKS_URL): every protected request will be refused"
            )

    @property
    def configured(self) -> bool:
        return self._secret is not None or self._public is not None or self._jwks is not None

    # ------------------------------------------------------------------ verification

    async def verify(self, token: str) -> Principal:
        """The token's principal, or Unauthorized (AuthUnavailable when the JWKS cannot be fetched)."""
        known = self._verified.get(token)
        if known is not None:
            return known
        principal = await self._verify(token)
        self._verified.put(token, principal, float(principal.claims["exp"]) + self._leeway)
        return principal

    async def _verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _invalid("malformed token") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise _invalid("unsigned tokens (alg none) are not accepted")
        key, algorithms = await self._key_for(alg, header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(algorithms),
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise _invalid("token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise _invalid("token not valid yet (nbf)") from exc
        except jwt.InvalidAudienceError as exc:
            raise _invalid("wrong audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise _invalid("wrong issuer") from exc
        except jwt.InvalidSignatureError as exc:
            raise _invalid("bad signature") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"token has no {exc.claim!r} claim") from exc
        except jwt.PyJWTError as exc:
            raise _invalid(f"invalid token ({type(exc).__name__})") from exc
        sub = claims.get("sub")
        return Principal(sub=sub if isinstance(sub, str) else None, scopes=scopes_of(claims), claims=claims)

    async def _key_for(self, alg: str, kid: object) -> tuple[Any, tuple[str, ...]]:
        # Each key only ever verifies its own family: an HS256 token never meets the public key.
        if alg in _HMAC:
            if self._secret is None:
                raise _invalid(f"{alg} tokens are not accepted here")
            return self._secret, _HMAC
        if self._jwks is not None and isinstance(kid, str):
            jwk = await self._jwks.get(kid)
            if str(jwk.key_type).lower() == "oct":
                # A JWKS is public: a symmetric key in it lets anyone who reads it sign (Regression, audit).
                raise _invalid(f"key {kid!r} of the JWKS is symmetric; only public keys verify tokens")
            if jwk.algorithm_name != alg and alg not in _algorithms_of(jwk):
                raise _invalid(f"algorithm {alg} does not match key {kid!r}")
            return jwk, (alg,)
        if self._public is not None and alg in self._public[1]:
            return self._public
        if self._jwks is not None:
            raise _invalid("token has no key id (kid)")
        raise _invalid(f"algorithm {alg} is not accepted here")

    # ------------------------------------------------------------------ dependencies

    async def principal(
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
    ) -> Principal:
        """Any valid token (or anyone, when auth is disabled)."""
        return await self._principal(credentials.credentials if credentials is not None else None)

    async def _principal(self, token: str | None) -> Principal:
        if self.disabled:
            return _ANONYMOUS
        if token is None:
            raise Unauthorized("a bearer token is required", headers={"WWW-Authenticate": _REALM})
        if not self.configured:
            raise _invalid("no verification key is configured on this gateway")
        return await self.verify(token)

    async def authorize(self, authorization: str | None, scope: str) -> Principal:
        """`require_infer`/`require_admin` for a route served as plain ASGI: the raw `Authorization` value.

        Parsed as FastAPI's `HTTPBearer(auto_error=False)` does: anything but `Bearer <token>` is no token.
        """
        scheme, token = get_authorization_scheme_param(authorization)
        bearer = token if authorization and scheme.lower() == "bearer" and token else None
        return _need(await self._principal(bearer), scope)

    async def require_infer(
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
    ) -> Principal:
        return _need(await self.principal(credentials), INFER)

    async def require_admin(
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
    ) -> Principal:
        return _need(await self.principal(credentials), ADMIN)

    async def subject(self, authorization: str | None) -> str | None:
        """The verified `sub` of an `Authorization` header value, else None; never raises.

        With auth disabled nothing can be verified, so the claim is read as is: it only picks a
        rollout bucket, it grants nothing.
        """
        if not authorization or authorization[:7].lower() != "bearer ":
            return None
        token = authorization[7:].strip()
        try:
            if self.disabled:
                sub = jwt.decode(token, options={"verify_signature": False}).get("sub")
                return sub if isinstance(sub, str) else None
            return (await self.verify(token)).sub
        except (jwt.PyJWTError, Unauthorized, AuthUnavailable):
            return None


def _need(principal: Principal, scope: str) -> Principal:
    if not principal.has(scope):
        header = f'{_REALM}, error="insufficient_scope", scope="{scope}"'
        raise Forbidden(f"this needs the {scope!r} scope", headers={"WWW-Authenticate": header})
    return principal


def _algorithms_of(jwk: jwt.PyJWK) -> tuple[str, ...]:
    kty = jwk.key_type
    return {"RSA": ("RS256",), "EC": ("ES256", "ES384"), "OKP": ("EdDSA",)}.get(str(kty), ())


def node_ssl_context(settings: AuthSettings) -> ssl.SSLContext | None:
    """TLS towards nodes with a private CA and/or a client certificate; None: the system defaults."""
    if settings.node_ca_file is None and settings.node_cert_file is None:
        return None
    context = ssl.create_default_context(cafile=str(settings.node_ca_file) if settings.node_ca_file else None)
    if settings.node_cert_file is not None:
        key = str(settings.node_key_file) if settings.node_key_file else None
        context.load_cert_chain(str(settings.node_cert_file), key)
    return context


def mint_token(
    key: str | bytes | Any,
    *,
    scopes: Iterable[str] = (INFER,),
    sub: str = "distinfer-dev",
    ttl_s: float = 3600,
    algorithm: str = "HS256",
    audience: str | None = None,
    issuer: str | None = None,
    kid: str | None = None,
    now: float | None = None,
) -> str:
    """A signed token (for `distinfer token`, the demo, tests): HS256 with a secret, or RS/ES with a private key."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": sub, "scope": " ".join(scopes), "iat": issued, "exp": issued + int(ttl_s)}
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid} if kid else None)
