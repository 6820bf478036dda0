"""`distinfer bench minilm`: a realistic model, all-MiniLM-L6-v2, direct vs through the gateway, batching on/off.

Needs the export of `scripts/export_minilm.py` (`make minilm`). Two nodes serve the same model,
one with dynamic batching and one without; each is measured directly and through a gateway that
routes only to it, in interleaved rounds, binary tensors, one sentence (32 tokens) per request.
Figures: throughput and latency per target; gateway/direct throughput ratio (target >= 0.8 at the
highest concurrency) and batching on/off ratio.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.loadgen import LoadSpec, run_load
from bench.summary import Run, aggregate
from gateway_plugin.processes import ServerProcess, start_gateway, start_node
from worker.protocol import HEADER_LENGTH, Tensor, encode_request

__all__ = ["MINILM_REPOSITORY", "NODE_PATH", "MiniLMParams", "missing_export", "request_body", "run_minilm"]

MINILM_REPOSITORY = Path("build/models")
NODE_PATH = "/v2/models/minilm/infer"
RELAY_PATH = "/api/v1/distributed/v2/models/minilm/infer"
GATEWAY_RATIO_MIN = 0.8


@dataclass(frozen=True, slots=True)
class MiniLMParams:
    rounds: int = 2
    duration_s: float = 4.0
    warmup_s: float = 1.0
    concurrency: tuple[int, ...] = (1, 64)
    repository: Path = MINILM_REPOSITORY

    @classmethod
    def make(cls, *, quick: bool, repository: Path | None = None) -> MiniLMParams:
        base = cls(rounds=1, duration_s=1.5, warmup_s=0.5) if quick else cls()
        return cls(base.rounds, base.duration_s, base.warmup_s, base.concurrency, repository or base.repository)


def missing_export(repository: Path) -> str | None:
    """Why MiniLM cannot be served from `repository`, or None when its export is there."""
    if (repository / "minilm" / "model.onnx").exists() and (repository / "minilm_samples.json").exists():
        return None
    return f"no MiniLM export under {repository}: run `make minilm` first"


def request_body(repository: Path) -> tuple[bytes, dict[str, str]]:
    """One sentence (32 tokens) from the export's samples, as a binary v2 request: body and headers."""
    samples = json.loads((repository / "minilm_samples.json").read_text(encoding="utf-8"))
    ids = np.asarray(samples["input_ids"][:1], dtype=np.int64)
    mask = np.asarray(samples["attention_mask"][:1], dtype=np.int64)
    encoded = encode_request([Tensor.of("input_ids", ids), Tensor.of("attention_mask", mask)], binary=True)
    return encoded.body, {HEADER_LENGTH: str(encoded.header_length), "Content-Type": encoded.content_type}


def _start(stack: ExitStack, repository: Path) -> dict[str, str]:
    urls: dict[str, str] = {}
    processes: list[ServerProcess] = []
    for batching in ("on", "off"):
        node = start_node(repository, f"minilm-{batching}", threads=1, extra_args=["--batching", batching])
        stack.callback(node.stop)
        processes.append(node)
        urls[f"direct/batching-{batching}"] = node.url + NODE_PATH
    for node in processes:
        node.wait_ready(timeout_s=60)
    for node, batching in zip(processes, ("on", "off"), strict=True):
        env = {"ENABLE_DISTRIBUTED_INFERENCE": "true", "DISTINFER_NODES": node.url, "DISTINFER_AUTH_DISABLED": "true"}
        gateway = start_gateway(env)
        stack.callback(gateway.stop)
        gateway.wait_ready(timeout_s=60)
        urls[f"gateway/batching-{batching}"] = gateway.url + RELAY_PATH
    return urls


def run_minilm(params: MiniLMParams, console: Console) -> dict[str, Any]:
    if (reason := missing_export(params.repository)) is not None:
        raise SystemExit(reason)
    body, headers = request_body(params.repository)
    runs: list[Run] = []
    with ExitStack() as stack:
        urls = _start(stack, params.repository)
        targets = list(urls)
        for round_index in range(params.rounds):
            for concurrency in params.concurrency:
                order = targets[round_index % len(targets) :] + targets[: round_index % len(targets)]
                for target in order:
                    spec = LoadSpec(
                        url=urls[target],
                        body=body,
                        headers=headers,
                        concurrency=concurrency,
                        duration_s=params.duration_s,
                        warmup_s=params.warmup_s,
                    )
                    result = asyncio.run(run_load(spec))
                    console.print(f"  {target:24} c={concurrency:<3} {result.throughput:8.1f} req/s")
                    runs.append(Run(target, "binary", concurrency, round_index, result))
    table = aggregate(runs)["binary"]
    top = str(max(params.concurrency))
    ratios: dict[str, float | None] = {}
    for batching in ("on", "off"):
        direct = table[top][f"direct/batching-{batching}"]["throughput"]
        through = table[top][f"gateway/batching-{batching}"]["throughput"]
        ratios[f"gateway_over_direct/batching-{batching}"] = through / direct if direct else None
    on, off = table[top]["direct/batching-on"]["throughput"], table[top]["direct/batching-off"]["throughput"]
    ratios["batching_on_over_off/direct"] = on / off if off else None
    met = all(
        (value or 0) >= GATEWAY_RATIO_MIN for key, value in ratios.items() if key.startswith("gateway_over_direct")
    )
    return {
        "scenario": "minilm",
        "params": {"rounds": params.rounds, "duration_s": params.duration_s, "concurrency": list(params.concurrency)},
        "results": table,
        "ratios": ratios,
        "targets": {"gateway_over_direct_min": GATEWAY_RATIO_MIN, "met": met},
        "errors": sum(run.result.errors + run.result.timeouts for run in runs),
    }


def render_minilm(document: dict[str, Any], console: Console) -> None:
    table = Table(title="MiniLM (all-MiniLM-L6-v2, 32 tokens, binary)", title_justify="left")
    for column in ("c", "target", "p50 ms", "p99 ms", "req/s"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for concurrency, targets in document["results"].items():
        for target, row in targets.items():
            table.add_row(
                concurrency, target, f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}", f"{row['throughput']:.1f}"
            )
    console.print(table)
    for key, value in document["ratios"].items():
        console.print(f"{key}: {value:.2f}" if value is not None else f"{key}: n/a")
    console.print(f"gateway >= {GATEWAY_RATIO_MIN} of direct: {'met' if document['targets']['met'] else 'not met'}")
