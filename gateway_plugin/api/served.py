"""`X-Inference-Node` and `X-Inference-Mode` for answers made of many calls, and for failed calls.

CONTRACT §4 puts them on every inference response. A batch, a parallel request or a pipeline is
served by several calls, so its headers list every node and mode that answered one, in order of
first appearance and without repeats (HTTP list syntax: `node-1, node-2`). A call nobody served
(an error, or a composite whose every call failed) says `none`, as the metrics' node and mode
labels do; so do the problem responses of `/inference` and the v2 relay.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gateway_plugin.errors import DistinferError

__all__ = ["NOT_SERVED", "not_served", "served_headers"]

NOT_SERVED = "none"


def served_headers(request_id: str, responses: Iterable[Mapping[str, Any] | None]) -> dict[str, str]:
    """The response headers for `responses`: bodies of successful calls (`outcome_body`), None for failed ones."""
    nodes: dict[str, None] = {}
    modes: dict[str, None] = {}
    for response in responses:
        if response is None:
            continue
        mode = str(response.get("mode") or NOT_SERVED)
        nodes.setdefault(str(response.get("node_id") or ("local" if mode == "local" else NOT_SERVED)))
        modes.setdefault(mode)
    return {
        "X-Request-ID": request_id,
        "X-Inference-Node": ", ".join(nodes) or NOT_SERVED,
        "X-Inference-Mode": ", ".join(modes) or NOT_SERVED,
    }


def not_served(error: DistinferError) -> DistinferError:
    """`error` answering an inference call: its problem response says that no node served it."""
    error.headers.setdefault("X-Inference-Node", NOT_SERVED)
    error.headers.setdefault("X-Inference-Mode", NOT_SERVED)
    return error
