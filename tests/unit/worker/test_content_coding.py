"""`decode_content` and `receive_body` with a Content-Encoding: gzip and deflate decoded under the cap."""

from __future__ import annotations

import gzip
import os
import zlib
from typing import Any

import pytest

from worker.bodies import receive_body
from worker.content_coding import decode_content
from worker.errors import InvalidInput, PayloadTooLarge, UnsupportedEncoding

BODY = b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1.5]}]}'


@pytest.mark.parametrize(
    ("encoding", "sent"),
    [
        ("gzip", gzip.compress(BODY)),
        ("GZip ", gzip.compress(BODY)),  # codings are case-insensitive tokens
        ("x-gzip", gzip.compress(BODY)),
        ("deflate", zlib.compress(BODY)),  # HTTP's deflate is the zlib format, as tritonclient sends it
        ("identity", BODY),
        ("deflate, gzip", gzip.compress(zlib.compress(BODY))),  # applied in order, decoded last first
    ],
)
def test_each_supported_coding_gives_the_body_back(encoding: str, sent: bytes) -> None:
    assert decode_content(sent, encoding, 1024) == BODY


def test_gzip_members_one_after_another_are_one_body() -> None:
    assert decode_content(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", 10) == b"abcd"


@pytest.mark.parametrize("encoding", ["br", "compress", "zstd", "gzip, br"])
def test_a_coding_we_cannot_decode_is_415_naming_those_we_can(encoding: str) -> None:
    with pytest.raises(UnsupportedEncoding, match="not supported") as caught:
        decode_content(BODY, encoding, 1024)
    assert caught.value.status == 415
    assert caught.value.headers == {"Accept-Encoding": "gzip, deflate"}


def test_a_small_body_that_inflates_past_the_cap_is_refused_without_inflating_it_all() -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))  # 64 MiB of zeros in ~64 KB
    assert len(bomb) < 100_000
    with pytest.raises(PayloadTooLarge, match="over the limit of 1048576"):
        decode_content(bomb, "gzip", 1024 * 1024)
    assert decode_content(gzip.compress(b"\0" * 1024), "gzip", 1024) == b"\0" * 1024  # exactly at the cap


@pytest.mark.parametrize(
    ("encoding", "sent", "says"),
    [
        ("gzip", BODY, "not valid gzip"),  # declared but not done
        ("gzip", gzip.compress(BODY)[:-9], "ends before"),  # truncated
        ("deflate", gzip.compress(BODY), "not valid deflate"),
        ("deflate", zlib.compress(BODY) + b"junk", "after the end"),
        ("gzip", gzip.compress(BODY) + b"junk", "not valid gzip"),  # a second member that is not one
    ],
)
def test_data_that_is_not_what_the_coding_says_is_invalid_input(encoding: str, sent: bytes, says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        decode_content(sent, encoding, 1024)


def _receiver(body: bytes) -> Any:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def test_receive_body_decodes_small_and_large_bodies() -> None:
    assert await receive_body(_receiver(gzip.compress(BODY)), 1024, None, "gzip") == BODY
    large = os.urandom(200_000)  # incompressible: over the size that inflates in a thread
    assert await receive_body(_receiver(zlib.compress(large)), 300_000, None, "deflate") == large
    with pytest.raises(PayloadTooLarge):
        await receive_body(_receiver(zlib.compress(large)), 199_999, None, "deflate")


def test_many_tiny_gzip_members_are_refused_not_inflated_in_quadratic_time() -> None:
    """Regression (review): each member copied the rest of the body; 3 MB of empty members took a
    node 16 s of CPU and stalled its health probes."""
    many = gzip.compress(b"") * 150_000
    with pytest.raises(InvalidInput, match="more than 16 members"):
        decode_content(many, "gzip", 64 * 1024 * 1024)
    assert decode_content(gzip.compress(b"a") * 16, "gzip", 100) == b"a" * 16
