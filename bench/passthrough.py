"""The floor for one Python hop: a minimal aiohttp reverse proxy to one upstream.

It forwards method, path and query, body and end-to-end headers (hop-by-hop ones dropped, so
`Content-Type` and `Inference-Header-Content-Length` pass untouched) over one pooled
`aiohttp.ClientSession`, and returns the upstream's status, body and headers byte for byte. It
does nothing else, so what the gateway costs beyond it is the gateway's own work.

    python -m bench.passthrough --upstream http://127.0.0.1:8001 --host 127.0.0.1 --port 8002
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Sequence

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

__all__ = ["HOP_BY_HOP", "create_app", "end_to_end_headers", "main"]

# RFC 9110 §7.6.1 connection-specific fields, plus the de-facto Proxy-Connection.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection"}
    | {"te", "trailer", "transfer-encoding", "upgrade"}
)
_NOT_FORWARDED = frozenset({"host", "content-length"})  # recomputed by aiohttp for the new message
_NOT_RETURNED = frozenset({"content-length", "date", "server"})  # set by our own server

_UPSTREAM = web.AppKey("upstream", str)
_SESSION = web.AppKey("session", aiohttp.ClientSession)


def end_to_end_headers(headers: CIMultiDictProxy[str], drop: frozenset[str] = frozenset()) -> CIMultiDict[str]:
    """The headers a proxy passes on: no hop-by-hop field, nor any the Connection header names."""
    named = {token.strip().lower() for value in headers.getall("Connection", []) for token in value.split(",")}
    skip = HOP_BY_HOP | named | drop
    return CIMultiDict((name, value) for name, value in headers.items() if name.lower() not in skip)


async def _forward(request: web.Request) -> web.Response:
    app = request.app
    url = URL(app[_UPSTREAM] + request.raw_path, encoded=True)
    body = await request.read()
    try:
        async with app[_SESSION].request(
            request.method,
            url,
            data=body or None,
            headers=end_to_end_headers(request.headers, _NOT_FORWARDED),
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            headers = end_to_end_headers(upstream.headers, _NOT_RETURNED)
            return web.Response(status=upstream.status, reason=upstream.reason, body=payload, headers=headers)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return web.json_response({"error": f"upstream: {exc!r}"}, status=502)


def create_app(upstream: str, *, pool_size: int = 256, timeout_s: float = 30.0) -> web.Application:
    """The proxy app; its client session lives exactly as long as the app (cleanup context)."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[_UPSTREAM] = upstream.rstrip("/")

    async def session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=pool_size)
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as client:
            app[_SESSION] = client
            yield

    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", _forward)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.passthrough", description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8001")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--pool-size", type=int, default=256, help="upstream connections kept")
    args = parser.parse_args(argv)
    web.run_app(
        create_app(args.upstream, pool_size=args.pool_size), host=args.host, port=args.port, print=None, access_log=None
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
