"""DISTINFER_NODES_FILE: the YAML of CONTRACT §8, re-read within a second of a change."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from discovery.registry import NodeRegistry
from discovery.static import NodesFileError, NodesFileSource, StaticSource, parse_nodes_file


def test_the_contract_format_parses_with_only_url_required() -> None:
    specs = parse_nodes_file(
        """
nodes:
  - url: http://10.0.0.5:8001/
    node_id: gpu-1
    weight: 2
    labels: {zone: a}
  - url: http://10.0.0.6:8001
  - http://10.0.0.7:8001
"""
    )
    assert [s.url for s in specs] == ["http://10.0.0.5:8001", "http://10.0.0.6:8001", "http://10.0.0.7:8001"]
    assert specs[0].node_id == "gpu-1"
    assert specs[0].weight == 2.0
    assert dict(specs[0].labels) == {"zone": "a"}
    assert specs[1].node_id is None
    assert specs[1].weight == 1.0
    assert parse_nodes_file("") == []
    assert parse_nodes_file("nodes: []") == []


def test_label_values_are_the_text_written() -> None:
    """Regression: `gpus: 2` (an int to YAML) made the whole file invalid, so the gateway had no nodes;
    and YAML 1.1 types would change what is kept (1.10 -> 1.1, 0755 -> 493, no -> False)."""
    labels = "{gpus: 2, mem_gb: 1.5, version: 1.10, mode: 0755, fast: true, country: no, since: 2024-01-01}"
    [spec] = parse_nodes_file(f"nodes:\n  - url: http://a:1\n    weight: 0.5\n    labels: {labels}")
    assert dict(spec.labels) == {
        "gpus": "2",
        "mem_gb": "1.5",
        "version": "1.10",
        "mode": "0755",
        "fast": "true",
        "country": "no",
        "since": "2024-01-01",
    }
    assert spec.weight == 0.5


@pytest.mark.parametrize(
    "text",
    [
        "nodes:\n  - url: http://a:1\n    labels: {zone: [a, b]}",  # a label is one value
        "nodes: [",  # not YAML
        "- http://a:1",  # not a mapping
        "nodes:\n  - node_id: x",  # no url
        "nodes:\n  - url: ftp://a:1",  # not http
        "nodes:\n  - url: http://a:1\n    wieght: 2",  # a typo is an error, not ignored
        "nodes:\n  - url: http://a:1\n  - url: http://a:1/",  # twice
        "nodes:\n  - {url: 'http://a:1', node_id: x}\n  - {url: 'http://b:1', node_id: x}",  # one id, two nodes
        "nodes:\n  - url: http://a:1\n    weight: -1",
        "nodes:\n  - url: http://a:1\n    weight: .inf",  # infinite weights broke `weighted` (500s)
        "nodes:\n  - url: http://a:1\n    weight: 1e999",
        "nodes:\n  - url: http://a:1\n    weight: .nan",
        "hosts: []",
    ],
)
def test_a_bad_file_is_an_error_that_says_so(text: str) -> None:
    with pytest.raises(NodesFileError):
        parse_nodes_file(text)


async def wait_for(condition: object, timeout_s: float = 3.0) -> float:
    """Seconds until `condition()` holds; fails after `timeout_s`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not condition():  # type: ignore[operator]
        assert loop.time() - start < timeout_s, "condition not met in time"
        await asyncio.sleep(0.01)
    return loop.time() - start


@pytest.fixture
async def watched(tmp_path: Path) -> AsyncIterator[tuple[Path, NodeRegistry, NodesFileSource]]:
    path = tmp_path / "nodes.yaml"
    registry = NodeRegistry()
    source = NodesFileSource(path, poll_s=0.05)
    task = asyncio.create_task(source.run(registry))
    yield path, registry, source
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def urls(registry: NodeRegistry) -> list[str]:
    return sorted(node.url for node in registry.nodes())


def write(path: Path, text: str) -> None:
    """As editors and ConfigMaps do: a new file renamed over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


async def test_changes_are_followed_within_a_second_and_a_bad_edit_keeps_the_last_good(
    watched: tuple[Path, NodeRegistry, NodesFileSource],
) -> None:
    path, registry, source = watched
    await asyncio.wait_for(source.synced.wait(), 2)  # a missing file lists no nodes
    assert registry.nodes() == []
    write(path, "nodes:\n  - url: http://a:1\n  - url: http://b:1\n")
    assert await wait_for(lambda: urls(registry) == ["http://a:1", "http://b:1"]) < 1.0
    write(path, "nodes:\n  - url: http://b:1\n    weight: 5\n")
    assert await wait_for(lambda: urls(registry) == ["http://b:1"]) < 1.0
    node = registry.get("http://b:1")
    assert node is not None
    assert node.spec.weight == 5.0
    assert node.source == "file"
    write(path, "nodes: [\n")
    await asyncio.sleep(0.3)
    assert urls(registry) == ["http://b:1"]
    path.write_text("nodes:\n  - url: http://c:1\n", encoding="utf-8")  # in place, not renamed
    assert await wait_for(lambda: urls(registry) == ["http://c:1"]) < 1.0
    path.unlink()
    assert await wait_for(lambda: urls(registry) == []) < 1.0


async def test_the_env_list_is_listed_once_and_the_source_finishes() -> None:
    registry = NodeRegistry()
    source = StaticSource(["http://a:1", "http://b:2/"])
    await asyncio.wait_for(source.run(registry), 1)
    assert source.synced.is_set()
    assert urls(registry) == ["http://a:1", "http://b:2"]
