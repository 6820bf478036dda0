"""distinfer's gateway plugin: `app.include_router(DistributedInference.from_env().router)`."""

from gateway_plugin.api.schemas import InferenceRequest
from gateway_plugin.dispatch import Outcome
from gateway_plugin.errors import DistinferError
from gateway_plugin.plugin import DistributedInference
from gateway_plugin.settings import Settings

__all__ = ["DistinferError", "DistributedInference", "InferenceRequest", "Outcome", "Settings"]
