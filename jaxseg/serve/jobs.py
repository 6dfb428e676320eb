"""Explanation jobs: a bounded FIFO queue, one worker thread, and a ``job.json`` per job on disk.

JAX already uses every core for one explanation, so jobs of all sessions wait in one queue rather
than competing. The queue is bounded (``max_waiting``): a full queue refuses new jobs with
:class:`QueueFull` instead of growing without limit. Progress is the count of steps
`jaxseg.explain.run.explain` has reported through its ``say`` callback (it reports
:data:`EXPLAIN_STEPS` of them) out of that number plus one for loading; every change bumps
``Job.version``, which the server-sent-events route watches.

Each job's state is written to ``<job folder>/job.json`` (atomically) whenever it changes, so a
restarted server with the same working folder shows finished jobs and their files again; a job
that was queued or running when the process died (``kill -9``, a power cut) is read back as
``interrupted`` and none of its files is offered (:func:`load_job`).
"""
from __future__ import annotations

import dataclasses
import json
import queue
import secrets
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

from jaxseg.errors import JaxsegError
from jaxseg.files import write_text

# read, segmented, Grad-CAM, Grad-CAM of the compared layers, modality attribution, MC dropout
# (or skipped), slices to review, calibration (with ground truth), curves, per-slice faithfulness,
# captions, report written: at most 12 (fewer without MC dropout, ground truth or compared layers).
EXPLAIN_STEPS = 12
STATE_FILE = "job.json"
ACTIVE_STATES = ("queued", "running")

# Download keys of `explain`'s files -> what the page calls them, in the order it lists them.
FILE_LABELS = {
    "segmentation": "Segmentation (NIfTI)", "report": "Report (HTML)", "probabilities": "Probabilities (NIfTI)",
    "gradcam": "Grad-CAM (NIfTI)", "mc_mean": "MC-dropout mean (NIfTI)", "mc_variance": "MC-dropout variance (NIfTI)",
    "mc_entropy": "MC-dropout entropy (NIfTI)", "mc_mutual_information": "MC-dropout mutual information (NIfTI)",
    "summary": "Summary (JSON)",
}


def file_keys(files) -> list[str]:
    """The download keys of a job's files: those of :data:`FILE_LABELS` in its order, then the
    rest (the per-sequence attribution maps ``ig_<modality>``, attention maps) by name."""
    return [k for k in FILE_LABELS if k in files] + sorted(k for k in files if k not in FILE_LABELS)


def file_label(key: str, path: Path | None = None) -> str:
    """What the page calls a file of ``explain``; ``path`` (its name) gives the file kind: NIfTI
    for a volume's maps, PNG and NumPy (``.npy``) for a 2D slice's."""
    from jaxseg.explain.captions import MODALITY_NAMES
    if key in FILE_LABELS:
        label = FILE_LABELS[key]
    elif key.startswith("ig_"):
        label = f"Whole-tumor attribution, {MODALITY_NAMES.get(key[3:], key[3:])} (NIfTI)"
    elif key == "rollout":
        label = "Attention rollout (NIfTI)"
    elif key.startswith("att"):
        label = f"Attention gate {key[3:]} (NIfTI)"
    else:
        label = f"{key} (NIfTI)"
    kind = FILE_KINDS.get(path.suffix.lower(), ("", "NIfTI"))[1] if path is not None else "NIfTI"
    return label.replace("(NIfTI)", f"({kind})")


# A download's media type and what the page calls its kind, by the file's ending (.nii.gz: .gz).
FILE_KINDS = {".gz": ("application/gzip", "NIfTI"), ".nii": ("application/octet-stream", "NIfTI"),
              ".png": ("image/png", "PNG"), ".npy": ("application/octet-stream", "NumPy"),
              ".html": ("text/html", "HTML"), ".json": ("application/json", "JSON")}


def media_type(path: Path) -> str:
    return FILE_KINDS.get(path.suffix.lower(), ("application/octet-stream", ""))[0]


class QueueFull(Exception):
    """The runner already holds ``max_waiting`` jobs that have not started."""


@dataclasses.dataclass(eq=False)
class Job:
    """One explanation. ``work`` runs in the worker and returns ``{key: file}`` and a summary."""

    id: str
    folder: Path
    description: str
    work: Callable[["Job"], tuple[dict[str, Path], dict]] | None
    input: Path | None = None  # the case file explain reads (a copy of the uploads, or a dataset file)
    state: str = "queued"  # queued -> running -> done | failed; interrupted: read back after a crash
    steps: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None
    files: dict[str, Path] = dataclasses.field(default_factory=dict)
    summary: dict = dataclasses.field(default_factory=dict)
    created: float = dataclasses.field(default_factory=time.time)
    finished: float | None = None
    version: int = 0  # bumped on every change (steps, state), for server-sent events

    def say(self, message: str) -> None:
        self.steps.append(_without_folder(message, self.folder))
        self.changed()

    def changed(self) -> None:
        self.version += 1
        self.save()

    @property
    def progress(self) -> float:
        if self.state == "done":
            return 1.0
        return min(len(self.steps) / (EXPLAIN_STEPS + 1), 0.99)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def save(self) -> None:
        """Write ``job.json`` (temporary name, then rename: a crash leaves the previous one)."""
        record = {"id": self.id, "description": self.description, "state": self.state, "steps": self.steps,
                  "error": self.error, "created": self.created, "finished": self.finished,
                  "summary": self.summary if self.state == "done" else {},
                  "files": {k: str(p.relative_to(self.folder)) for k, p in self.files.items()}
                  if self.state == "done" else {}}
        write_text(self.folder / STATE_FILE, json.dumps(record))


def new_job(root: Path, description: str, work: Callable[[Job], tuple[dict[str, Path], dict]]) -> Job:
    job_id = secrets.token_hex(6)
    folder = root / job_id
    folder.mkdir(parents=True)
    job = Job(job_id, folder, description, work)
    job.save()
    return job


def load_job(folder: Path) -> Job | None:
    """The job a previous server process left in ``folder``, or None if it left no readable record.

    A job that was still queued or running is marked ``interrupted`` (and saved so), and its
    partial outputs are removed: only a job recorded as done offers files, and only files that
    exist inside its folder.
    """
    try:
        record = json.loads((folder / STATE_FILE).read_text())
        job = Job(str(record["id"]), folder, str(record["description"]), None, state=str(record["state"]),
                  steps=[str(s) for s in record["steps"]], error=record.get("error"),
                  created=float(record["created"]), finished=record.get("finished"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if job.id != folder.name:
        return None
    if job.state in ACTIVE_STATES:
        was = job.state
        job.state, job.error, job.finished = "interrupted", (
            f"the server stopped while this job was {was}; start it again"), time.time()
        shutil.rmtree(folder / "out", ignore_errors=True)
        job.save()
    elif job.state == "done":
        files = {str(k): (folder / v).resolve() for k, v in dict(record.get("files") or {}).items()}
        if not all(p.is_file() and p.is_relative_to(folder.resolve()) for p in files.values()):
            job.state, job.error = "failed", "some of this job's files are gone from the server's folder"
        else:
            job.files, job.summary = files, dict(record.get("summary") or {})
    return job


class JobRunner:
    """A bounded FIFO queue of jobs and the one daemon thread that runs them."""

    def __init__(self, max_waiting: int = 8) -> None:
        self.max_waiting = max_waiting
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._waiting: list[Job] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="jaxseg-serve-jobs", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises QueueFull (and leaves the job alone) when the queue is full."""
        with self._lock:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull
            self._waiting.append(job)
        self._queue.put(job)

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def position(self, job: Job) -> int:
        """How many jobs run before this one (0: it runs next or now)."""
        with self._lock:
            return self._waiting.index(job) if job in self._waiting else 0

    def stop(self) -> None:
        """Let the worker finish its current job and exit (jobs still waiting are dropped)."""
        with self._lock:
            dropped = list(self._waiting)
            self._waiting.clear()
        for job in dropped:
            job.state, job.error = "failed", "the server stopped before this job ran"
            job.changed()
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
            job.changed()
            try:
                files, summary = job.work(job)
                job.files, job.summary, job.state = dict(files), summary, "done"
            except JaxsegError as error:
                job.error, job.state = _without_folder(str(error), job.folder), "failed"
            except MemoryError:
                job.error, job.state = "out of memory: try fewer MC-dropout passes or a smaller volume", "failed"
            except Exception as error:  # noqa: BLE001 - one job's bug must not stop the server
                traceback.print_exc(file=sys.stderr)
                job.error, job.state = f"internal error ({type(error).__name__}: {error}); see the server log", "failed"
            job.finished = time.time()
            job.changed()  # after the files: a record that says done names only complete files


def _without_folder(text: str, folder: Path) -> str:
    """The server's folders are nobody's business: show `input/upload_flair.nii.gz`, not the path."""
    return text.replace(f"{folder}/", "").replace(str(folder), "job folder")
