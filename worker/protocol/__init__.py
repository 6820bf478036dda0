"""The Open Inference Protocol (KServe v2) wire format: datatypes, JSON models, codec."""

from worker.protocol.codec import (
    HEADER_LENGTH,
    DecodedRequest,
    DecodedResponse,
    EncodedBody,
    Limits,
    Tensor,
    binary_outputs,
    check_response_frame,
    decode_request,
    decode_response,
    dumps,
    encode_request,
    encode_response,
    parse_header_length,
    tensor_from_json,
)
from worker.protocol.datatypes import DATATYPES, datatype_of, dtype_of

__all__ = [
    "DATATYPES",
    "HEADER_LENGTH",
    "DecodedRequest",
    "DecodedResponse",
    "EncodedBody",
    "Limits",
    "Tensor",
    "binary_outputs",
    "check_response_frame",
    "datatype_of",
    "decode_request",
    "decode_response",
    "dtype_of",
    "dumps",
    "encode_request",
    "encode_response",
    "parse_header_length",
    "tensor_from_json",
]
