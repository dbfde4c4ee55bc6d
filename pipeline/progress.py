"""What the user sees while a recipe builds: a live line per running stage, then a table."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from rich.console import Console

    from pipeline.executor import NodeResult
    from pipeline.plan import Node

STYLES = {"ran": "green", "cached": "cyan", "failed": "bold red", "skipped": "yellow",
          "lost": "magenta"}


class LiveDisplay:
    """Spinner per running stage on a terminal; one plain line per finished stage otherwise."""

    def __init__(self, console: Console, live: bool) -> None:
        self.console = console
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskID] = {}
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                  TimeElapsedColumn(), console=console, transient=True,
                                  disable=not (live and console.is_terminal))

    def __enter__(self) -> LiveDisplay:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def started(self, node: Node) -> None:
        with self._lock:
            self._tasks[node.name] = self._progress.add_task(node.name, total=None)

    def status(self, node: Node, message: str) -> None:
        with self._lock:
            if node.name in self._tasks:
                self._progress.update(self._tasks[node.name],
                                      description=f"{node.name}: {message}")

    def finished(self, result: NodeResult) -> None:
        name = result.node.name
        with self._lock:
            task = self._tasks.pop(name, None)
            if task is not None:
                self._progress.remove_task(task)
        style = STYLES[result.status]
        note = f" [yellow]{result.note}[/]" if result.note else ""
        self.console.print(f"[{style}]{result.status:>7}[/] {name} "
                           f"[dim]{result.seconds:.2f}s {(result.key or '')[:12]}[/]{note}")


def summary_table(results: dict[str, NodeResult], title: str) -> Table:
    table = Table(title=title)
    for column in ("stage", "target", "status", "seconds", "key"):
        table.add_column(column, justify="right" if column == "seconds" else "left")
    for result in results.values():
        node = result.node
        table.add_row(node.stage, node.target or "-",
                      f"[{STYLES[result.status]}]{result.status}[/]",
                      f"{result.seconds:.2f}", (result.key or "")[:12])
    return table
