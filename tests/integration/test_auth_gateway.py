"""Auth over HTTP: bearer tokens on the plugin's routes, the node token, and TLS to nodes.

Every key and certificate is generated here. Nodes for the node-token and TLS tests run in this
process under a real uvicorn server (real sockets, real TLS handshakes).
"""

from __future__ import annotations

import datetime
import ipaddress
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from fastapi import Depends, FastAPI
from pydantic import SecretStr

from gateway_plugin import DistributedInference
from gateway_plugin.auth import ADMIN, INFER, Principal, mint_token
from gateway_plugin.settings import AuthSettings
from tests.integration.conftest import TEST_JWT_SECRET, bearer, mounted, settings_for
from tests.integration.legacy_service import serving
from worker.bundled import bundled_models
from worker.faults import FaultSpec
from worker.server import NodeConfig, create_node_app

PREFIX = "/api/v1/distributed"
IMAGE = [[0.25] * 8] * 8


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return _key()


def _public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


async def test_every_rejection_over_http(rsa_key: rsa.RSAPrivateKey) -> None:
    settings = settings_for(
        [], auth=AuthSettings(jwt_public_key=SecretStr(_public_pem(rsa_key)), jwt_audience="distinfer")
    )
    now = time.time()

    def rs(**claims: Any) -> str:
        return mint_token(rsa_key, algorithm="RS256", audience="distinfer", **claims)

    cases: list[tuple[str, dict[str, str], int, str]] = [
        ("missing", {}, 401, ""),
        ("not bearer", {"Authorization": "Basic dXNlcjpwYXNz"}, 401, ""),
        ("malformed", {"Authorization": "Bearer not.a.token"}, 401, "malformed"),
        (
            "bad signature",
            {"Authorization": f"Bearer {mint_token(_key(), algorithm='RS256', audience='distinfer')}"},
            401,
            "bad signature",
        ),
        ("expired", {"Authorization": f"Bearer {rs(ttl_s=60, now=now - 600)}"}, 401, "expired"),
        (
            "wrong audience",
            {"Authorization": f"Bearer {mint_token(rsa_key, algorithm='RS256', audience='x')}"},
            401,
            "audience",
        ),
        (
            "alg none",
            {"Authorization": "Bearer " + jwt.encode({"sub": "x", "exp": int(now) + 60}, None, algorithm="none")},
            401,
            "alg none",
        ),
        (
            "HS/RS confusion",
            {"Authorization": f"Bearer {mint_token(TEST_JWT_SECRET, audience='distinfer')}"},
            401,
            "HS256",
        ),
        ("no scope", {"Authorization": f"Bearer {rs(scopes=())}"}, 403, "infer"),
    ]
    async with mounted(settings, headers={}) as (client, _):
        for name, headers, status, words in cases:
            # The v2 relay is served outside FastAPI's dependencies (RawRoute): it must refuse alike.
            for method, path in (("GET", f"{PREFIX}/nodes"), ("POST", f"{PREFIX}/v2/models/digits/infer")):
                response = await client.request(method, path, headers=headers, json={"inputs": []})
                assert response.status_code == status, (name, path, response.text)
                assert response.headers["content-type"] == "application/problem+json"
                assert words in response.json()["detail"], (name, path)
                challenge = response.headers["WWW-Authenticate"]
                assert challenge.startswith('Bearer realm="distinfer"'), (name, path)
                if status == 401 and words:
                    assert 'error="invalid_token"' in challenge, (name, path)
        ok = await client.get(f"{PREFIX}/nodes", headers={"Authorization": f"Bearer {rs(scopes=(INFER,))}"})
        health = await client.get(f"{PREFIX}/health")  # open, for orchestrators
        live = await client.get(f"{PREFIX}/health/live")
        forbidden = await client.put(
            f"{PREFIX}/flags", json={"rollout_percent": 5}, headers={"Authorization": f"Bearer {rs(scopes=(INFER,))}"}
        )
        admin = await client.put(
            f"{PREFIX}/flags", json={"rollout_percent": 5}, headers={"Authorization": f"Bearer {rs(scopes=(ADMIN,))}"}
        )
    assert ok.status_code == 200
    assert health.status_code == 200
    assert live.status_code == 200
    assert forbidden.status_code == 403
    assert 'error="insufficient_scope", scope="admin"' in forbidden.headers["WWW-Authenticate"]
    assert admin.status_code == 200
    assert admin.json()["rollout_percent"] == 5


async def test_auth_disabled_is_explicit() -> None:
    async with mounted(settings_for([], auth=AuthSettings(disabled=True)), headers={}) as (client, _):
        assert (await client.get(f"{PREFIX}/nodes")).status_code == 200
    async with mounted(settings_for([], auth=AuthSettings()), headers={}) as (client, _):
        refused = await client.get(f"{PREFIX}/nodes", headers=bearer())
    assert refused.status_code == 401
    assert "no verification key" in refused.json()["detail"]


NODE_TOKEN = "node-token-for-tests-0123456789"


def _guarded_node(**options: Any) -> FastAPI:
    """A digits node that requires NODE_TOKEN (and whatever else `options` set)."""
    digits = frozenset({"digits"})
    config = NodeConfig(bundled_models(), node_id="guarded", threads=1, models=digits, node_token=NODE_TOKEN, **options)
    return create_node_app(config)


async def test_nodes_require_the_node_token_and_the_gateway_sends_it() -> None:
    node = _guarded_node()
    async with serving(node) as url:
        async with httpx.AsyncClient(base_url=url) as direct:
            assert (await direct.get("/v2/health/ready")).status_code == 200  # probes stay open
            refused = await direct.get("/v2")
            wrong = await direct.get("/v2", headers={"Authorization": "Bearer nope"})
            right = await direct.get("/v2", headers={"Authorization": f"Bearer {NODE_TOKEN}"})
        assert refused.status_code == wrong.status_code == 401
        assert "node token" in refused.json()["error"]
        assert right.status_code == 200

        good = settings_for(
            [url], auth=AuthSettings(jwt_secret=SecretStr(TEST_JWT_SECRET), node_token=SecretStr(NODE_TOKEN))
        )
        async with mounted(good) as (client, _):
            served = await client.post(f"{PREFIX}/inference", json={"model": "digits", "inputs": IMAGE})
        assert served.status_code == 200
        assert served.json()["node_id"] == "guarded"

        bad = settings_for(
            [url], auth=AuthSettings(jwt_secret=SecretStr(TEST_JWT_SECRET), node_token=SecretStr("wrong"))
        )
        async with mounted(bad) as (client, _):
            tensor = {"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.25] * 64}
            refused_by_node = await client.post(f"{PREFIX}/inference", json={"model": "digits", "inputs": [tensor]})
        assert refused_by_node.status_code == 503  # a gateway with the wrong token gets nothing from the node


async def test_the_node_token_is_checked_before_fault_control_and_the_concurrency_limit() -> None:
    """Regression: the token check ran inside the fault injector and the limiter, so anyone could
    PUT /v2/faults (crash_after: 0 killed the node) and token-less requests took slots."""
    node = _guarded_node(faults=FaultSpec(), fault_control=True, max_concurrency=1)
    tensor = {"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.25] * 64}
    allowed = {"Authorization": f"Bearer {NODE_TOKEN}"}
    async with serving(node) as url, httpx.AsyncClient(base_url=url) as direct:
        changed = await direct.put("/v2/faults", json={"error_rate": 1.0})
        read = await direct.get("/v2/faults")
        inferred = await direct.post("/v2/models/digits/infer", json={"inputs": [tensor]})
        still = await direct.post("/v2/models/digits/infer", json={"inputs": [tensor]}, headers=allowed)
        knobs = (await direct.get("/v2/faults", headers=allowed)).json()
    assert [changed.status_code, read.status_code, inferred.status_code] == [401, 401, 401]
    assert still.status_code == 200, still.text
    assert knobs["error_rate"] == 0
    assert knobs["served"] == 1  # only the request with the token reached the fault knobs


def _certificate(
    subject: str, key: rsa.RSAPrivateKey, issuer: tuple[x509.Name, rsa.RSAPrivateKey] | None, *, ca: bool = False
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer else (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, *items: Any) -> Path:
    data = b""
    for item in items:
        if isinstance(item, x509.Certificate):
            data += item.public_bytes(serialization.Encoding.PEM)
        else:
            data += item.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
    path.write_bytes(data)
    return path


async def test_tls_to_nodes_with_a_private_ca_and_client_certificates(tmp_path: Path) -> None:
    ca_key, server_key, client_key = _key(), _key(), _key()
    ca = _certificate("distinfer test CA", ca_key, None, ca=True)
    issuer = (ca.subject, ca_key)
    ca_file = _write(tmp_path / "ca.pem", ca)
    server_cert = _write(tmp_path / "server.pem", _certificate("node", server_key, issuer))
    server_key_file = _write(tmp_path / "server-key.pem", server_key)
    client_cert = _write(tmp_path / "client.pem", _certificate("gateway", client_key, issuer))
    client_key_file = _write(tmp_path / "client-key.pem", client_key)

    import ssl

    node = create_node_app(
        NodeConfig(model_repository=bundled_models(), node_id="tls-node", threads=1, models=frozenset({"digits"}))
    )
    tls = {
        "ssl_certfile": str(server_cert),
        "ssl_keyfile": str(server_key_file),
        "ssl_ca_certs": str(ca_file),
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
    }
    async with serving(node, **tls) as url:
        assert url.startswith("https://")
        with_cert = AuthSettings(
            jwt_secret=SecretStr(TEST_JWT_SECRET),
            node_ca_file=ca_file,
            node_cert_file=client_cert,
            node_key_file=client_key_file,
        )
        async with mounted(settings_for([url], auth=with_cert)) as (client, _):
            served = await client.post(f"{PREFIX}/inference", json={"model": "digits", "inputs": IMAGE})
            nodes = (await client.get(f"{PREFIX}/nodes")).json()
        assert served.status_code == 200, served.text
        assert served.json()["node_id"] == "tls-node"
        assert nodes[0]["status"] == "online"

        without_cert = AuthSettings(jwt_secret=SecretStr(TEST_JWT_SECRET), node_ca_file=ca_file)
        async with mounted(settings_for([url], auth=without_cert)) as (client, _):
            nodes = (await client.get(f"{PREFIX}/nodes")).json()
        assert nodes[0]["status"] != "online"  # the node refuses a gateway without a client certificate


async def test_the_auth_dependencies_on_the_hosts_own_routes_answer_401_and_403_not_500() -> None:
    """Regression (review): on a host route, a refusal left the plugin's routes' problem handling and
    reached the host as an unknown exception: 500 Internal Server Error."""
    app = FastAPI()
    distributed = DistributedInference(settings=settings_for([]))
    app.include_router(distributed.router)

    # Dependencies as defaults: the annotations of a function in a function cannot name `distributed`.
    @app.get("/mine")
    async def mine(principal: Principal = Depends(distributed.require_infer)) -> dict[str, str | None]:  # noqa: B008
        return {"sub": principal.sub}

    @app.get("/operate")
    async def operate(principal: Principal = Depends(distributed.require_admin)) -> dict[str, bool]:  # noqa: B008
        return {"admin": principal.is_admin}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
        missing = await client.get("/mine")
        junk = await client.get("/mine", headers={"Authorization": "Bearer junk"})
        not_admin = await client.get("/operate", headers=bearer(INFER))
        fine = await client.get("/mine", headers=bearer(INFER, sub="ana"))
        admin = await client.get("/operate", headers=bearer(INFER, ADMIN))
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert junk.status_code == 401
    assert "invalid_token" in junk.headers["www-authenticate"]
    assert not_admin.status_code == 403
    assert 'scope="admin"' in not_admin.headers["www-authenticate"]
    assert (fine.status_code, fine.json()) == (200, {"sub": "ana"})
    assert (admin.status_code, admin.json()) == (200, {"admin": True})


async def test_a_body_is_not_read_before_the_caller_is_known() -> None:
    """Regression (audit): every JSON route read, inflated and parsed its body before auth ran: an
    anonymous caller had the gateway parse 16 MB of JSON on its event loop, and a malformed or
    oversized body was a 400 or 413 where the contract says 401 (or 404 with the flag off)."""
    from gateway_plugin.settings import LimitSettings

    settings = settings_for([], limits=LimitSettings(max_body_bytes=4096))
    malformed, oversized = b'{"model": "digits", "inputs": [', b'{"pad": "' + b"x" * 10_000 + b'"}'
    json = {"Content-Type": "application/json"}
    routes = [
        ("POST", "/inference"),
        ("POST", "/inference/batch"),
        ("POST", "/inference/parallel"),
        ("POST", "/inference/pipeline"),
        ("POST", "/inference/stream/charlm"),
        ("POST", "/tasks"),
        ("POST", "/nodes"),
        ("PUT", "/flags"),
    ]
    async with mounted(settings, headers={}) as (client, distributed):
        for method, path in routes:
            for body in (malformed, oversized):
                response = await client.request(method, PREFIX + path, content=body, headers=json)
                assert response.status_code == 401, (method, path, response.status_code, response.text)
                assert response.headers["content-type"] == "application/problem+json"
        for method, path in [("POST", "/nodes"), ("PUT", "/flags")]:  # admin routes: an infer token is 403
            response = await client.request(method, PREFIX + path, content=malformed, headers={**json, **bearer()})
            assert response.status_code == 403, (method, path, response.text)
        # With a valid token the body is read and judged as before.
        answered = await client.post(f"{PREFIX}/inference", content=malformed, headers={**json, **bearer()})
        assert answered.status_code == 400
        too_big = await client.post(f"{PREFIX}/inference", content=oversized, headers={**json, **bearer()})
        assert too_big.status_code == 413
        # With the flag off a gated route is not there at all: 404 before auth or the body.
        distributed.flags.update(enabled=False)
        gone = await client.post(f"{PREFIX}/inference", content=malformed, headers=json)
        assert gone.status_code == 404


async def test_dependency_overrides_replace_the_checks_made_before_the_body_too() -> None:
    """Regression (review): the checks made before a body is read called the plugin's auth itself, so
    `app.dependency_overrides` (README, for tests) no longer replaced it on POST, PUT and PATCH routes."""
    from asgi_lifespan import LifespanManager

    distributed = DistributedInference(settings=settings_for([]))
    app = FastAPI()
    app.include_router(distributed.router)

    async def anyone() -> Principal:
        return Principal(sub="tester", scopes=frozenset({INFER, ADMIN}), claims={})

    app.dependency_overrides[distributed.require_infer] = anyone
    app.dependency_overrides[distributed.require_admin] = anyone
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
            flags = await client.put(f"{PREFIX}/flags", json={"rollout_percent": 50})
            assert flags.status_code == 200, flags.text
            batch = await client.post(f"{PREFIX}/inference/batch", json={"requests": [{"model": "m", "inputs": [1.0]}]})
            assert batch.status_code == 200, batch.text  # reached the handler: its item fails on its own
