"""Static discovery: base URLs from `DISTINFER_NODES`, and a YAML file re-read when it changes.

The file (`DISTINFER_NODES_FILE`, CONTRACT §8)::

    nodes:
      - url: http://10.0.0.5:8001        # required
        node_id: gpu-1                   # optional
        weight: 2                        # optional, default 1
        labels: {zone: a}                # optional

It is polled (stat every 0.2 s, read only when its mtime, size or inode moved), which works on
any filesystem and through the symlink swaps of a Kubernetes ConfigMap. A file that does not
parse keeps the last good listing; a missing or empty one lists no nodes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from discovery.node import NodeSpec
from discovery.registry import NodeRegistry

__all__ = ["NodesFileError", "NodesFileSource", "StaticSource", "parse_nodes_file"]

log = logging.getLogger(__name__)


class StaticSource:
    """The fixed list of `DISTINFER_NODES`: listed once, then nothing more to watch."""

    name = "static"

    def __init__(self, urls: Sequence[str]) -> None:
        self._specs = [NodeSpec(url=url) for url in urls]
        self.synced = asyncio.Event()

    async def run(self, registry: NodeRegistry) -> None:
        registry.reset(self.name, self._specs)
        self.synced.set()


class NodesFileError(ValueError):
    pass


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    node_id: str | None = Field(default=None, min_length=1, max_length=128)  # the registry checks it
    weight: float = Field(default=1.0, ge=0, le=1_000_000, allow_inf_nan=False)  # as the admin API's
    labels: dict[str, str] = {}


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nodes: list[_Entry | str] = []


def parse_nodes_file(text: str) -> list[NodeSpec]:
    """The node specs a nodes file lists; NodesFileError says what is wrong with a bad one."""
    try:
        # Every scalar as the text written (BaseLoader: no types, nothing constructed): labels are
        # text, and YAML 1.1 would turn `gpus: 2` into an int (a whole file refused), `version: 1.10`
        # into 1.1, `mode: 0755` into 493 and `country: no` into False. pydantic reads `weight`.
        raw: Any = yaml.load(text, Loader=yaml.BaseLoader)  # noqa: S506 (BaseLoader constructs no objects)
    except yaml.YAMLError as exc:
        raise NodesFileError(f"not YAML: {exc}") from exc
    if raw is None:
        return []
    try:
        parsed = _File.model_validate(raw)
        specs = [
            NodeSpec(url=entry)
            if isinstance(entry, str)
            else NodeSpec(url=entry.url, node_id=entry.node_id, weight=entry.weight, labels=entry.labels)
            for entry in parsed.nodes
        ]
    except (ValidationError, ValueError) as exc:
        raise NodesFileError(str(exc)) from exc
    urls = [spec.url for spec in specs]
    if len(set(urls)) != len(urls):
        raise NodesFileError("a node URL is listed twice")
    ids = [spec.node_id for spec in specs if spec.node_id is not None]
    if len(set(ids)) != len(ids):
        raise NodesFileError("a node_id is listed twice")
    return specs


class NodesFileSource:
    name = "file"

    def __init__(self, path: Path, *, poll_s: float = 0.2) -> None:
        self._path = path
        self._poll_s = poll_s
        self.synced = asyncio.Event()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self._path)  # follows symlinks: a ConfigMap swap shows as a new inode
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def _read(self) -> list[NodeSpec]:
        try:
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise NodesFileError(f"cannot read: {exc}") from exc
        return parse_nodes_file(text)

    async def run(self, registry: NodeRegistry) -> None:
        seen: tuple[int, int, int] | str | None = "never"
        while True:
            signature = self._signature()
            if signature != seen:
                seen = signature
                try:
                    specs = await asyncio.to_thread(self._read)
                except NodesFileError as exc:
                    log.error("nodes file %s ignored, keeping the last good listing: %s", self._path, exc)
                else:
                    if signature is None:
                        log.warning("nodes file %s does not exist: no nodes from it", self._path)
                    registry.reset(self.name, specs)
                self.synced.set()
            await asyncio.sleep(self._poll_s)
