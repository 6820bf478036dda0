"""The nginx reference config and the `distinfer bench` command line (no process started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.scenarios.overhead import OverheadParams, request_bodies
from bench.servers import nginx_config
from gateway_plugin.cli import _parser
from worker.protocol import HEADER_LENGTH, Limits, decode_request


def test_nginx_is_a_plain_keepalive_reverse_proxy(tmp_path: Path) -> None:
    config = nginx_config("http://127.0.0.1:8001", 9000, tmp_path)

    for line in (
        "daemon off;",
        "worker_processes 1;",
        "access_log off;",
        "server 127.0.0.1:8001;",
        "keepalive 64;",
        "listen 127.0.0.1:9000;",
        "proxy_pass http://node;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        f"pid {tmp_path / 'nginx.pid'};",
    ):
        assert line in config


def test_nginx_needs_an_explicit_upstream_port(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="port"):
        nginx_config("http://127.0.0.1", 9000, tmp_path)


def test_bench_command_line() -> None:
    args = _parser().parse_args(["bench", "overhead", "--quick", "--concurrency", "1,8", "--duration", "0.5"])

    assert (args.scenario, args.quick, args.concurrency, args.duration) == ("overhead", True, (1, 8), 0.5)
    with pytest.raises(SystemExit):
        _parser().parse_args(["bench", "overhead", "--concurrency", "0"])


def test_quick_mode_is_short_and_explicit_options_win() -> None:
    quick = OverheadParams.make(quick=True)
    assert quick.rounds * quick.duration_s * 2 * 2 * 4 <= 20
    custom = OverheadParams.make(duration_s=1.5, concurrency=(64, 1, 64), rounds=2)
    assert (custom.duration_s, custom.concurrency, custom.rounds, custom.quick) == (1.5, (1, 64), 2, False)


def test_bodies_are_the_same_digit_in_json_and_binary() -> None:
    bodies = request_bodies()
    json_request = decode_request(bodies["json"].data, None, Limits())
    length = int(bodies["binary"].headers[HEADER_LENGTH])
    binary_request = decode_request(bodies["binary"].data, length, Limits())

    assert bodies["json"].headers == {"Content-Type": "application/json"}
    assert json_request.inputs[0].shape == binary_request.inputs[0].shape == [1, 1, 8, 8]
    assert (json_request.inputs[0].data == binary_request.inputs[0].data).all()
    assert binary_request.parameters == {"binary_data_output": True}
