"""Schemathesis over the gateway's own OpenAPI: every operation, valid and invalid data, authenticated.

The target is CONTRACT §5: bad input is a 4xx, never a 500. A 503 (no node can serve) or a 504
(deadline) is an honest answer under fuzzing and does not count; every other 5xx is recorded with
a curl command that reproduces it. Operations that change the cluster (unregistering nodes,
turning the flag off) run last, so they cannot starve the others of a working gateway.
Needs the `dev` extra (schemathesis, hypothesis); imported only when a fuzz runs.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

__all__ = ["ALLOWED_5XX", "fuzz_api"]

ALLOWED_5XX = frozenset({503, 504})
_LAST = ("DELETE", "PUT", "PATCH")


def _order(operation: Any) -> tuple[int, str]:
    method = str(operation.method).upper()
    return (1 if method in _LAST else 0, f"{operation.path} {method}")


def _operation(result: Any) -> Any:
    """An operation of the schema; a part of it schemathesis cannot read is an error of the schema."""
    return result.ok()


def fuzz_api(
    base_url: str,
    *,
    headers: Mapping[str, str],
    max_examples: int = 25,
    openapi_path: str = "/openapi.json",
    timeout_s: float = 15.0,
) -> dict[str, Any]:
    """Run schemathesis against a live gateway; returns cases run, statuses and the server errors found."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(base_url + openapi_path, timeout=timeout_s)
    operations = sorted((_operation(result) for result in schema.get_all_operations()), key=_order)
    statuses: Counter[str] = Counter()
    per_operation: dict[str, int] = {}
    server_errors: list[dict[str, Any]] = []
    transport_errors: Counter[str] = Counter()
    started = time.monotonic()
    with requests.Session() as session:
        for operation in operations:
            label = f"{str(operation.method).upper()} {operation.path}"
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                count = 0

                @settings(
                    max_examples=max_examples,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=operation.as_strategy(generation_mode=mode))
                def call(case: Any) -> None:
                    nonlocal count
                    count += 1
                    try:
                        response = case.call(
                            base_url=base_url, session=session, headers=dict(headers), timeout=timeout_s
                        )
                    except requests.RequestException as exc:
                        transport_errors[type(exc).__name__] += 1
                        return
                    statuses[str(response.status_code)] += 1
                    if response.status_code >= 500 and response.status_code not in ALLOWED_5XX:
                        server_errors.append(
                            {
                                "operation": f"{str(case.operation.method).upper()} {case.operation.path}",
                                "status": response.status_code,
                                "body": response.text[:300],
                                "curl": case.as_curl_command(headers={"Authorization": "Bearer $TOKEN"}),
                            }
                        )

                try:
                    call()
                except Exception as exc:  # schemathesis could not generate for this operation: say so, go on
                    transport_errors[f"generation:{type(exc).__name__}"] += 1
                per_operation[f"{label} ({mode})"] = count
    return {
        "operations": len(operations),
        "cases": sum(per_operation.values()),
        "server_errors": len(server_errors),
        "server_error_samples": server_errors[:20],
        "statuses": dict(sorted(statuses.items())),
        "transport_errors": dict(transport_errors),
        "per_operation": per_operation,
        "elapsed_s": round(time.monotonic() - started, 2),
    }
