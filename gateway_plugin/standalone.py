"""`distinfer gateway`: a FastAPI app with nothing but the plugin, for people with no gateway of their own."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from gateway_plugin.plugin import DistributedInference
from gateway_plugin.settings import Settings

__all__ = ["create_gateway_app"]


def create_gateway_app(settings: Settings) -> FastAPI:
    distributed = DistributedInference(settings=settings)
    app = FastAPI(title="distinfer gateway", version="0.1.0")
    app.include_router(distributed.router)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    return app
