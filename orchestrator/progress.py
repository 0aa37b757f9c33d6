"""Live rich display: cells done/remaining and, per running cell, its phase and requests in flight."""

from __future__ import annotations

import threading

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


class _CellTask:
    def __init__(self, display: "GridProgress", label: str) -> None:
        self.display, self.label = display, label
        self.task = display.progress.add_task(f"  {label}", total=None, status="queued")

    def phase(self, text: str) -> None:
        self.display.progress.update(self.task, status=text)

    def requests(self, done: int, total: int, in_flight: int) -> None:
        self.display.progress.update(
            self.task, total=total, completed=done, status=f"replaying, {in_flight} in flight"
        )

    def close(self) -> None:
        self.display.progress.remove_task(self.task)


class GridProgress:
    """``with GridProgress(n) as p: cp = p.cell_started(label); ...; p.cell_done(cp, line)``."""

    def __init__(self, num_cells: int, enabled: bool = True, console: Console | None = None) -> None:
        self.console = console or Console()
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
            console=self.console, disable=not enabled, transient=False,
        )  # fmt: skip
        self.total = num_cells
        self.cells = self.progress.add_task("cells", total=num_cells, status="")
        self._lock = threading.Lock()

    def __enter__(self) -> "GridProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def cell_started(self, label: str) -> _CellTask:
        with self._lock:
            return _CellTask(self, label)

    def cell_done(self, cell: _CellTask | None, line: str) -> None:
        with self._lock:
            if cell is not None:
                cell.close()
            self.progress.advance(self.cells)
            self.progress.console.print(line)

    def add_cells(self, n: int) -> None:
        """``n`` more cells to run (retries)."""
        with self._lock:
            self.total += n
            self.progress.update(self.cells, total=self.total)

    def print(self, line: str) -> None:
        self.progress.console.print(line)
