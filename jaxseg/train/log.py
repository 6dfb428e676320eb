"""What a run tells its user: a progress bar with loss and throughput, per-epoch metrics in
``metrics.jsonl`` (one JSON object per epoch) and ``metrics.csv`` (the same, as a table), the loss
of every step in ``steps.csv``, and ``training_curves.png`` drawn from them after every epoch."""
from __future__ import annotations

import csv
import io
import json
import time
import warnings
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
        self.step_losses: list[tuple[int, float]] = []  # (global step, loss) of this run so far

    def start(self, total_steps: int, done: int) -> None:
        if self.write_files:  # a resumed run keeps the losses of the steps its checkpoint holds
            self.step_losses = [s for s in read_step_losses(self.workdir) if s[0] <= done]
            # Rows beyond the checkpoint (written before a kill) go now, not at the next flush:
            # the resumed run computes those steps again.
            self.flush_steps()
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

    def say(self, text: str) -> None:
        """One line for the user (stderr), unless the run is quiet."""
        if not self.quiet:
            self.console.print(text, highlight=False)

    def step(self, step: int, loss: float, batch_size: int) -> None:
        self.steps([(step, loss)], batch_size)

    def steps(self, losses: list[tuple[int, float]], batch_size: int) -> None:
        """``(step, loss)`` of several steps that finished since the last call (the loop fetches
        them from the devices together); the rate counts all of them."""
        if not losses:
            return
        now = time.perf_counter()
        if self._last_time is not None:
            rate = batch_size * len(losses) / max(now - self._last_time, 1e-9)
            # Smoothed, so one slow step (a checkpoint, a compile) does not dominate.
            self._rate = rate if self._rate == 0 else 0.9 * self._rate + 0.1 * rate
        self._last_time = now
        self.step_losses.extend(losses)
        if self.progress is not None:
            step, loss = losses[-1]
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
            self.flush_steps()
            self._write_curves(history)
        if self.progress is not None:
            shown = {k: v for k, v in record.items() if k in ("epoch", "train_loss", "val_loss", "val_dice")
                     or k.startswith("val_dice_")}
            self.console.print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in shown.items()))
        self._last_time = None

    def flush_steps(self) -> None:
        """Rewrite ``steps.csv`` with every step's loss so far (the loop calls it before each
        checkpoint, so the file always holds at least the checkpointed steps)."""
        if not self.write_files:
            return
        write_text(self.workdir / "steps.csv", "step,loss\n" + "".join(f"{s},{v!r}\n" for s, v in self.step_losses))

    def _write_curves(self, history: list[dict[str, Any]]) -> None:
        try:
            from jaxseg.report.figures import training_curves
            training_curves(history, self.workdir / "training_curves.png", step_losses=self.step_losses)
        except Exception as e:  # noqa: BLE001 -- a figure is never worth a training run
            warnings.warn(f"{self.workdir / 'training_curves.png'}: not drawn ({type(e).__name__}: {e})",
                          RuntimeWarning, stacklevel=2)

    def close(self) -> None:
        if self.step_losses:  # a run stopped mid-epoch keeps its last steps
            self.flush_steps()
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def read_step_losses(workdir: str | Path) -> list[tuple[int, float]]:
    """``(step, loss)`` pairs of ``steps.csv`` in a run folder; empty if there is none."""
    path = Path(workdir) / "steps.csv"
    if not path.is_file():
        return []
    out = []
    for row in csv.DictReader(io.StringIO(path.read_text())):
        try:
            out.append((int(row["step"]), float(row["loss"])))
        except (KeyError, TypeError, ValueError):
            continue  # a damaged line costs one point of a curve, not the run
    return out
