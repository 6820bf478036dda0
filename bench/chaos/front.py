"""Fault fronts: a process that stands in front of one real node and misbehaves on command.

Two kinds, each run as `python -m bench.chaos.front KIND --port P --control-port C --target URL`:

- `tcp`: an asyncio TCP proxy. Modes `pass` (bytes both ways), `delay` (every chunk held for
  `delay_ms` in each direction: a slow link, since this kernel has no netem) and `blackhole`
  (connections are accepted and read, and nothing is ever answered: a hung node).
- `http`: an aiohttp reverse proxy that passes health and metadata through untouched, so the
  gateway keeps the node online, and breaks only inference answers. Modes `pass`, `hang`
  (inference requests are never answered), `garbage` (200 with random bytes), `truncated`
  (the node's binary answer cut short, its `Inference-Header-Content-Length` kept),
  `badjson` (200 JSON that is no v2 response) and `error500`.

The mode is changed at run time through the control port: `PUT /mode {"mode": ..., "delay_ms": ...}`;
`GET /stats` counts the connections and requests the front has seen per mode.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

__all__ = ["HTTP_MODES", "TCP_MODES", "FrontState", "HttpFront", "TcpFront", "main"]

TCP_MODES = ("pass", "delay", "blackhole")
HTTP_MODES = ("pass", "hang", "garbage", "truncated", "badjson", "error500")
_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}
)


@dataclass
class FrontState:
    mode: str = "pass"
    delay_s: float = 0.0
    seen: Counter[str] = field(default_factory=Counter)


class TcpFront:
    """Bytes between client and node, passed, delayed or swallowed according to `state`."""

    def __init__(self, state: FrontState, target_host: str, target_port: int) -> None:
        self._state = state
        self._target = (target_host, target_port)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = self._state.mode
        self._state.seen[f"connections:{mode}"] += 1
        try:
            if mode == "blackhole":
                while await reader.read(65536):
                    pass  # accepted, read, never answered
                return
            try:
                node_reader, node_writer = await asyncio.open_connection(*self._target)
            except OSError:
                return  # the node is down: the client sees its connection closed
            try:
                await asyncio.gather(self._pipe(reader, node_writer), self._pipe(node_reader, writer))
            finally:
                node_writer.close()
        finally:
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward chunks in order; in `delay` mode each one leaves `delay_s` after it arrived."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                chunk = await reader.read(65536)
                if chunk and self._state.mode == "blackhole":
                    continue  # an open connection goes silent too, not only new ones
                delay = self._state.delay_s if self._state.mode == "delay" else 0.0
                queue.put_nowait((time.monotonic() + delay, chunk))
                if not chunk:
                    break
            await sender
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()
        except (ConnectionError, OSError):
            pass
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)


class HttpFront:
    """An HTTP reverse proxy to one node that corrupts, fails or withholds inference answers."""

    def __init__(self, state: FrontState, target: str, session: aiohttp.ClientSession, seed: int = 0) -> None:
        self._state = state
        self._target = target.rstrip("/")
        self._session = session
        self._rng = random.Random(seed)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        mode = self._state.mode
        inference = request.method == "POST" and request.path.endswith("/infer")
        self._state.seen[f"{'infer' if inference else 'other'}:{mode}"] += 1
        body = await request.read()
        if inference and mode == "hang":
            await asyncio.Event().wait()  # never set: the caller's timeout is the only way out
        if inference and mode == "garbage":
            noise = self._rng.randbytes(self._rng.randint(1, 4096))
            return web.Response(body=noise, content_type="application/octet-stream")
        if inference and mode == "badjson":
            return web.json_response({"model_name": 7, "outputs": "not a list", "id": None})
        if inference and mode == "error500":
            return web.json_response({"error": "injected failure"}, status=500)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        try:
            async with self._session.request(
                request.method, self._target + request.path_qs, data=body, headers=headers
            ) as upstream:
                payload = await upstream.read()
                out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
                status = upstream.status
        except aiohttp.ClientError:
            return web.json_response({"error": "front: node unreachable"}, status=502)
        if inference and mode == "truncated" and status == 200:
            payload = payload[: max(1, len(payload) // 2)]
        return web.Response(body=payload, status=status, headers=out_headers)


def _control_app(state: FrontState, modes: tuple[str, ...]) -> web.Application:
    async def put_mode(request: web.Request) -> web.Response:
        try:
            wanted: Any = json.loads(await request.read())
            mode = str(wanted["mode"])
            delay_ms = float(wanted.get("delay_ms", state.delay_s * 1000))
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": 'expected {"mode": ..., "delay_ms": ...}'}, status=400)
        if mode not in modes or not 0 <= delay_ms <= 60_000:
            return web.json_response({"error": f"mode must be one of {modes}, delay_ms in 0..60000"}, status=400)
        state.mode, state.delay_s = mode, delay_ms / 1000
        return web.json_response({"mode": state.mode, "delay_ms": delay_ms})

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response({"mode": state.mode, "delay_ms": state.delay_s * 1000, "seen": dict(state.seen)})

    app = web.Application()
    app.router.add_put("/mode", put_mode)
    app.router.add_get("/stats", get_stats)
    return app


async def _serve(args: argparse.Namespace) -> None:
    state = FrontState(mode=args.mode, delay_s=args.delay_ms / 1000)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    control = web.AppRunner(_control_app(state, TCP_MODES if args.kind == "tcp" else HTTP_MODES))
    await control.setup()
    await web.TCPSite(control, "127.0.0.1", args.control_port).start()
    if args.kind == "tcp":
        host, _, port = args.target.removeprefix("http://").rstrip("/").rpartition(":")
        front = TcpFront(state, host, int(port))
        server = await asyncio.start_server(front.handle, "127.0.0.1", args.port)
        async with server:
            await stop.wait()
    else:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=2)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
            app = web.Application(client_max_size=256 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", HttpFront(state, args.target, session, args.seed).handle)
            runner = web.AppRunner(app, shutdown_timeout=0.5)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", args.port).start()
            await stop.wait()
            await runner.cleanup()
    await control.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos.front", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["tcp", "http"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--target", required=True, help="the node's base URL, e.g. http://127.0.0.1:8001")
    parser.add_argument("--mode", default="pass")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "little"))
    args = parser.parse_args(argv)
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
