"""A fuzz of the v2 binary tensor parser (hypothesis): valid messages, then broken in every way we can think of.

Bodies start as real encodings (`encode_request` of random tensors of every datatype) and are
then cut, bit-flipped, given a wrong `Inference-Header-Content-Length`, or have their JSON header's
shapes, datatypes and `binary_data_size` rewritten; some are plain random bytes. The parser may
answer only with a `WorkerError` (a v2 4xx): any other exception is a finding. The same bodies
can also be posted to live servers (a node and the gateway's relay), where anything >= 500 other
than 503/504 is a finding. Needs the `dev` extra (hypothesis).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from worker.errors import WorkerError
from worker.protocol import HEADER_LENGTH, Limits, Tensor, decode_request, decode_response, encode_request

__all__ = ["Mutation", "check_body", "mutated_bodies", "run_parser_fuzz"]

Mutation = tuple[bytes, str | None]  # body, Inference-Header-Content-Length as sent (None: absent)
LIMITS = Limits(max_tensor_elements=1 << 20, max_string_bytes=1 << 16)
_DTYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


def check_body(body: bytes, header_length: str | None) -> str | None:
    """None when the parser accepts the body or refuses it as bad input; else what escaped it."""
    for decode in (decode_request, decode_response):
        try:
            length = None if header_length is None else int(header_length) if header_length.isdigit() else -1
            decode(body, length, LIMITS)
        except WorkerError:
            continue
        except Exception as exc:
            return f"{decode.__name__}: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def mutated_bodies() -> Any:
    """A hypothesis strategy of (body, header length) pairs."""
    from hypothesis import strategies as st

    @st.composite
    def tensors(draw: Any) -> Tensor:
        datatype = draw(st.sampled_from([*_DTYPES, "BYTES"]))
        shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
        count = int(np.prod(shape)) if shape else 1
        if datatype == "BYTES":
            data = np.empty(count, dtype=object)
            data[:] = [draw(st.binary(max_size=12)) for _ in range(count)]
            return Tensor(draw(st.text(min_size=1, max_size=6)), "BYTES", data.reshape(shape))
        raw = draw(st.binary(min_size=count * 8, max_size=count * 8))
        dtype = np.dtype(_DTYPES[datatype])
        array = np.frombuffer(raw[: count * dtype.itemsize], dtype=dtype).copy().reshape(shape)
        return Tensor(draw(st.text(min_size=1, max_size=6)), datatype, array)

    @st.composite
    def mutations(draw: Any) -> Mutation:
        encoded = encode_request(draw(st.lists(tensors(), min_size=1, max_size=3)), binary=draw(st.booleans()))
        body = bytearray(encoded.body)
        length: str | None = None if encoded.header_length is None else str(encoded.header_length)
        kind = draw(st.sampled_from(["as_is", "truncate", "flip", "length", "header", "random", "append"]))
        if kind == "truncate" and body:
            del body[draw(st.integers(0, len(body) - 1)) :]
        elif kind == "flip" and body:
            for _ in range(draw(st.integers(1, 8))):
                body[draw(st.integers(0, len(body) - 1))] ^= 1 << draw(st.integers(0, 7))
        elif kind == "length":
            length = draw(st.sampled_from(["0", "-1", "1e3", "", "99999999999999999999", str(len(body) + 1)]))
        elif kind == "header" and length is not None:
            head = json.loads(bytes(body[: int(length)]))
            entry = draw(st.sampled_from(head["inputs"]))
            field = draw(st.sampled_from(["shape", "datatype", "binary_data_size", "data"]))
            value = draw(
                st.one_of(
                    st.integers(-(2**70), 2**70),
                    st.lists(st.integers(-(2**40), 2**40), max_size=5),
                    st.text(max_size=8),
                    st.none(),
                    st.floats(allow_nan=False),
                )
            )
            if field == "binary_data_size":
                entry.setdefault("parameters", {})["binary_data_size"] = value
            else:
                entry[field] = value
            head_bytes = json.dumps(head).encode()
            body = bytearray(head_bytes + bytes(body[int(length) :]))
            length = str(len(head_bytes))
        elif kind == "random":
            body = bytearray(draw(st.binary(max_size=512)))
            length = draw(st.one_of(st.none(), st.integers(0, 600).map(str)))
        elif kind == "append":
            body += draw(st.binary(min_size=1, max_size=64))
        return bytes(body), length

    return mutations()


def _post(client: httpx.Client, url: str, body: bytes, length: str | None, headers: dict[str, str]) -> int | None:
    sent = dict(headers, **({HEADER_LENGTH: length} if length is not None else {}))
    sent.setdefault("Content-Type", "application/octet-stream" if length is not None else "application/json")
    try:
        return client.post(url, content=body, headers=sent).status_code
    except httpx.HTTPError:
        return None


def run_parser_fuzz(
    examples: int, *, targets: Sequence[str] = (), headers: dict[str, str] | None = None, http_every: int = 5
) -> dict[str, Any]:
    """`examples` bodies through the parser; every `http_every`-th one also posted to each URL of `targets`."""
    from hypothesis import HealthCheck, given, settings

    findings: list[str] = []
    server_errors: list[dict[str, Any]] = []
    statuses: Counter[str] = Counter()
    cases = 0
    started = time.monotonic()
    with httpx.Client(timeout=15) as client:

        @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(mutated_bodies())
        def one(mutation: Mutation) -> None:
            nonlocal cases
            body, length = mutation
            cases += 1
            escaped = check_body(body, length)
            if escaped is not None:
                findings.append(escaped)
            if targets and cases % http_every == 0:
                for url in targets:
                    status = _post(client, url, body, length, headers or {})
                    statuses[str(status)] += 1
                    if status is None or (status >= 500 and status not in (503, 504)):
                        server_errors.append(
                            {"url": url, "status": status, "header_length": length, "body": body[:200].hex()}
                        )

        one()
    return {
        "cases": cases,
        "parser_escapes": len(findings),
        "parser_escape_samples": sorted(set(findings))[:10],
        "http_cases": sum(statuses.values()),
        "http_statuses": dict(sorted(statuses.items())),
        "server_errors": len(server_errors),
        "server_error_samples": server_errors[:10],
        "elapsed_s": round(time.monotonic() - started, 2),
    }
