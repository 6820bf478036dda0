"""Tokens per second of the bundled `charlm`, in-process, from a node's SSE, and through a gateway.

Starts one real node and one real `distinfer gateway` on loopback (auth on, a random secret),
streams `--tokens` greedy tokens three times per path and prints the best rate of each.

    python scripts/stream_tokens_per_s.py [--tokens 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from gateway_plugin.auth import mint_token
from gateway_plugin.processes import start_gateway, start_node
from worker.bundled import bundled_models
from worker.generate import GenerateParams
from worker.repository import ModelRepository
from worker.streaming import generators_for

MODELS = ("charlm", "charlm_torchscript")
PROMPT = "The return statement"


async def in_process(tokens: int) -> None:
    repository = ModelRepository.load(bundled_models(), threads=1, only=frozenset(MODELS))
    with ThreadPoolExecutor(max_workers=1) as executor:
        for name, generator in generators_for(repository, executor).items():
            rates = []
            for _ in range(3):
                started, count = time.perf_counter(), 0
                async for _token in generator.stream(GenerateParams(PROMPT, max_tokens=tokens)):
                    count += 1
                rates.append(count / (time.perf_counter() - started))
            print(f"in-process   {name:20s} {max(rates):8.0f} tokens/s")
    repository.close()


async def over_sse(client: httpx.AsyncClient, method: str, url: str, **options: Any) -> float:
    best = 0.0
    for _ in range(3):
        started, count = time.perf_counter(), 0
        async with aconnect_sse(client, method, url, **options) as source:
            async for event in source.aiter_sse():
                # The gateway names its events; the node sends bare `data:` events, the last with finish_reason.
                count += event.event == "token" or (event.event == "message" and "finish_reason" not in event.data)
        best = max(best, count / (time.perf_counter() - started))
    return best


async def over_network(tokens: int) -> None:
    secret = secrets.token_urlsafe(32)
    node = start_node(bundled_models(), "bench-stream", extra_args=["--models", ",".join(MODELS)])
    try:
        node.wait_ready(timeout_s=180)
        gateway = start_gateway(
            {"DISTINFER_NODES": node.url, "DISTINFER_JWT_SECRET": secret, "DISTINFER_MAX_NEW_TOKENS": str(tokens)}
        )
        try:
            gateway.wait_ready(timeout_s=180)
            headers = {"Authorization": f"Bearer {mint_token(secret)}"}
            async with httpx.AsyncClient(timeout=120) as client:
                for name in MODELS:
                    body = {"text_input": PROMPT, "parameters": {"max_tokens": tokens}}
                    direct = await over_sse(client, "POST", f"{node.url}/v2/models/{name}/generate_stream", json=body)
                    relayed = await over_sse(
                        client,
                        "GET",
                        f"{gateway.url}/api/v1/distributed/inference/stream/{name}",
                        params={"prompt": PROMPT, "max_tokens": tokens},
                        headers=headers,
                    )
                    print(f"node SSE     {name:20s} {direct:8.0f} tokens/s")
                    print(f"via gateway  {name:20s} {relayed:8.0f} tokens/s")
        finally:
            gateway.stop()
    finally:
        node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(in_process(args.tokens))
    asyncio.run(over_network(args.tokens))


if __name__ == "__main__":
    main()
