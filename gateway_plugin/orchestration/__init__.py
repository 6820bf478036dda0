"""Execution patterns composed of `Dispatcher.infer` calls: batch (with coalescing), parallel, pipeline."""

from gateway_plugin.orchestration.aggregations import AGGREGATIONS, Aggregate, Aggregation, Answer, aggregate
from gateway_plugin.orchestration.batch import BatchRunner
from gateway_plugin.orchestration.calls import ItemResult, call_safely
from gateway_plugin.orchestration.parallel import FanOut, fan_out
from gateway_plugin.orchestration.pipeline import PipelineRunner, Stage, StageResult, UpstreamFailed, validate

__all__ = [
    "AGGREGATIONS",
    "Aggregate",
    "Aggregation",
    "Answer",
    "BatchRunner",
    "FanOut",
    "ItemResult",
    "PipelineRunner",
    "Stage",
    "StageResult",
    "UpstreamFailed",
    "aggregate",
    "call_safely",
    "fan_out",
    "validate",
]
