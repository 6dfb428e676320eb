"""What a run tells its user: a progress bar with loss and throughput, and per-epoch metrics in
``metrics.jsonl`` (one JSON object per epoch) and ``metrics.csv`` (the same, as a table)."""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from jaxseg.files import write_text


class RunLog:
    def __init__(self, workdir: Path, show_progress: bool = True, write_files: bool = True):
        self.workdir = workdir
        self.quiet = not show_progress
        self.write_files = write_files
        self.console = Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None
        self._last_time = None
        self._rate = 0.0

    def start(self, total_steps: int, done: int) -> None:
        if self.quiet:
            return
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.1f} slices/s"),
            TimeRemainingColumn(), console=self.console, transient=False)
        self.task = self.progress.add_task("train", total=total_steps, completed=done, loss=float("nan"),
                                           rate=0.0)
        self.progress.start()
        if done:
            self.console.print(f"resuming at step {done}")

    def step(self, step: int, loss: float, batch_size: int) -> None:
        now = time.perf_counter()
        if self._last_time is not None:
            rate = batch_size / max(now - self._last_time, 1e-9)
            # Smoothed, so one slow step (a checkpoint, a compile) does not dominate.
            self._rate = rate if self._rate == 0 else 0.9 * self._rate + 0.1 * rate
        self._last_time = now
        if self.progress is not None:
            self.progress.update(self.task, completed=step, loss=loss, rate=self._rate)

    def epoch(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """Show one epoch's record; rewrite both files from the whole (checkpointed) history, so
        a resumed run never repeats or loses a line."""
        if self.write_files:
            write_text(self.workdir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
            columns = list(dict.fromkeys(k for row in history for k in row))
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=columns)
            writer.writeheader()
            writer.writerows(history)
            write_text(self.workdir / "metrics.csv", buf.getvalue())
        if self.progress is not None:
            shown = {k: v for k, v in record.items() if k in ("epoch", "train_loss", "val_loss", "val_dice")
                     or k.startswith("val_dice_")}
            self.console.print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in shown.items()))
        self._last_time = None

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
