"""Fixtures shared by the registry tests: a fresh registry, and every event it publishes."""

from __future__ import annotations

import pytest

from discovery.registry import NodeEvent, NodeRegistry


@pytest.fixture
def registry() -> NodeRegistry:
    return NodeRegistry()


@pytest.fixture
def events(registry: NodeRegistry) -> list[NodeEvent]:
    seen: list[NodeEvent] = []
    registry.subscribe(seen.append)
    return seen
