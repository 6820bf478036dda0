"""The gateway's errors, each with its HTTP status and a stable `code`, rendered as problem+json::

    DistinferError                    500 internal
    ├── BadRequest                    400 malformed body or tensor
    ├── NotFound                      404 flag off, unknown route target
    │   ├── UnknownModel              404 no node and no local copy has the model
    │   └── UnknownNode               404
    ├── PayloadTooLarge               413 body or tensor over the limit
    ├── Unprocessable                 422 schema violation
    ├── NoCapacity                    503 no node can serve and no fallback
    └── DeadlineExceeded              504 the request's deadline was spent

`from_worker` maps the worker's errors (the node's own 4xx, codec errors) at the boundary.
Problem details follow RFC 9457: `type`, `title`, `status`, `detail`, plus `request_id` and `code`.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from worker.errors import InvalidInput, NodeRejected, WorkerError
from worker.errors import PayloadTooLarge as WorkerPayloadTooLarge

__all__ = [
    "BadRequest",
    "DeadlineExceeded",
    "DistinferError",
    "NoCapacity",
    "NotFound",
    "PayloadTooLarge",
    "ProblemResponse",
    "UnknownModel",
    "UnknownNode",
    "Unprocessable",
    "from_worker",
    "problem",
]


class DistinferError(Exception):
    status: int = 500
    code: str = "internal"
    title: str = "Internal error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


class BadRequest(DistinferError):
    status, code, title = 400, "bad_request", "Malformed request"


class NotFound(DistinferError):
    status, code, title = 404, "not_found", "Not found"


class UnknownModel(NotFound):
    code, title = "unknown_model", "Unknown model"


class UnknownNode(NotFound):
    code, title = "unknown_node", "Unknown node"


class PayloadTooLarge(DistinferError):
    status, code, title = 413, "payload_too_large", "Payload too large"


class Unprocessable(DistinferError):
    status, code, title = 422, "invalid_request", "Request does not match the schema"


class NoCapacity(DistinferError):
    status, code, title = 503, "no_capacity", "No node can serve the request"


class DeadlineExceeded(DistinferError):
    status, code, title = 504, "deadline_exceeded", "Deadline exceeded"


def from_worker(exc: WorkerError) -> DistinferError:
    """A worker-side error (codec, or a node's own 4xx) as the gateway's error."""
    if isinstance(exc, WorkerPayloadTooLarge):
        return PayloadTooLarge(exc.message)
    if isinstance(exc, InvalidInput):
        return BadRequest(exc.message)
    if isinstance(exc, NodeRejected):
        # The node judged the request itself; pass its verdict on with its status.
        if exc.status == 413:
            return PayloadTooLarge(exc.message)
        if exc.status == 404:
            return UnknownModel(exc.message)
        if exc.status == 422:
            return Unprocessable(exc.message)
        return BadRequest(exc.message)
    error = DistinferError(exc.message)
    error.status = exc.status
    return error


class ProblemResponse(JSONResponse):
    media_type = "application/problem+json"


def problem(error: DistinferError, request_id: str) -> ProblemResponse:
    body: dict[str, Any] = {
        "type": f"urn:distinfer:problem:{error.code}",
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "request_id": request_id,
        "code": error.code,
        **error.extra,
    }
    headers = {"X-Request-ID": request_id, **error.headers}
    return ProblemResponse(body, status_code=error.status, headers=headers)
