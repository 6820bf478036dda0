"""`X-Inference-Node` and `X-Inference-Mode` for answers made of many calls, and for failed calls.

CONTRACT §4 puts them on every inference response. A batch, a parallel request or a pipeline is
served by several calls, so its headers list every node and mode that answered one, in order of
first appearance and without repeats (HTTP list syntax: `node-1, node-2`). An answer no call
served says `none`, as the metrics' node and mode labels do: a batch or pipeline whose every call
failed, the error raised while an inference route serves (`serving`), and a refusal before it
serves (`mark_not_served`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from starlette.datastructures import MutableHeaders

from gateway_plugin.errors import DistinferError, from_worker
from worker.errors import WorkerError

__all__ = ["INFERENCE_TAG", "NOT_SERVED", "mark_not_served", "node_header", "not_served", "served_headers", "serving"]

NOT_SERVED = "none"
# The OpenAPI tag of the inference routes (single, batch, stream, parallel, pipeline): every answer
# of theirs carries the two headers, refusals before the handler runs included (`mark_not_served`).
INFERENCE_TAG = "inference"
# What a node id may hold as is in a header: ids come from discovery (a nodes file, Consul meta) and
# are free text. Anything else is percent-encoded as in a URL, so that a non-Latin-1 id cannot make
# the server fail the answer, and a comma in an id cannot split a list. `>` and `+` join a sharded
# model's stage nodes (`node-a>node-b+node-c`).
_SAFE_IN_HEADER = "-._~:@/>+!$&'()*;=[]"


@lru_cache(maxsize=1024)  # on the relay's path; node ids are few
def node_header(node_id: str | None) -> str:
    """A node id (None: served locally) as a header value."""
    return "local" if not node_id else quote(node_id, safe=_SAFE_IN_HEADER)


def served_headers(request_id: str, responses: Iterable[Mapping[str, Any] | None]) -> dict[str, str]:
    """The response headers for `responses`: bodies of successful calls (`outcome_body`), None for failed ones."""
    nodes: dict[str, None] = {}
    modes: dict[str, None] = {}
    for response in responses:
        if response is None:
            continue
        mode = str(response.get("mode") or NOT_SERVED)
        node_id = response.get("node_id")
        nodes.setdefault(node_header(str(node_id)) if node_id else ("local" if mode == "local" else NOT_SERVED))
        modes.setdefault(mode)
    return {
        "X-Request-ID": request_id,
        "X-Inference-Node": ", ".join(nodes) or NOT_SERVED,
        "X-Inference-Mode": ", ".join(modes) or NOT_SERVED,
    }


def not_served(error: DistinferError) -> DistinferError:
    """`error` answering an inference call: its problem response says that no node served it."""
    mark_not_served(error.headers)
    return error


def mark_not_served(headers: MutableMapping[str, str] | MutableHeaders) -> None:
    """Give an inference route's answer that no node served (a refusal: auth, the flag, the body
    cap, the schema, a 405) the two headers, saying `none`, unless it has them already."""
    headers.setdefault("X-Inference-Node", NOT_SERVED)
    headers.setdefault("X-Inference-Mode", NOT_SERVED)


@contextmanager
def serving() -> Iterator[None]:
    """Around an inference route's work: an error raised in it says that no node served the request.

    Errors refused before the handler runs (auth, the flag, the body cap, the schema) get the same
    headers from the route class (`ProblemRoute`, by the route's `INFERENCE_TAG`).
    """
    try:
        yield
    except WorkerError as exc:
        raise not_served(from_worker(exc)) from exc
    except DistinferError as exc:
        not_served(exc)
        raise
