"""`bench.hop_profile`: perf's report read into CPU per request, on a real recording when perf can sample here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.hop_profile import Profile, _perf_usable, _report, parse_report, per_request_us


def test_shares_of_the_samples_become_microseconds_per_request() -> None:
    profile = Profile("p", cpu_ns=2_000_000, requests=10, by_object={}, by_symbol={})  # 200 µs per request
    assert per_request_us(profile, {"libpython": 75.0, "[kernel]": 25.0}) == {"libpython": 150.0, "[kernel]": 50.0}


def test_rows_and_the_event_count_are_read_and_comment_lines_skipped() -> None:
    text = "\n".join(
        [
            "# Event count (approx.): 123456",
            "#    12.50%  not a row: a comment",
            "    60.00%  libpython3.11.so.1.0",
            "    40.00%  [kernel.kallsyms]   ",
        ]
    )
    assert parse_report(text) == (123456, {"libpython3.11.so.1.0": 60.0, "[kernel.kallsyms]": 40.0})


@pytest.mark.skipif(_perf_usable() is not None, reason=f"perf cannot sample here: {_perf_usable()}")
def test_a_busy_python_process_is_mostly_the_interpreter(tmp_path: Path) -> None:
    data = tmp_path / "busy.data"
    busy = [sys.executable, "-c", "total = 0\nfor i in range(3_000_000): total += i"]
    subprocess.run(["perf", "record", "-q", "-F", "999", "-o", str(data), "--", *busy], check=True)
    cpu_ns, by_object = _report(data, "dso")
    assert cpu_ns > 10_000_000  # the loop ran for tens of ms at least
    interpreter = sum(share for name, share in by_object.items() if "python" in name)
    assert interpreter > 50.0, by_object
    assert abs(sum(by_object.values()) - 100.0) < 1.0


def test_a_report_of_two_events_is_refused() -> None:
    """Each event's shares add up to 100 %: mixed, the µs per request would be wrong."""
    text = "# Event count (approx.): 10\n    100.00%  a\n# Event count (approx.): 20\n    100.00%  b\n"
    with pytest.raises(ValueError, match="more than one event"):
        parse_report(text)
