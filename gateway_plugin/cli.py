"""The `distinfer` command: `node`, `gateway`, `demo`, `token`.

Servers run under uvicorn, which stops cleanly on SIGTERM and SIGINT: it stops accepting, lets
in-flight requests finish (bounded by --graceful-timeout), then runs the lifespan's shutdown.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from pydantic import ValidationError
from starlette.types import ASGIApp

from gateway_plugin.auth_cli import add_node_security, add_token_parser
from worker.bundled import bundled_models
from worker.errors import ConfigurationError
from worker.faults import add_fault_arguments
from worker.gc_freeze import FreezeAfterStartup
from worker.hardware import parse_label
from worker.sharding.cli import add_node_arguments, add_shard_parser, node_labels, node_options

if TYPE_CHECKING:
    from worker.registration import ConsulRegistration

__all__ = ["BUNDLED_MODELS", "main"]

BUNDLED_MODELS = bundled_models()


def _serve(app: ASGIApp, host: str, port: int, graceful_timeout: int, log_level: str, **tls: Any) -> None:
    uvicorn.run(
        FreezeAfterStartup(app),  # startup's long-lived objects out of every full GC (worker.gc_freeze)
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=graceful_timeout,
        access_log=False,
        **tls,
    )


def _run_node(args: argparse.Namespace) -> int:
    from gateway_plugin.auth_cli import node_security
    from worker.faults import faults_from_args
    from worker.hardware import detect_labels
    from worker.server import NodeConfig, create_node_app

    if not Path(args.model_repository).is_dir():  # else uvicorn's startup failed with a traceback
        raise ConfigurationError(f"--model-repository {args.model_repository} is not a folder")
    node_id = args.node_id or f"{socket.gethostname()}:{args.port}"
    node_token, tls = node_security(args)
    user = dict(args.label or ())  # --label wins over what the node measures
    config = NodeConfig(
        model_repository=Path(args.model_repository),
        node_id=node_id,
        threads=args.threads,
        workers=args.workers,
        max_body_bytes=args.max_body_bytes,
        models=frozenset(args.models.split(",")) if args.models else None,
        batching=args.batching,
        labels=detect_labels(workers=_parallel(args), extra={**node_labels(args), **_limit_label(args), **user}),
        faults=faults_from_args(args),
        fault_control=args.fault_control,
        fault_seed=args.fault_seed,
        consul=_consul_registration(args, node_id),
        **node_options(args),  # --memory-cap-mb, --forward-peers (worker.sharding)
        node_token=node_token,
        max_new_tokens=args.max_new_tokens,
        max_concurrency=args.max_concurrency,
        model_control=args.model_control_mode,
    )
    from worker.telemetry import NodeTelemetry

    app = create_node_app(config, telemetry=NodeTelemetry.from_env(node_id))  # OTEL_* for spans
    _serve(app, args.host, args.port, args.graceful_timeout, args.log_level, **tls)
    return 0


def _parallel(args: argparse.Namespace) -> int:
    """Inferences the node runs at once: its worker threads, or fewer under --max-concurrency (label `capacity`)."""
    return int(min(args.workers, args.max_concurrency)) if args.max_concurrency else int(args.workers)


def _limit_label(args: argparse.Namespace) -> dict[str, str]:
    return {"max_concurrency": str(args.max_concurrency)} if args.max_concurrency else {}


def _consul_registration(args: argparse.Namespace, node_id: str) -> ConsulRegistration | None:
    """The node's Consul registration from its flags (the token also from DISTINFER_CONSUL_TOKEN)."""
    from worker.registration import ConsulRegistration

    if not args.consul_url:
        return None
    advertise = args.advertise_host or args.host
    if advertise in ("0.0.0.0", "::", ""):  # noqa: S104 (compared, not bound)
        advertise = socket.getfqdn()
    return ConsulRegistration(
        url=args.consul_url,
        advertise_host=advertise,
        port=args.port,
        token=args.consul_token or os.environ.get("DISTINFER_CONSUL_TOKEN") or None,
        service=args.consul_service or os.environ.get("DISTINFER_CONSUL_SERVICE") or "distinfer-node",
        check_interval=args.consul_check_interval,
        deregister_after=args.consul_deregister_after,
        scheme="https" if getattr(args, "ssl_certfile", None) else "http",
    )


def _run_gateway(args: argparse.Namespace) -> int:
    from gateway_plugin.settings import Settings
    from gateway_plugin.standalone import create_gateway_app

    settings = Settings()  # a ValidationError is the operator's configuration: `main` says what is wrong
    # The standalone gateway exists to serve the cluster: on unless the operator says otherwise.
    if "ENABLE_DISTRIBUTED_INFERENCE" not in os.environ:
        settings.flags.enabled = True
    from balancer.pool import UnknownStrategy
    from gateway_plugin.auth_cli import announce_dev_token

    # Before the app is built: the plugin's authenticator takes its key from the settings then.
    announce_dev_token(settings)  # auth stays on: with no key set, a run-only key and a printed token
    try:
        app = create_gateway_app(settings, fast_lane=args.fast_lane)
    except UnknownStrategy as exc:  # DISTINFER_STRATEGY names none of the balancer's strategies
        print(f"distinfer gateway: invalid settings: DISTINFER_STRATEGY: {exc}", file=sys.stderr)
        return 2
    _serve(app, args.host, args.port, args.graceful_timeout, args.log_level)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from gateway_plugin.demo import run_demo

    return run_demo(model_repository=Path(args.model_repository), samples=args.samples)


def _bounded_int(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high], refused with the range otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {low} or more" if high is None else f"must be {low}-{high}")
        return value

    return parse


_at_least_zero = _bounded_int(0)
_at_least_one = _bounded_int(1)
_port = _bounded_int(0, 65535)  # 0: any free port


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distinfer", description="Distributed inference over v2 nodes.")
    commands = parser.add_subparsers(dest="command", required=True)

    def server_options(sub: argparse.ArgumentParser, port: int) -> None:
        sub.add_argument("--host", default="127.0.0.1")
        sub.add_argument("--port", type=_port, default=port)
        sub.add_argument("--graceful-timeout", type=_at_least_zero, default=10, help="seconds in-flight requests get")
        sub.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        sub.add_argument(
            "--log-format",
            default="auto",
            choices=["auto", "json", "text"],
            help="JSON lines, or readable text (auto: text at a terminal); one line per request at info",
        )

    node = commands.add_parser("node", help="serve a model repository over the Open Inference Protocol")
    node.add_argument("--model-repository", required=True, help="folder of <model>/config.json + weights")
    node.add_argument("--node-id", default=None, help="id advertised to gateways (default host:port)")
    node.add_argument(
        "--threads", type=_at_least_zero, default=0, help="runtime threads per model (0: runtime default)"
    )
    node.add_argument("--workers", type=_at_least_one, default=2, help="models run concurrently in this many threads")
    node.add_argument(
        "--max-concurrency",
        type=_at_least_zero,
        default=0,
        metavar="N",
        help="serve at most N inference requests at once, the rest wait in arrival order (0: no limit)",
    )
    node.add_argument("--max-body-bytes", type=_at_least_one, default=64 * 1024 * 1024)
    node.add_argument("--models", default=None, help="comma list: serve only these models")
    node.add_argument(
        "--model-control-mode",
        choices=["none", "explicit"],
        default="none",
        help="explicit: POST /v2/repository/models/{m}/load and /unload (re)load and drop models while serving "
        "(with --models, the others start unloaded); none: the models loaded at start, as Triton's modes",
    )
    node.add_argument(
        "--batching",
        choices=["auto", "on", "off"],
        default="auto",
        help="dynamic batching: as each config.json says (auto), for every batchable model (on), or none",
    )
    consul = node.add_argument_group("consul self-registration")
    consul.add_argument("--consul-url", default=None, help="register with this Consul agent (http://host:8500)")
    consul.add_argument("--consul-token", default=None, help="ACL token (default: DISTINFER_CONSUL_TOKEN)")
    consul.add_argument("--consul-service", default=None, help="service name (default: DISTINFER_CONSUL_SERVICE)")
    consul.add_argument("--advertise-host", default=None, help="address gateways dial (default: --host)")
    consul.add_argument("--consul-check-interval", default="1s", help="how often Consul checks /v2/health/ready")
    consul.add_argument("--consul-deregister-after", default="1m", help="DeregisterCriticalServiceAfter")
    node.add_argument("--label", type=parse_label, action="append", metavar="KEY=VALUE", help="advertised label")
    add_fault_arguments(node)
    add_node_arguments(node)
    add_node_security(node)
    server_options(node, 8001)
    node.set_defaults(run=_run_node)

    gateway = commands.add_parser("gateway", help="standalone gateway with the plugin mounted (env: CONTRACT §3-§8)")
    server_options(gateway, 8000)
    gateway.add_argument(
        "--no-fast-lane",
        dest="fast_lane",
        action="store_false",
        help="serve the v2 relay through FastAPI's middleware and router like every other route "
        "(as a host app that only calls include_router does); for comparing overhead",
    )
    gateway.set_defaults(run=_run_gateway)

    demo = commands.add_parser("demo", help="two local nodes + a gateway on the bundled models, with traffic")
    demo.add_argument("--model-repository", default=str(BUNDLED_MODELS))
    demo.add_argument("--samples", type=int, default=6, help="digits images to send in each phase")
    demo.set_defaults(run=_run_demo)

    add_token_parser(commands)

    from gateway_plugin.monitor import add_monitor_parser

    add_monitor_parser(commands)

    from bench.cli import add_bench_parser

    add_bench_parser(commands)
    add_shard_parser(commands)
    return parser


def _exit_on_sigterm() -> None:
    """SIGTERM as an orderly exit: commands that start node and gateway processes (demo, bench) stop
    them in `finally` blocks, which Python's default SIGTERM skips (`kill`, a cancelled CI job and
    supervisors left the nodes running). The servers' own commands leave SIGTERM to uvicorn."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from gateway_plugin.telemetry.logs import configure_logging

    # Request lines (logger distinfer.requests / distinfer.node.requests) follow --log-level.
    configure_logging(getattr(args, "log_format", "auto"), requests=getattr(args, "log_level", "") in ("debug", "info"))
    if args.run not in (_run_node, _run_gateway):
        _exit_on_sigterm()
    try:
        return int(args.run(args))
    except KeyboardInterrupt:  # Ctrl-C: the `finally` blocks ran; no traceback for it
        return 130
    except ConfigurationError as exc:  # the operator's to fix: one line, not a traceback
        print(f"distinfer {args.command}: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # the settings (environment, .env) of any command
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in exc.errors())
        print(f"distinfer {args.command}: invalid settings: {problems}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
