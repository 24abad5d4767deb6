"""The tiles progress bar of ``run`` and ``demo`` (done/total, ETA, seconds per tile).

Fed by the flow's progress events (``flows.survey.progress_listener``); on stderr, so ``--json``
output on stdout stays parseable.
"""

from __future__ import annotations

from typing import Any


class TileProgressBar:
    """Rich progress bar over the flow's ``Progress`` events; does nothing when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress: Any = None
        self.task: Any = None
        self.seconds: list[float] = []

    def __enter__(self) -> "TileProgressBar":
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.progress = Progress(
                TextColumn("[bold]tiles"), BarColumn(), MofNCompleteColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), TimeElapsedColumn(), TextColumn("{task.fields[per_tile]}"),
                console=Console(stderr=True), transient=False,
            )
            self.progress.__enter__()
        return self

    def __call__(self, event: Any) -> None:
        if self.progress is None:
            return
        if event.kind == "planned":
            self.task = self.progress.add_task("tiles", total=event.total, completed=event.done,
                                               per_tile=f"{event.reused} reused" if event.reused else "")
        elif event.kind == "tile" and self.task is not None:
            if event.seconds is not None:
                self.seconds.append(event.seconds)
            mean = sum(self.seconds) / len(self.seconds) if self.seconds else 0.0
            self.progress.update(self.task, completed=event.done,
                                 per_tile=f"{event.seconds or 0:.1f} s/tile (mean {mean:.1f})")

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)
