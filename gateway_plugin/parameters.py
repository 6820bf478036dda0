"""A caller's request `parameters`: any the model understands, but none of the gateway's own.

Parameters named `distinfer_*` are instructions from the gateway to its nodes. `distinfer_forward`
(worker.sharding.forward) makes a node call the URLs it lists, with the node token, and answer
with what they return: only the gateway's sharded runner may send it. A caller's request that
names one is refused before any node sees it, on every route that takes parameters (a pydantic
type for the JSON bodies, `check_client_parameters` for the v2 relay).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator

from gateway_plugin.errors import BadRequest

__all__ = ["RESERVED_PREFIX", "ClientParameters", "check_client_parameters"]

RESERVED_PREFIX = "distinfer_"


def _reserved(parameters: Mapping[str, Any]) -> str | None:
    return next((name for name in parameters if name.startswith(RESERVED_PREFIX)), None)


def _message(name: str) -> str:
    return f"parameter {name!r} is reserved: `{RESERVED_PREFIX}*` parameters come only from the gateway"


def _refused_in_body(parameters: dict[str, Any]) -> dict[str, Any]:
    if (name := _reserved(parameters)) is not None:
        raise ValueError(_message(name))
    return parameters


def check_client_parameters(parameters: Mapping[str, Any]) -> None:
    """BadRequest when a caller's parameters name one of the gateway's own."""
    if parameters and (name := _reserved(parameters)) is not None:
        raise BadRequest(_message(name))


# The `parameters` field of every request body a caller sends (a 422 naming the field when wrong).
ClientParameters = Annotated[dict[str, Any], AfterValidator(_refused_in_body)]
