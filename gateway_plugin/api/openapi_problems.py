"""The OpenAPI of the errors: every error a route can give, documented as what it is, problem+json.

FastAPI documents a route's declared error codes without a body, and adds a 422 with its own
`HTTPValidationError` shape (`{"detail": [...]}`) to every route with parameters, though ours
answer 422 as problem+json (`errors` listing what was wrong). Codes that come from dependencies
(401/403 from auth, 404 while the flag is off) or from the body cap (413) were not documented at
all. `document_problems` fixes the routes in place, once they are all included: a client generated
from the document then knows every error's shape, and schemathesis checks against the truth.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from http import HTTPStatus
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_flat_params
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from gateway_plugin.errors import ProblemResponse

__all__ = ["PROBLEM_SCHEMA", "document_problems"]

# RFC 9457, with the members every distinfer problem carries (errors.problem_body) and the optional ones.
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "required": ["type", "title", "status", "detail", "request_id", "code"],
    "properties": {
        "type": {"type": "string", "description": "urn:distinfer:problem:<code>"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "request_id": {"type": "string"},
        "code": {"type": "string", "description": "machine-readable reason, e.g. unknown_model"},
        "errors": {"type": "array", "items": {"type": "object"}, "description": "422: each schema violation"},
        "error": {"type": "string", "description": "v2 routes: the message, where v2 clients read it"},
    },
    "additionalProperties": True,
}


def _problem(code: int, declared: dict[str, Any]) -> dict[str, Any]:
    """The declared response (its description kept) with a problem+json body."""
    description = declared.get("description") or HTTPStatus(code).phrase
    return {**declared, "description": description, "content": {ProblemResponse.media_type: {"schema": PROBLEM_SCHEMA}}}


def _calls(dependant: Dependant) -> Iterable[Callable[..., Any] | None]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _calls(dependency)


def document_problems(
    routes: Iterable[BaseRoute],
    *,
    applied: Iterable[Callable[..., Any] | None] = (),
    auth: Collection[Callable[..., Any]],
    gate: Callable[..., Any],
) -> None:
    """Give each API route's error responses a problem+json body, adding the ones its dependencies
    give: 401 and 403 where one of `auth` runs, 404 where `gate` (the flag) does, 422 where FastAPI
    validates parameters or a body, 400 and 413 where there is a body to parse and cap. Codes a
    handler raises itself must be declared on its route (`responses=`).

    Call it on a router's routes before including that router, with `applied` the dependencies the
    include adds: FastAPI 0.165 keeps included routes as they are and applies those at match time.
    """
    applied = set(applied)
    for route in routes:
        if not isinstance(route, APIRoute):
            continue
        codes = {int(code) for code in route.responses if str(code).isdigit() and int(code) >= 400}
        calls = applied | set(_calls(route.dependant))
        if calls & set(auth):
            codes |= {401, 403}
        if gate in calls:
            codes.add(404)
        if route.body_field is not None:
            codes |= {400, 413, 422}  # 400: a body that does not parse
        elif get_flat_params(route.dependant):
            codes.add(422)
        for code in sorted(codes):
            declared = route.responses.get(code) or route.responses.get(str(code)) or {}
            if "content" in declared:
                continue  # not a problem: /health/ready's 503 is its summary
            route.responses.pop(str(code), None)
            route.responses[code] = _problem(code, declared)
