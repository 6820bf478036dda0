"""Oversized and deeply nested bodies against live servers: refused early, in bounded memory, never a 5xx.

An oversized body is streamed over a raw socket (declared with Content-Length, or chunked with
none) while the answer is awaited, so the figure is how many bytes the server let in before it
said 413, and how much its resident memory grew (peak, from /proc). Deeply nested JSON is the
classic way to make a recursive parser blow its stack; it must come back as a 4xx.
"""

from __future__ import annotations

import re
import select
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

__all__ = ["nested_bodies", "peak_rss_mb", "post_nested", "send_oversized"]

_CHUNK = b"\0" * 65536


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return round(int(match.group(1)) / 1024, 1) if match else 0.0


def send_oversized(
    url: str,
    *,
    total_bytes: int = 1 << 30,
    chunked: bool = False,
    headers: dict[str, str] | None = None,
    give_up_after_bytes: int = 256 << 20,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Stream up to `total_bytes` of zeros to `url`; stop at the first byte of an answer."""
    parts = urlsplit(url)
    lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {total_bytes}")
    sent = 0
    started = time.monotonic()
    answer = b""
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=timeout_s) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        piece = f"{len(_CHUNK):x}\r\n".encode() + _CHUNK + b"\r\n" if chunked else _CHUNK
        while sent < min(total_bytes, give_up_after_bytes) and time.monotonic() - started < timeout_s:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break  # an answer (or a close) came while we were still sending
            try:
                sock.sendall(piece)
            except OSError:
                break  # reset or timed out: the server stopped reading
            sent += len(_CHUNK)
        sock.settimeout(5)
        try:
            while b"\r\n\r\n" not in answer:
                more = sock.recv(4096)
                if not more:
                    break
                answer += more
        except OSError:
            pass
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    match = re.match(r"HTTP/1\.[01] (\d{3})", status_line)
    return {
        "status": int(match.group(1)) if match else None,
        "sent_mb": round(sent / (1 << 20), 2),
        "elapsed_s": round(time.monotonic() - started, 3),
        "chunked": chunked,
    }


def nested_bodies(depth: int = 100_000) -> dict[str, bytes]:
    """JSON bodies nested `depth` deep in the places a request has room for nesting."""
    lists = b"[" * depth + b"]" * depth
    objects = b'{"a":' * depth + b"1" + b"}" * depth
    return {
        "inputs_nested_lists": b'{"model":"digits","inputs":' + lists + b"}",
        "parameters_nested_objects": b'{"model":"digits","inputs":[0],"parameters":' + objects + b"}",
        "v2_tensor_data_nested": b'{"inputs":[{"name":"image","shape":[1],"datatype":"FP32","data":' + lists + b"}]}",
        "top_level_nested_lists": lists,
    }


def post_nested(client: httpx.Client, url: str, body: bytes, headers: dict[str, str] | None = None) -> int | None:
    try:
        return client.post(
            url, content=body, headers={"Content-Type": "application/json", **(headers or {})}
        ).status_code
    except httpx.HTTPError:
        return None
