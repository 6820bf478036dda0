"""`distinfer gateway`: a FastAPI app with nothing but the plugin, for people with no gateway of their own."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse, RedirectResponse
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

    # The process's own probes (Kubernetes' /livez and /readyz), outside the plugin's prefix: its
    # /health answers 404 while the flag is off, and a probe on it would restart every pod whose
    # flag was switched off at runtime, turning the kill switch back on. Ready once started: with
    # no node online the gateway still answers (problem+json 503) rather than vanish from its Service.
    @app.get("/livez", include_in_schema=False)
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        started = distributed.cluster_summary().get("status") != "not_started"
        return JSONResponse({"status": "ok" if started else "starting"}, status_code=200 if started else 503)

    return distributed.fast_lane(app) if fast_lane else app
