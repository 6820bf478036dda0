"""Pydantic models of the Open Inference Protocol (KServe v2) REST JSON.

Quoted from the spec ("Inference Request JSON Object"):
  $inference_request = { "id": $string #optional, "parameters": $parameters #optional,
                         "inputs": [ $request_input, ... ], "outputs": [ $request_output, ... ] #optional }
  $request_input = { "name": $string, "shape": [ $number, ... ], "datatype": $string,
                     "parameters": $parameters #optional, "data": $tensor_data }
  $inference_response = { "model_name": $string, "model_version": $string #optional,
                          "id": $string, "parameters": $parameters #optional,
                          "outputs": [ $response_output, ... ] }
With the binary tensor data extension, `data` is absent and `parameters.binary_data_size` gives
the length of the tensor's bytes after the JSON header.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ErrorBody",
    "InferenceRequestHeader",
    "InferenceResponseHeader",
    "MetadataTensor",
    "ModelMetadata",
    "RepositoryEntry",
    "RequestedOutput",
    "ServerMetadata",
    "WireTensor",
]

Parameters = dict[str, Any]


class WireTensor(BaseModel):
    """`$request_input` and `$response_output`: a tensor as it appears in JSON."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=256)
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: Any = None


class RequestedOutput(BaseModel):
    """`$request_output`: which output to return, and whether as binary data."""

    model_config = ConfigDict(extra="ignore")

    name: str
    parameters: Parameters | None = None


class InferenceRequestHeader(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = Field(default=None, max_length=256)
    parameters: Parameters | None = None
    inputs: list[WireTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class InferenceResponseHeader(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[WireTensor]


class MetadataTensor(BaseModel):
    """`$metadata_tensor`: name, datatype and shape (-1 for a dynamic dimension)."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """`$metadata_model_response` (GET /v2/models/{m})."""

    model_config = ConfigDict(extra="ignore")

    name: str
    versions: list[str] | None = None
    platform: str = ""
    inputs: list[MetadataTensor] = []
    outputs: list[MetadataTensor] = []
    parameters: Parameters | None = None


class ServerMetadata(BaseModel):
    """`$metadata_server_response` (GET /v2)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    version: str
    extensions: list[str] = []


class RepositoryEntry(BaseModel):
    """One row of the model repository extension's index (POST /v2/repository/index)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    version: str | None = None
    state: str | None = None
    reason: str | None = None


class ErrorBody(BaseModel):
    """`$inference_error_response` and every other v2 error: `{"error": "..."}`."""

    error: str
