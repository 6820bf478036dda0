"""FastLane: which requests it takes, what it hands its handlers, and that everything else passes."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from worker.fast_lane import FastLane


class Recorder:
    """An ASGI app that records the scopes it is called with."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)


def _scope(method: str, path: str, *, root_path: str = "", kind: str = "http") -> dict[str, Any]:
    return {"type": kind, "method": method, "path": path, "root_path": root_path}


async def _nothing() -> dict[str, Any]:
    return {"type": "http.disconnect"}


async def _ignore(message: Any) -> None:
    return None


@pytest.fixture
def lane() -> tuple[FastLane, Recorder, Recorder, Recorder]:
    app, infer, versioned = Recorder("app"), Recorder("infer"), Recorder("versioned")
    routes = [("/v2/models/{model}/infer", infer), ("/v2/models/{model}/versions/{version}/infer", versioned)]
    return FastLane(app, routes), app, infer, versioned


async def test_matching_posts_go_to_their_handler_with_path_params(
    lane: tuple[FastLane, Recorder, Recorder, Recorder],
) -> None:
    fast, app, infer, versioned = lane
    await fast(_scope("POST", "/v2/models/digits/infer"), _nothing, _ignore)
    await fast(_scope("POST", "/v2/models/digits/versions/3/infer"), _nothing, _ignore)
    assert [s["path_params"] for s in infer.scopes] == [{"model": "digits"}]
    assert [s["path_params"] for s in versioned.scopes] == [{"model": "digits", "version": "3"}]
    assert app.scopes == []


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("GET", "/v2/models/digits/infer", "http"),  # the app answers 405 itself
        ("POST", "/v2/models/digits/infer/extra", "http"),
        ("POST", "/v2/models/digits", "http"),
        ("POST", "/v2/models//infer", "http"),  # an empty model name is not a match
        ("POST", "/v2/models/digits/infer", "websocket"),
    ],
)
async def test_everything_else_goes_to_the_app_untouched(
    lane: tuple[FastLane, Recorder, Recorder, Recorder], method: str, path: str, kind: str
) -> None:
    fast, app, infer, versioned = lane
    scope = _scope(method, path, kind=kind)
    await fast(scope, _nothing, _ignore)
    assert app.scopes == [scope]
    assert "path_params" not in app.scopes[0]
    assert infer.scopes == versioned.scopes == []


async def test_lifespan_passes_to_the_app(lane: tuple[FastLane, Recorder, Recorder, Recorder]) -> None:
    fast, app, _, _ = lane
    await fast({"type": "lifespan"}, _nothing, _ignore)
    assert app.scopes == [{"type": "lifespan"}]


async def test_paths_are_matched_below_the_mount_point(lane: tuple[FastLane, Recorder, Recorder, Recorder]) -> None:
    fast, app, infer, _ = lane
    await fast(_scope("POST", "/node/v2/models/m/infer", root_path="/node"), _nothing, _ignore)
    assert [s["path_params"] for s in infer.scopes] == [{"model": "m"}]
    assert app.scopes == []
