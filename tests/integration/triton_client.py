"""tritonclient's HTTP client for the tests that use the reference v2 client, closed after use."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

httpclient = pytest.importorskip("tritonclient.http")


@contextlib.contextmanager
def triton_client(base_url: str) -> Iterator[Any]:
    """A client for `base_url` (http://host:port[/prefix]), closed after the block (an open one leaks its socket)."""
    client = httpclient.InferenceServerClient(url=base_url.removeprefix("http://"), connection_timeout=10)
    try:
        yield client
    finally:
        client.close()
