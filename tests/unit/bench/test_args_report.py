"""The argument types and the save step every bench scenario shares."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from bench.args import concurrency, duration, int_list
from bench.report import publish, save


def test_int_list_accepts_a_comma_list_in_range_and_refuses_the_rest() -> None:
    nodes = int_list(1, 8, "node counts")
    assert nodes("1, 2,4") == (1, 2, 4)
    for bad in ("", "1,x", "0", "9", "1,,9"):
        with pytest.raises(argparse.ArgumentTypeError):
            nodes(bad)
    assert concurrency("1,64") == (1, 64)
    with pytest.raises(argparse.ArgumentTypeError, match="concurrency"):
        concurrency("513")


@pytest.mark.parametrize("text", ["0", "-1", "60.5"])
def test_duration_refuses_out_of_range(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


def test_save_writes_where_asked_or_to_a_timestamped_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    console = Console(record=True, width=200)
    chosen = save({"errors": 0}, tmp_path / "x.json", "overhead", console)
    assert chosen == tmp_path / "x.json"
    assert json.loads(chosen.read_text()) == {"errors": 0}
    monkeypatch.chdir(tmp_path)
    default = save({"errors": 1}, None, "shard", console)
    assert default.parent == Path("bench-results")
    assert default.name.startswith("shard-")
    assert default.suffix == ".json"
    assert f"results: {default}" in console.export_text()


@pytest.mark.parametrize(("errors", "status"), [([], 0), (["node did not start"], 1)])
def test_publish_renders_saves_and_gives_the_exit_status(tmp_path: Path, errors: list[str], status: int) -> None:
    rendered: list[dict[str, object]] = []
    document = {"scenario": "x", "errors": errors}
    out = tmp_path / "x.json"
    code = publish(document, lambda doc, _: rendered.append(doc), out, "x", Console(file=io.StringIO()))
    assert code == status
    assert rendered == [document]
    assert json.loads(out.read_text()) == document
