"""`distinfer gateway`: a FastAPI app with nothing but the plugin, for people with no gateway of their own."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.types import ASGIApp

from gateway_plugin.plugin import DistributedInference
from gateway_plugin.settings import Settings

__all__ = ["create_gateway_app"]


def create_gateway_app(settings: Settings, *, fast_lane: bool = True) -> ASGIApp:
    """The app; with `fast_lane`, the v2 relay is served ahead of FastAPI's stack (no host middleware here)."""
    distributed = DistributedInference(settings=settings)
    app = FastAPI(title="distinfer gateway", version="0.1.0")
    app.include_router(distributed.router)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    return distributed.fast_lane(app) if fast_lane else app
