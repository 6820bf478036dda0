"""distinfer's gateway plugin: `app.include_router(DistributedInference.from_env().router)`."""

from gateway_plugin.plugin import DistributedInference
from gateway_plugin.settings import Settings

__all__ = ["DistributedInference", "Settings"]
