"""Servers the bench starts next to the node: the aiohttp pass-through, nginx, an OTLP span sink.

Both are separate processes wrapped in `ServerProcess` (SIGTERM to stop), like the node and the
gateway, so the bench process holds only the client. nginx is used when its binary is on this
machine; the bench never installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from gateway_plugin.processes import ServerProcess, free_port

__all__ = ["find_nginx", "nginx_config", "nginx_version", "start_nginx", "start_otlp_sink", "start_passthrough"]

_NGINX_FALLBACKS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def _spawn(name: str, command: list[str], port: int, health_path: str) -> ServerProcess:
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by ServerProcess.stop)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return ServerProcess(name, f"http://127.0.0.1:{port}", health_path, process, log)


def start_passthrough(
    upstream: str, *, port: int | None = None, health_path: str = "/v2/health/ready"
) -> ServerProcess:
    """`python -m bench.passthrough` in front of `upstream`; its health is the upstream's, forwarded."""
    port = port or free_port()
    command = [sys.executable, "-m", "bench.passthrough", "--upstream", upstream]
    return _spawn("passthrough", [*command, "--host", "127.0.0.1", "--port", str(port)], port, health_path)


def start_otlp_sink(*, port: int | None = None) -> ServerProcess:
    """`python -m bench.otlp_sink`: where a gateway with tracing on exports its spans (GET /stats counts them)."""
    port = port or free_port()
    command = [sys.executable, "-m", "bench.otlp_sink", "--host", "127.0.0.1", "--port", str(port)]
    return _spawn("otlp-sink", command, port, "/stats")


def find_nginx() -> str | None:
    """The nginx binary, looked up on PATH and in the sbin folders a non-root PATH may lack."""
    found = shutil.which("nginx")
    if found:
        return found
    return next((path for path in _NGINX_FALLBACKS if os.access(path, os.X_OK)), None)


def nginx_version(binary: str) -> str:
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
    return (done.stderr or done.stdout).strip().removeprefix("nginx version: ")


def nginx_config(upstream: str, port: int, workdir: Path) -> str:
    """A plain reverse proxy: one worker, pooled HTTP/1.1 upstream connections, no logging per request."""
    parts = urlsplit(upstream)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"upstream {upstream!r} needs a host and a port")
    temp = {kind: workdir / kind for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    return f"""daemon off;
worker_processes 1;
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_max_body_size 64m;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    upstream node {{
        server {parts.hostname}:{parts.port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://node;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def start_nginx(
    binary: str, upstream: str, workdir: Path, *, port: int | None = None, health_path: str = "/v2/health/ready"
) -> ServerProcess:
    """nginx in the foreground on `workdir` (config, pid, logs, temp files); stop it before removing that."""
    port = port or free_port()
    workdir.chmod(0o755)  # workers may run as an unprivileged user and must reach their temp folders
    config = workdir / "nginx.conf"
    config.write_text(nginx_config(upstream, port, workdir), encoding="utf-8")
    command = [binary, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(config)]
    return _spawn("nginx", command, port, health_path)
