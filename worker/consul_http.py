"""py-consul's asyncio client, on an aiohttp session built the current way.

`consul.aio.HTTPClient` builds its connector with arguments aiohttp has deprecated
(`verify_ssl`, `ssl_context`), which warn on every client; this transport passes `ssl=` instead
and takes explicit timeouts, because a blocking query must be allowed to outlast its `wait`.
The node (worker.registration) and the gateway's Consul watch (discovery.consul) both use it.
Build it inside a running event loop and close it with `await client.close()`.
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

import aiohttp
import consul.aio
import consul.base

__all__ = ["ConsulClient", "consul_address"]

DEFAULT_PORT = 8500


def consul_address(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an agent URL such as `http://127.0.0.1:8500`; ValueError if it is not one."""
    parts = urlsplit(url.strip() if "//" in url else f"http://{url.strip()}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"Consul URL {url!r} must be http(s)://host[:port]")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ValueError(f"Consul URL {url!r} has a bad port") from exc
    return parts.scheme, parts.hostname, port


class _Transport(consul.aio.HTTPClient):  # type: ignore[misc]
    def __init__(
        self, host: str, port: int, scheme: str, *, verify: bool | str, timeout: aiohttp.ClientTimeout
    ) -> None:
        consul.base.HTTPClient.__init__(self, host, port, scheme, verify=verify, cert=None)
        self.loop = None
        tls: ssl.SSLContext | bool = True
        if scheme == "https":
            tls = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
            if verify is False:
                tls.check_hostname = False
                tls.verify_mode = ssl.CERT_NONE
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls), timeout=timeout)


class ConsulClient(consul.aio.Consul):  # type: ignore[misc]
    """`consul.aio.Consul` for one agent URL; an explicit `token` wins over `CONSUL_HTTP_TOKEN`."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        dc: str | None = None,
        verify: bool | str = True,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 10.0,
    ) -> None:
        scheme, host, port = consul_address(url)
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s)
        super().__init__(host=host, port=port, token=token, scheme=scheme, dc=dc, verify=verify)
        if token:
            self.token = token

    def http_connect(
        self, host: str, port: int, scheme: str, verify: bool | str = True, cert: object = None
    ) -> _Transport:
        return _Transport(host, port, scheme, verify=verify, timeout=self._timeout)
