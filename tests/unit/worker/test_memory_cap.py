"""A node's memory cap: models that would take it over the cap are refused, with the reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from worker.bundled import bundled_models
from worker.errors import ModelNotReady
from worker.repository import ModelRepository, model_bytes

DIGITS = bundled_models() / "digits"


def _repo(tmp_path: Path, *names: str) -> Path:
    for name in names:
        shutil.copytree(DIGITS, tmp_path / name)
        config = (tmp_path / name / "config.json").read_text("utf-8").replace('"digits"', f'"{name}"')
        (tmp_path / name / "config.json").write_text(config, "utf-8")
    return tmp_path


def test_models_load_until_the_cap_and_the_rest_say_why(tmp_path: Path) -> None:
    size = model_bytes(DIGITS)
    repository = ModelRepository.load(_repo(tmp_path, "a", "b", "c"), threads=1, memory_cap_bytes=2 * size + 10)
    assert [model.config.name for model in repository] == ["a", "b"]
    assert repository.memory_used_bytes == 2 * size
    assert "over the node's memory cap" in repository.unavailable["c"]
    assert "already held by 2 model(s)" in repository.unavailable["c"]
    with pytest.raises(ModelNotReady, match="memory cap"):
        repository.get("c")
    repository.close()


def test_without_a_cap_everything_loads(tmp_path: Path) -> None:
    repository = ModelRepository.load(_repo(tmp_path, "a", "b"), threads=1)
    assert len(list(repository)) == 2
    assert repository.memory_cap_bytes is None
    repository.close()
