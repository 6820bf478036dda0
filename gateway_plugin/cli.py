"""The `distinfer` command: `node`, `gateway`, `demo`.

Servers run under uvicorn, which stops cleanly on SIGTERM and SIGINT: it stops accepting, lets
in-flight requests finish (bounded by --graceful-timeout), then runs the lifespan's shutdown.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from worker.bundled import bundled_models

__all__ = ["BUNDLED_MODELS", "main"]

BUNDLED_MODELS = bundled_models()


def _serve(app: object, host: str, port: int, graceful_timeout: int, log_level: str) -> None:
    uvicorn.run(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=graceful_timeout,
        access_log=False,
    )


def _run_node(args: argparse.Namespace) -> int:
    from worker.server import NodeConfig, create_node_app

    node_id = args.node_id or f"{socket.gethostname()}:{args.port}"
    config = NodeConfig(
        model_repository=Path(args.model_repository),
        node_id=node_id,
        threads=args.threads,
        workers=args.workers,
        max_body_bytes=args.max_body_bytes,
        models=frozenset(args.models.split(",")) if args.models else None,
        batching=args.batching,
    )
    _serve(create_node_app(config), args.host, args.port, args.graceful_timeout, args.log_level)
    return 0


def _run_gateway(args: argparse.Namespace) -> int:
    from gateway_plugin.settings import Settings
    from gateway_plugin.standalone import create_gateway_app

    settings = Settings()
    # The standalone gateway exists to serve the cluster: on unless the operator says otherwise.
    if "ENABLE_DISTRIBUTED_INFERENCE" not in os.environ:
        settings.flags.enabled = True
    _serve(create_gateway_app(settings), args.host, args.port, args.graceful_timeout, args.log_level)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from gateway_plugin.demo import run_demo

    return run_demo(model_repository=Path(args.model_repository), samples=args.samples)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distinfer", description="Distributed inference over v2 nodes.")
    commands = parser.add_subparsers(dest="command", required=True)

    def server_options(sub: argparse.ArgumentParser, port: int) -> None:
        sub.add_argument("--host", default="127.0.0.1")
        sub.add_argument("--port", type=int, default=port)
        sub.add_argument("--graceful-timeout", type=int, default=10, help="seconds in-flight requests get")
        sub.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    node = commands.add_parser("node", help="serve a model repository over the Open Inference Protocol")
    node.add_argument("--model-repository", required=True, help="folder of <model>/config.json + weights")
    node.add_argument("--node-id", default=None, help="id advertised to gateways (default host:port)")
    node.add_argument("--threads", type=int, default=0, help="runtime threads per model (0: runtime default)")
    node.add_argument("--workers", type=int, default=2, help="models run concurrently in this many threads")
    node.add_argument("--max-body-bytes", type=int, default=64 * 1024 * 1024)
    node.add_argument("--models", default=None, help="comma list: serve only these models")
    node.add_argument(
        "--batching",
        choices=["auto", "on", "off"],
        default="auto",
        help="dynamic batching: as each config.json says (auto), for every batchable model (on), or none",
    )
    server_options(node, 8001)
    node.set_defaults(run=_run_node)

    gateway = commands.add_parser("gateway", help="standalone gateway with the plugin mounted (env: CONTRACT §3-§8)")
    server_options(gateway, 8000)
    gateway.set_defaults(run=_run_gateway)

    demo = commands.add_parser("demo", help="two local nodes + a gateway on the bundled models, with traffic")
    demo.add_argument("--model-repository", default=str(BUNDLED_MODELS))
    demo.add_argument("--samples", type=int, default=6, help="digits images to send in each phase")
    demo.set_defaults(run=_run_demo)

    from bench.cli import add_bench_parser

    add_bench_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
