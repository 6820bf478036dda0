"""The v2 datatype table: Open Inference Protocol tensor datatypes and their numpy dtypes.

From the KServe v2 spec, "Tensor Data Types": BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32,
FP64 and BYTES. BF16 has no numpy dtype and is refused rather than silently widened.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DATATYPES", "datatype_of", "dtype_of", "element_size"]

DATATYPES: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    # BYTES elements are variable-length byte strings; numpy holds them as objects.
    "BYTES": np.dtype(np.object_),
}

_BY_DTYPE: dict[np.dtype[np.generic], str] = {dtype: name for name, dtype in DATATYPES.items()}


def dtype_of(datatype: str) -> np.dtype[np.generic]:
    """The numpy dtype for a v2 datatype name; KeyError when unknown."""
    return DATATYPES[datatype]


def datatype_of(dtype: np.dtype[np.generic]) -> str:
    """The v2 datatype name for a numpy dtype; strings and bytes map to BYTES."""
    if dtype.kind in ("U", "S", "O"):
        return "BYTES"
    try:
        return _BY_DTYPE[dtype.newbyteorder("=")]
    except KeyError:
        raise ValueError(f"no v2 datatype for numpy dtype {dtype}") from None


def element_size(datatype: str) -> int:
    """Bytes per element in the binary extension; 0 for BYTES (length-prefixed, variable)."""
    return 0 if datatype == "BYTES" else DATATYPES[datatype].itemsize
