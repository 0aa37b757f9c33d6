"""When a real server ran, read from its own log: vLLM's records carry a time stamp (one-second
resolution), from the API server's first record to the first ``[shutdown]`` record of its stop. Tests
use it to show that two cells' servers ran at the same time."""

from __future__ import annotations

import re
from datetime import datetime

# e.g. "(APIServer pid=4466) INFO 12-06 16:52:26 [api_utils.py:347] ..."
_STAMP = re.compile(r"^(?:\(\w+ pid=\d+\) )?(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) (\d\d-\d\d \d\d:\d\d:\d\d) \[")


def running_interval(log: str) -> tuple[datetime, datetime]:
    """(first record, first shutdown record) of a vLLM server log."""
    stamps = [(m.group(1), line) for line in log.splitlines() if (m := _STAMP.match(line))]
    shutdown = next((s for s, line in stamps if "[shutdown]" in line), None)
    assert stamps and shutdown, f"no time-stamped start and [shutdown] records in the server log:\n{log[-2000:]}"
    year = datetime.now().year  # the records have none; only their order matters here
    return tuple(datetime.strptime(f"{year}-{s}", "%Y-%m-%d %H:%M:%S") for s in (stamps[0][0], shutdown))


def ran_at_once(logs: list[str]) -> bool:
    """The servers' running intervals overlap: the last to start started strictly before the first to
    stop began its shutdown (strictly: at one-second resolution, back-to-back servers may share a second)."""
    intervals = [running_interval(text) for text in logs]
    return max(start for start, _ in intervals) < min(stop for _, stop in intervals)
