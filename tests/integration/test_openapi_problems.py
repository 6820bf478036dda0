"""OpenAPI documents every error as it is sent: problem+json, including auth's, the flag's and 422."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from gateway_plugin.api.openapi_problems import PROBLEM_SCHEMA
from tests.integration.conftest import mounted, settings_for

PREFIX = "/api/v1/distributed"


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, operations in doc["paths"].items()
        if path.startswith(PREFIX)
        for method, operation in operations.items()
    ]


async def test_every_error_response_is_documented_as_problem_json() -> None:
    """Regression: 422s were documented as FastAPI's {"detail": [...]}, other errors without a body,
    and the 401/403 of auth, the flag's 404 and the body cap's 413 not at all."""
    async with mounted(settings_for([])) as (client, _):
        doc = (await client.get("/openapi.json")).json()
        sent = await client.get(f"{PREFIX}/tasks", params={"status": "bogus"})
    assert "HTTPValidationError" not in json.dumps(doc)
    operations = _operations(doc)
    assert len(operations) >= 20
    for method, path, operation in operations:
        for code, response in operation["responses"].items():
            if code[0] not in "45" or (path.endswith("/health/ready") and code == "503"):
                continue
            assert list(response.get("content", {})) == ["application/problem+json"], (method, path, code)
    responses = {(method, path): set(operation["responses"]) for method, path, operation in operations}
    assert {"401", "403", "404", "422"} <= responses[("GET", f"{PREFIX}/tasks/{{task_id}}")]
    assert {"401", "403", "404", "409", "422"} <= responses[("DELETE", f"{PREFIX}/nodes/{{node_id}}")]
    assert {"401", "403", "413", "422"} <= responses[("POST", f"{PREFIX}/inference")]
    assert "503" in responses[("GET", f"{PREFIX}/health/ready")]
    assert not {"401", "403"} & responses[("GET", f"{PREFIX}/health/live")]  # no auth there
    # What a 422 really carries fits what is documented.
    assert sent.status_code == 422
    assert sent.headers["content-type"] == "application/problem+json"
    jsonschema.validate(sent.json(), PROBLEM_SCHEMA)


async def test_errors_really_sent_are_in_the_document() -> None:
    """Each error provoked here (no nodes, no token, bad input) is among its operation's documented responses."""
    relay = ("POST", f"{PREFIX}/v2/models/{{model}}/infer")
    cases = [
        (relay, f"{PREFIX}/v2/models/nope/infer", b'{"inputs":[]}', True),
        (relay, f"{PREFIX}/v2/models/nope/infer", b"{", True),
        (("GET", f"{PREFIX}/health/ready"), f"{PREFIX}/health/ready", None, True),
        (("GET", f"{PREFIX}/v2/health/ready"), f"{PREFIX}/v2/health/ready", None, True),
        (("GET", f"{PREFIX}/v2/models/{{model}}/ready"), f"{PREFIX}/v2/models/nope/ready", None, True),
        (("GET", f"{PREFIX}/tasks/{{task_id}}"), f"{PREFIX}/tasks/nope", None, True),
        (("DELETE", f"{PREFIX}/nodes/{{node_id}}"), f"{PREFIX}/nodes/nope", None, True),
        (("POST", f"{PREFIX}/inference"), f"{PREFIX}/inference", b"[[[", True),
        (("POST", f"{PREFIX}/inference"), f"{PREFIX}/inference", b'{"model":"digits","inputs":[1]}', False),
        (("GET", f"{PREFIX}/models"), f"{PREFIX}/models", None, False),
    ]
    async with mounted(settings_for([])) as (client, _):
        doc = (await client.get("/openapi.json")).json()
        documented = {(method, path): set(operation["responses"]) for method, path, operation in _operations(doc)}
        seen: set[int] = set()
        for (method, template), url, body, with_token in cases:
            headers = {"Content-Type": "application/json"} | ({} if with_token else {"Authorization": ""})
            response = await client.request(method, url, content=body, headers=headers)
            assert response.status_code >= 400, (method, url)
            assert str(response.status_code) in documented[(method, template)], (method, url, response.status_code)
            seen.add(response.status_code)
    assert {400, 401, 404, 503} <= seen  # the cases do provoke a spread of errors
