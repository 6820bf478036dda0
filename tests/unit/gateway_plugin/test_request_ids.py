"""Request ids: the caller's when sane, else 128 random bits that a host's random.seed() cannot repeat."""

from __future__ import annotations

import random
from typing import Any

from gateway_plugin.api.routing import scope_request_id


def test_a_hosts_seed_does_not_make_ids_repeat() -> None:
    random.seed(7)
    first = scope_request_id({}, None)
    random.seed(7)
    second = scope_request_id({}, None)
    assert first != second
    assert len(first) == 32
    assert int(first, 16) >= 0


def test_the_callers_sane_id_is_kept_and_a_bad_one_replaced() -> None:
    assert scope_request_id({}, "req-1.a:b") == "req-1.a:b"
    replaced = scope_request_id({}, "bad id with spaces")
    assert replaced != "bad id with spaces"
    assert len(replaced) == 32


def test_an_id_already_in_the_scope_is_kept() -> None:
    scope: dict[str, Any] = {}
    first = scope_request_id(scope, None)
    assert scope_request_id(scope, "another") == first
