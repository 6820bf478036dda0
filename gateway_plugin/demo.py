"""`distinfer demo`: two real nodes and a gateway on loopback, real digits traffic, failover, fallback.

1. both nodes up: requests spread over them; then tokens streamed (SSE) from the bundled `charlm`;
2. node-1 killed (SIGKILL): traffic moves to node-2, no request fails;
3. node-2 killed too: the gateway answers from its local model repository (`mode: local`).
Auth stays on: the demo makes a random secret for its gateway and prints the token it uses.
Everything it started is stopped at the end, whatever happens.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from gateway_plugin.auth import ADMIN, INFER, mint_token
from gateway_plugin.processes import ServerProcess, start_gateway, start_node

__all__ = ["run_demo"]

PREFIX = "/api/v1/distributed"
SAMPLES = Path(__file__).resolve().parent / "demo_digits.json"


def _samples() -> list[dict[str, Any]]:
    return list(json.loads(SAMPLES.read_text(encoding="utf-8"))["samples"])


def _wait_for_nodes(client: httpx.Client, online: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        nodes = client.get(f"{PREFIX}/nodes").json()
        if sum(node["status"] == "online" for node in nodes) >= online:
            return
        time.sleep(0.1)
    raise TimeoutError(f"fewer than {online} nodes online after {timeout_s}s")


def _phase(console: Console, client: httpx.Client, title: str, samples: list[dict[str, Any]]) -> Counter[str]:
    table = Table(title=title, title_justify="left")
    for column in ("#", "true digit", "predicted", "status", "served by", "mode", "attempts", "ms"):
        table.add_column(column, justify="right" if column in ("#", "attempts", "ms") else "left", no_wrap=True)
    served: Counter[str] = Counter()
    for index, sample in enumerate(samples, 1):
        response = client.post(f"{PREFIX}/inference", json={"model": "digits", "inputs": sample["image"]})
        if response.status_code != 200:
            table.add_row(str(index), str(sample["label"]), "-", str(response.status_code), "-", "-", "-", "-")
            served["failed"] += 1
            continue
        body = response.json()
        logits = body["outputs"][0]["data"]
        predicted = max(range(len(logits)), key=logits.__getitem__)
        where = response.headers["X-Inference-Node"]
        served[where] += 1
        mark = "" if predicted == sample["label"] else " (wrong)"
        table.add_row(
            str(index),
            str(sample["label"]),
            f"{predicted}{mark}",
            "200",
            where,
            body["mode"],
            str(body["attempts"]),
            f"{body['latency_ms']:.1f}",
        )
    console.print(table)
    return served


def _stream(console: Console, client: httpx.Client, prompt: str) -> None:
    """Tokens of the bundled character model, read as server-sent events as they arrive."""
    if not _has_model(client, "charlm"):
        console.print("[yellow]no charlm model in this repository: skipping the streaming phase[/]")
        return
    console.print(f"[bold]streaming[/] charlm, prompt {prompt!r}:")
    text, started, event = [], time.perf_counter(), ""
    params: dict[str, str | int | float] = {"prompt": prompt, "max_tokens": 120, "temperature": 0.6, "seed": 7}
    with client.stream("GET", f"{PREFIX}/inference/stream/charlm", params=params) as response:
        node = response.headers.get("X-Inference-Node", "?")
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "token":
                text.append(json.loads(line[5:])["text"])
    seconds = time.perf_counter() - started
    console.print(f"{prompt}[green]{''.join(text)}[/]")
    console.print(f"{len(text)} tokens from {node} in {seconds:.2f}s ({len(text) / seconds:.0f} tokens/s, end to end)")


def _has_model(client: httpx.Client, model: str) -> bool:
    return any(entry["name"] == model for entry in client.get(f"{PREFIX}/models").json())


def run_demo(model_repository: Path, samples: int = 6) -> int:
    console = Console(width=max(Console().width, 100))  # a pipe reads as 80 columns: too narrow
    data = _samples()
    picks = [data[i % len(data)] for i in range(samples * 3)]
    with ExitStack() as stack:
        console.rule("[bold]distinfer demo")
        nodes: list[ServerProcess] = []
        for node_id in ("node-1", "node-2"):
            node = start_node(model_repository, node_id, threads=1)
            stack.callback(node.stop)
            nodes.append(node)
        for node in nodes:
            node.wait_ready()
            console.print(f"started [cyan]{node.name}[/] at {node.url}")
        secret = secrets.token_urlsafe(32)
        token = mint_token(secret, scopes=(INFER, ADMIN), sub="demo", ttl_s=900)
        gateway = start_gateway(
            {
                "ENABLE_DISTRIBUTED_INFERENCE": "true",
                "DISTINFER_JWT_SECRET": secret,
                "DISTINFER_NODES": ",".join(node.url for node in nodes),
                "DISTINFER_LOCAL_MODEL_REPOSITORY": str(model_repository),
                "DISTINFER_PROBE_INTERVAL_S": "0.5",
                "DISTINFER_STRATEGY": "round_robin",
            }
        )
        stack.callback(gateway.stop)
        gateway.wait_ready()
        console.print(f"started [cyan]gateway[/] at {gateway.url}{PREFIX}")
        console.print(f"dev token (infer admin, 15 min), for curl while the demo runs:\n[dim]{token}[/]")
        headers = {"Authorization": f"Bearer {token}"}
        client = stack.enter_context(httpx.Client(base_url=gateway.url, timeout=10.0, headers=headers))
        _wait_for_nodes(client, online=2)

        totals: list[tuple[str, Counter[str]]] = []
        totals.append(("both nodes up", _phase(console, client, "1. Both nodes up", picks[:samples])))
        _stream(console, client, "The return statement")
        nodes[0].kill()
        console.print("[bold red]killed node-1 (SIGKILL)[/]")
        totals.append(
            ("node-1 killed", _phase(console, client, "2. node-1 killed: traffic moves", picks[samples : 2 * samples]))
        )
        nodes[1].kill()
        console.print("[bold red]killed node-2 (SIGKILL)[/]")
        totals.append(
            ("both killed", _phase(console, client, "3. Both nodes gone: local fallback", picks[2 * samples :]))
        )

        summary = Table(title="Summary", title_justify="left")
        for column in ("phase", "node-1", "node-2", "local", "failed"):
            summary.add_column(column)
        for name, counts in totals:
            summary.add_row(name, *(str(counts.get(key, 0)) for key in ("node-1", "node-2", "local", "failed")))
        console.print(summary)
        failed = sum(counts.get("failed", 0) for _, counts in totals)
        console.print(f"requests failed: {failed}; stopping everything the demo started")
    return 1 if failed else 0
