"""Explanation jobs, run one at a time by a single worker thread.

JAX already uses every core for one explanation, so jobs of all sessions wait in one FIFO queue
rather than competing; a page polls its job for its place in the queue and the steps done.
Progress is the count of steps `jaxseg.explain.run.explain` has reported through its ``say``
callback (it reports :data:`EXPLAIN_STEPS` of them) out of that number plus one for loading.
"""
from __future__ import annotations

import dataclasses
import queue
import secrets
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

from jaxseg.errors import JaxsegError

# read, segmented, Grad-CAM, MC dropout (or skipped), faithfulness, captions, report written
EXPLAIN_STEPS = 7

# Download keys of `explain`'s files -> what the page calls them, in the order it lists them.
FILE_LABELS = {
    "segmentation": "Segmentation (NIfTI)", "report": "Report (HTML)", "probabilities": "Probabilities (NIfTI)",
    "gradcam": "Grad-CAM (NIfTI)", "mc_mean": "MC-dropout mean (NIfTI)", "mc_variance": "MC-dropout variance (NIfTI)",
    "mc_entropy": "MC-dropout entropy (NIfTI)", "mc_mutual_information": "MC-dropout mutual information (NIfTI)",
    "summary": "Summary (JSON)",
}


@dataclasses.dataclass
class Job:
    """One explanation. ``work`` runs in the worker and returns ``{key: file}`` and a summary."""

    id: str
    folder: Path
    description: str
    work: Callable[["Job"], tuple[dict[str, Path], dict]]
    input: Path | None = None  # the case file explain reads (a copy of the uploads, or a dataset file)
    state: str = "queued"  # queued -> running -> done | failed
    steps: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None
    files: dict[str, Path] = dataclasses.field(default_factory=dict)
    summary: dict = dataclasses.field(default_factory=dict)
    created: float = dataclasses.field(default_factory=time.time)
    finished: float | None = None

    def say(self, message: str) -> None:
        self.steps.append(_without_folder(message, self.folder))

    @property
    def progress(self) -> float:
        if self.state == "done":
            return 1.0
        return min(len(self.steps) / (EXPLAIN_STEPS + 1), 0.99)

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")


def new_job(root: Path, description: str, work: Callable[[Job], tuple[dict[str, Path], dict]]) -> Job:
    job_id = secrets.token_hex(6)
    folder = root / job_id
    folder.mkdir(parents=True)
    return Job(job_id, folder, description, work)


class JobRunner:
    """A FIFO queue of jobs and the one daemon thread that runs them."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._waiting: list[Job] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="jaxseg-serve-jobs", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            self._waiting.append(job)
        self._queue.put(job)

    def position(self, job: Job) -> int:
        """How many jobs run before this one (0: it runs next or now)."""
        with self._lock:
            return self._waiting.index(job) if job in self._waiting else 0

    def stop(self) -> None:
        """Let the worker finish its current job and exit (jobs still waiting are dropped)."""
        with self._lock:
            for job in self._waiting:
                job.state, job.error = "failed", "the server stopped before this job ran"
            self._waiting.clear()
        self._queue.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            with self._lock:
                if job not in self._waiting:  # dropped by stop()
                    continue
                self._waiting.remove(job)
                job.state = "running"
            try:
                job.files, job.summary = job.work(job)
                job.state = "done"
            except JaxsegError as error:
                job.error, job.state = _without_folder(str(error), job.folder), "failed"
            except Exception as error:  # noqa: BLE001 - one job's bug must not stop the server
                traceback.print_exc(file=sys.stderr)
                job.error, job.state = f"internal error ({type(error).__name__}: {error}); see the server log", "failed"
            job.finished = time.time()


def _without_folder(text: str, folder: Path) -> str:
    """The server's folders are nobody's business: show `input/upload_flair.nii.gz`, not the path."""
    return text.replace(f"{folder}/", "").replace(str(folder), "job folder")
