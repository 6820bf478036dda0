"""The gateway's errors, each with its HTTP status and a stable `code`, rendered as problem+json::

    DistinferError                    500 internal
    ├── BadRequest                    400 malformed body or tensor
    ├── Unauthorized                  401 missing or invalid bearer token (WWW-Authenticate)
    ├── Forbidden                     403 the token lacks a scope
    ├── NotFound                      404 flag off, unknown route target
    │   ├── UnknownModel              404 no node and no local copy has the model
    │   └── UnknownNode               404
    ├── Conflict                      409 the node exists already, or belongs to another source
    │   └── NoConsensus               409 enough models answered a vote, too few of them agreed
    ├── PayloadTooLarge               413 body or tensor over the limit
    ├── UnsupportedMediaType          415 a request Content-Encoding the gateway cannot decode
    ├── Unprocessable                 422 schema violation
    ├── TooManyRequests               429 task queue full or gateway saturated (Retry-After)
    ├── NoCapacity                    503 no node can serve and no fallback
    ├── AuthUnavailable               503 the signing keys cannot be fetched (JWKS down)
    └── DeadlineExceeded              504 the request's deadline was spent

`from_worker` maps the worker's errors (the node's own 4xx, codec errors) at the boundary.
Problem details follow RFC 9457: `type`, `title`, `status`, `detail`, plus `request_id` and `code`.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from worker.errors import (
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    NodeBusy,
    NodeLacksModel,
    NodeRejected,
    NodeTimeout,
    UnsupportedEncoding,
    WorkerError,
)
from worker.errors import PayloadTooLarge as WorkerPayloadTooLarge

__all__ = [
    "AuthUnavailable",
    "BadRequest",
    "Conflict",
    "DeadlineExceeded",
    "DistinferError",
    "Forbidden",
    "NoCapacity",
    "NoConsensus",
    "NotFound",
    "PayloadTooLarge",
    "ProblemResponse",
    "TooManyRequests",
    "Unauthorized",
    "UnknownModel",
    "UnknownNode",
    "Unprocessable",
    "UnsupportedMediaType",
    "from_worker",
    "problem",
    "problem_body",
]


class DistinferError(HTTPException):
    """Our routes render it as problem+json. An HTTPException, so that where one escapes into the
    host's own routes (`require_infer` as a dependency there) the host's handler answers with its
    status and headers (401 and its challenge), not with a 500."""

    status: int = 500
    code: str = "internal"
    title: str = "Internal error"
    headers: dict[str, str]

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        Exception.__init__(self, detail)  # not HTTPException's: `status_code` follows `status`
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    @property
    def status_code(self) -> int:
        return self.status

    @status_code.setter
    def status_code(self, value: int) -> None:
        self.status = value

    def __str__(self) -> str:
        return self.detail


class BadRequest(DistinferError):
    status, code, title = 400, "bad_request", "Malformed request"


class Unauthorized(DistinferError):
    status, code, title = 401, "unauthorized", "Authentication required"


class Forbidden(DistinferError):
    status, code, title = 403, "forbidden", "Insufficient scope"


class NotFound(DistinferError):
    status, code, title = 404, "not_found", "Not found"


class UnknownModel(NotFound):
    code, title = "unknown_model", "Unknown model"


class UnknownNode(NotFound):
    code, title = "unknown_node", "Unknown node"


class MethodNotAllowed(DistinferError):
    status, code, title = 405, "method_not_allowed", "Method not allowed"


class Conflict(DistinferError):
    status, code, title = 409, "conflict", "Conflict with the current state"


class NoConsensus(Conflict):
    code, title = "no_consensus", "The models did not agree"


class PayloadTooLarge(DistinferError):
    status, code, title = 413, "payload_too_large", "Payload too large"


class UnsupportedMediaType(DistinferError):
    status, code, title = 415, "unsupported_media_type", "Unsupported content coding"


class Unprocessable(DistinferError):
    status, code, title = 422, "invalid_request", "Request does not match the schema"


class TooManyRequests(DistinferError):
    status, code, title = 429, "too_many_requests", "Too many requests"

    def __init__(self, detail: str, *, retry_after_s: int = 1, **extra: Any) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after_s))}, **extra)


class NoCapacity(DistinferError):
    status, code, title = 503, "no_capacity", "No node can serve the request"


class AuthUnavailable(DistinferError):
    status, code, title = 503, "auth_unavailable", "Token verification unavailable"


class DeadlineExceeded(DistinferError):
    status, code, title = 504, "deadline_exceeded", "Deadline exceeded"


def from_worker(exc: WorkerError) -> DistinferError:
    """A worker-side error (codec, or a node's own 4xx) as the gateway's error."""
    if isinstance(exc, WorkerPayloadTooLarge):
        return PayloadTooLarge(exc.message)
    if isinstance(exc, InvalidInput):
        return BadRequest(exc.message)
    if isinstance(exc, UnsupportedEncoding):
        return UnsupportedMediaType(exc.message, headers=dict(exc.headers))
    if isinstance(exc, NodeRejected):
        # The node judged the request itself; pass its verdict on with its status.
        if exc.status == 413:
            return PayloadTooLarge(exc.message)
        if exc.status == 404:
            return UnknownModel(exc.message)
        if exc.status == 422:
            return Unprocessable(exc.message)
        return BadRequest(exc.message)
    if isinstance(exc, ModelNotFound | NodeLacksModel):
        return UnknownModel(exc.message)
    if isinstance(exc, ModelNotReady):
        return NoCapacity(exc.message)
    if isinstance(exc, NodeTimeout):
        return DeadlineExceeded(exc.message)
    if isinstance(exc, NodeBusy):
        return TooManyRequests(exc.message)
    error = DistinferError(exc.message)
    error.status = exc.status
    return error


class ProblemResponse(JSONResponse):
    media_type = "application/problem+json"


def problem_body(error: DistinferError, request_id: str) -> dict[str, Any]:
    """The RFC 9457 object alone: for a batch item or a task that failed inside a 200 answer."""
    return {
        "type": f"urn:distinfer:problem:{error.code}",
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "request_id": request_id,
        "code": error.code,
        **error.extra,
    }


def problem(error: DistinferError, request_id: str) -> ProblemResponse:
    body = problem_body(error, request_id)
    headers = {"X-Request-ID": request_id, **error.headers}
    return ProblemResponse(body, status_code=error.status, headers=headers)
