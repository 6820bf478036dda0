"""Errors of the node side and of the v2 client, one tree::

    WorkerError                      status 500, code "internal"
    ├── InvalidInput                 400  malformed body, tensor, shape, datatype
    ├── ModelNotFound                404  no such model in the repository
    ├── PayloadTooLarge              413  body or tensor over the configured limit
    ├── UnsupportedEncoding          415  a request Content-Encoding other than gzip, deflate, identity
    ├── ModelNotReady                503  known but not loaded
    ├── InferenceFailed              500  the runtime raised
    └── NodeCallError                raised by NodeClient, the gateway's side of a call
        ├── NodeUnreachable          connect/reset/refused: retry elsewhere
        ├── NodeTimeout              no answer in time: retry elsewhere
        ├── NodeServerError          5xx from the node: retry elsewhere
        ├── ChainBroken              502 forward_failed: a later node of a forwarded chain failed, not this one
        ├── NodeLacksModel           404 to an infer call: the node no longer has the model, retry elsewhere
        └── NodeRejected             4xx from the node: the request is at fault, never retried
            └── AnswerTooLarge       413  the node's answer is over the gateway's limits: any node's would be

Each carries an HTTP `status` and a stable `code`; servers turn them into v2 error JSON
(`{"error": "..."}`), the gateway into problem+json.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import ClassVar

__all__ = [
    "ERROR_CODE_HEADER",
    "FORWARD_FAILED",
    "AnswerTooLarge",
    "ChainBroken",
    "ConfigurationError",
    "InferenceFailed",
    "InvalidInput",
    "ModelNotFound",
    "ModelNotReady",
    "NodeBusy",
    "NodeCallError",
    "NodeLacksModel",
    "NodeRejected",
    "NodeServerError",
    "NodeTimeout",
    "NodeUnreachable",
    "PayloadTooLarge",
    "UnsupportedEncoding",
    "WorkerError",
    "retry_after_s",
]


class ConfigurationError(ValueError):
    """What the operator configured cannot work (a setting, a flag, a key file): the commands print
    it in one line and exit 2, not with a traceback. Not an HTTP error: raised before serving."""


class WorkerError(Exception):
    status: int = 500
    code: str = "internal"
    headers: ClassVar[Mapping[str, str]] = MappingProxyType({})  # sent with the error answer (415's Accept-Encoding)

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(WorkerError):
    status = 400
    code = "invalid_input"


class ModelNotFound(WorkerError):
    status = 404
    code = "model_not_found"


class PayloadTooLarge(WorkerError):
    status = 413
    code = "payload_too_large"


class UnsupportedEncoding(WorkerError):
    """RFC 9110 §12.5.3: a request content coding the server cannot decode is a 415 naming those it can."""

    status = 415
    code = "unsupported_encoding"
    headers: ClassVar[Mapping[str, str]] = MappingProxyType({"Accept-Encoding": "gzip, deflate"})


class ModelNotReady(WorkerError):
    status = 503
    code = "model_not_ready"


class InferenceFailed(WorkerError):
    status = 500
    code = "inference_failed"


class NodeCallError(WorkerError):
    """A call from the gateway to a node did not give an answer."""

    retryable: bool = True
    code = "node_call_failed"

    def __init__(self, message: str, *, node_url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.node_url = node_url
        if status is not None:
            self.status = status


class NodeUnreachable(NodeCallError):
    status = 502
    code = "node_unreachable"


class NodeTimeout(NodeCallError):
    status = 504
    code = "node_timeout"


class NodeServerError(NodeCallError):
    status = 502
    code = "node_server_error"


# A node names the kind of a 5xx it answers where its status alone would blame the node itself.
ERROR_CODE_HEADER = "X-Distinfer-Error"
FORWARD_FAILED = "forward_failed"


class ChainBroken(NodeCallError):
    """The node ran its stage of a forwarded chain, but a node after it did not answer (its 502
    `forward_failed`). The node is fine, and another first node would hand on to the same dead hop:
    not retried and not counted against it; the gateway runs the chain relayed instead."""

    retryable = False
    status = 502
    code = "chain_broken"


class NodeBusy(NodeServerError):
    """The node cannot take the request now (429, 408): another node may; the node is not ejected for it.

    `retry_after_s`: how long the node asked to be left alone (its `Retry-After`), when it said.
    """

    code = "node_busy"

    def __init__(
        self, message: str, *, node_url: str, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, node_url=node_url, status=status)
        self.retry_after_s = retry_after_s


def retry_after_s(value: str | None, *, now: float | None = None) -> float | None:
    """A `Retry-After` value in seconds from now (RFC 9110 §10.2.3: delay-seconds or an HTTP date).

    None when absent or unreadable; never negative. `now`: the wall clock (epoch seconds), for tests.
    """
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is read as such
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


class NodeLacksModel(NodeCallError):
    """A node answered an infer call 404: it does not have the model (unloaded since the gateway last
    looked). Another node may; the node itself is fine."""

    status = 404
    code = "node_lacks_model"


class NodeRejected(NodeCallError):
    """The node refused the request itself (4xx): sending it elsewhere would not help."""

    retryable = False
    code = "node_rejected"


class AnswerTooLarge(NodeRejected):
    """The node answered, but a tensor is over the caller's limits (elements, string bytes).

    The same request gives the same answer on every node, and the node is not at fault: retrying it
    elsewhere, or counting it against the node's breaker, would only spread the refusal (a sharded
    model's activation over DISTINFER_MAX_TENSOR_ELEMENTS opened a healthy node's breaker).
    """

    status = 413
    code = "answer_too_large"
