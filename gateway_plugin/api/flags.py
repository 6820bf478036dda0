"""`GET|PUT /flags`: the feature flag, rollout percentage and mode, changed at runtime (CONTRACT §3).

These two routes answer even while the flag is off (everything else under the prefix is 404
then): otherwise nobody could turn it back on without a restart. GET needs `infer`, PUT `admin`.
A PUT changes only the fields it names; with a flag provider the provider's values still win.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from gateway_plugin.api.routing import ProblemRoute
from gateway_plugin.auth import Principal
from gateway_plugin.flags import FeatureFlags

__all__ = ["FlagsBody", "FlagsUpdate", "flags_router"]

Scope = Callable[..., Awaitable[Principal]]


class FlagsUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"enabled": True, "rollout_percent": 10, "mode": "shadow"}]}
    )

    enabled: bool | None = None
    rollout_percent: float | None = Field(default=None, ge=0, le=100)
    mode: Literal["serve", "shadow"] | None = None


class FlagsBody(BaseModel):
    enabled: bool
    rollout_percent: float
    mode: Literal["serve", "shadow"]
    source: Literal["settings", "provider"] = Field(description="`provider` when a flag provider backs them")


def flags_router(
    flags: FeatureFlags, require_infer: Scope, require_admin: Scope, route_class: type[ProblemRoute] = ProblemRoute
) -> APIRouter:
    router = APIRouter(route_class=route_class, tags=["flags"])

    @router.get("/flags", summary="Feature flag, rollout percent and mode", responses={401: {}, 403: {}})
    async def get_flags(_: Annotated[Principal, Depends(require_infer)]) -> FlagsBody:
        return FlagsBody.model_validate(flags.current().as_dict())

    @router.put(
        "/flags", summary="Change the flag, rollout percent or mode (admin)", responses={401: {}, 403: {}, 422: {}}
    )
    async def put_flags(update: FlagsUpdate, _: Annotated[Principal, Depends(require_admin)]) -> FlagsBody:
        changes: dict[str, Any] = update.model_dump(exclude_none=True)
        return FlagsBody.model_validate(flags.update(**changes).as_dict())

    return router
