"""The web app's state and rules, without HTTP: settings, catalog, sessions, the job queue and
the predictor cache. `jaxseg.serve.web` puts routes on it, `jaxseg.serve.server` runs it on uvicorn.

Every refusal a client can cause is a :class:`Refused` with its HTTP status (or a JaxsegError,
answered 400); both carry one line for the page to show.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from jaxseg.errors import JaxsegError
from jaxseg.serve import catalog, jobs, predictors, sessions, slices

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_MC_SAMPLES = 50
DEFAULT_MC_SAMPLES = 10  # a job request without mc_samples; also the page's initial value


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 7860  # 0: any free port (the URL printed says which)
    checkpoints: tuple[Path, ...] = ()  # run folders or folders of runs; () = the default models
    data: Path | None = None  # a dataset folder whose cases the page lists
    workdir: Path | None = None  # sessions, uploads and results; None = a temporary folder, removed at exit
    max_upload_mb: float = 512.0
    max_sessions: int = 100  # live sessions; a new client beyond them gets 503
    session_ttl: float = 4 * 3600.0  # seconds without a request before a session and its files go
    max_queue: int = 8  # jobs waiting (all sessions); more get 429
    max_jobs_per_session: int = 1  # queued or running jobs of one session; more get 429
    predictor_cache: int = 2  # restored, compiled models kept between jobs
    max_connections: int = 500  # open connections and requests at once (uvicorn limit_concurrency); more get 503
    keep_alive: float = 5.0  # seconds an idle connection stays open (also before its first request)
    body_timeout: float = 30.0  # seconds a request body may pause before the request is dropped (408)
    allowed_hosts: tuple[str, ...] = ()  # extra Host names to answer (a reverse proxy's public name)
    verbose: bool = False  # log every request

    @property
    def host_names(self) -> tuple[str, ...] | None:
        """The Host header names answered, or None for any (bound to a non-loopback address
        without --allowed-host)."""
        if self.host in LOOPBACK:
            return (*LOOPBACK, *self.allowed_hosts)
        return tuple(self.allowed_hosts) or None


class Refused(Exception):
    """A request the app will not do: an HTTP status and one line saying why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class App:
    """Everything the routes share. ``close()`` stops the worker and tidies the working folder."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.checkpoints = {c.id: c for c in catalog.find_checkpoints(settings.checkpoints)}
        self.cases = catalog.find_dataset_cases(settings.data)
        self.own_workdir = settings.workdir is None
        self.workdir = (Path(tempfile.mkdtemp(prefix="jaxseg-serve-")) if self.own_workdir
                        else Path(settings.workdir)).absolute()
        self.sessions = sessions.SessionStore(self.workdir / "sessions", settings.max_sessions, settings.session_ttl)
        self.restored_sessions = self.sessions.load(jobs.load_job)
        self.runner = jobs.JobRunner(settings.max_queue)
        self.predictors = predictors.PredictorCache(settings.predictor_cache)
        self.max_upload_bytes = int(settings.max_upload_mb * 1024 * 1024)
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, name="jaxseg-serve-sessions", daemon=True)
        self._sweeper.start()

    # ----------------------------------------------------------------------------- sessions
    def session(self, token: str | None) -> sessions.Session | None:
        return self.sessions.get(token)

    def new_session(self) -> tuple[sessions.Session, str]:
        try:
            return self.sessions.create()
        except sessions.SessionsFull:
            raise Refused(503, f"the server has as many sessions as it allows ({self.settings.max_sessions}, "
                               "jaxseg serve --max-sessions); try again later") from None

    def _sweep(self) -> None:
        interval = min(60.0, max(0.05, self.settings.session_ttl / 4))
        while not self._stop.wait(interval):
            self.sessions.sweep()

    # ----------------------------------------------------------------------------- answers
    def info(self, session: sessions.Session | None) -> dict[str, Any]:
        uploads, session_jobs = {}, []
        if session is not None:
            with session.lock:  # another request of this session may be adding an upload or a job
                uploads, session_jobs = dict(session.uploads), list(session.jobs.values())
        return {"checkpoints": [c.describe() for c in self.checkpoints.values()],
                "message": None if self.checkpoints else catalog.NO_MODEL, "data": bool(self.cases),
                "data_root": str(self.settings.data) if self.settings.data else None,
                "max_upload_bytes": self.max_upload_bytes, "slots": list(sessions.SLOTS),
                "uploads": {slot: u.describe() for slot, u in uploads.items()},
                "slice_slots": list(slices.SLICE_SLOTS),
                "jobs": [self.job_status(j) for j in sorted(session_jobs, key=lambda j: j.created)]}

    def job_status(self, job: jobs.Job) -> dict[str, Any]:
        status = {"id": job.id, "description": job.description, "state": job.state, "steps": list(job.steps),
                  "progress": job.progress, "error": job.error, "queue_position": self.runner.position(job)}
        if job.state == "done":
            s = job.summary
            status["result"] = {
                "case": s.get("case"), "caption": s.get("caption"), "volumes_ml": s.get("volumes_ml"),
                "areas_px": s.get("areas_px"),
                "faithfulness_auc": s.get("faithfulness_auc"), "report_url": f"/api/jobs/{job.id}/report",
                "files": [{"key": k, "label": jobs.file_label(k, job.files[k]), "name": job.files[k].name,
                           "url": f"/api/jobs/{job.id}/files/{k}"} for k in jobs.file_keys(job.files)]}
        return status

    # ----------------------------------------------------------------------------- jobs
    def check_job_request(self, session: sessions.Session | None, request: dict[str, Any]):
        """Check a job request; returns (checkpoint, settings, prepare, description). Raises
        JaxsegError / Refused saying what is wrong (before any session or folder is made)."""
        from jaxseg.explain.run import ExplainSettings

        if not self.checkpoints:
            raise Refused(409, catalog.NO_MODEL)
        checkpoint = self.checkpoints.get(str(request.get("checkpoint")))
        if checkpoint is None:
            raise JaxsegError("choose a model from the list")
        mc_samples = request.get("mc_samples", DEFAULT_MC_SAMPLES)
        if not isinstance(mc_samples, int) or isinstance(mc_samples, bool) or not 1 <= mc_samples <= MAX_MC_SAMPLES:
            raise JaxsegError(f"MC-dropout passes must be a whole number from 1 to {MAX_MC_SAMPLES}")
        regions = checkpoint.describe()["regions"]
        targets = ["mean", "predicted", *regions, *(f"predicted:{r}" for r in regions)]
        target = request.get("target", "mean")
        if target not in targets:
            raise JaxsegError(f"Grad-CAM target must be one of {', '.join(targets)}")
        settings = ExplainSettings(mc_samples=mc_samples, target=target)
        if checkpoint.input == "slice":
            return (checkpoint, settings, *self._slice_source(session, checkpoint, request))
        if request.get("source") == "case":
            case = self.cases.get(str(request.get("case")))
            if case is None:
                raise JaxsegError("choose a case from the list")
            missing = [m for m in checkpoint.modalities if m not in case.images]
            if missing:
                raise JaxsegError(f"case {case.case_id} has no {', '.join(missing)} image, which this model needs")
            # One of the case's own files: its siblings make the case whatever the folder layout.
            prepare: Callable[[sessions.Session, jobs.Job], Path] = (
                lambda session, job: case.images[checkpoint.modalities[0]])
            description = f"dataset case {case.case_id}"
        else:
            if session is None:
                raise JaxsegError(f"this model needs {', '.join(checkpoint.modalities)}; upload them first")
            sessions.require(session, checkpoint.modalities)
            names = [session.uploads[m].name for m in checkpoint.modalities]
            prepare = lambda session, job: sessions.case_folder(session, checkpoint.modalities, job.folder / "input")
            description = "uploaded " + ", ".join(names)
        return checkpoint, settings, prepare, description

    def _slice_source(self, session: sessions.Session | None, checkpoint: catalog.Checkpoint,
                      request: dict[str, Any]) -> tuple[Callable[[sessions.Session, jobs.Job], Path], str]:
        """(prepare, description) of a job of a model that reads one 2D slice: the session's
        ``slice`` upload (and its ``slice_mask``)."""
        if request.get("source") == "case":
            raise JaxsegError(f"{checkpoint.run.name} reads one 2D slice (.mat, PNG or TIFF); the dataset's cases "
                              "are volumes: upload a slice instead")
        names = [u.name for u in slices.used_uploads(sessions.uploads_of(session))]
        return ((lambda session, job: slices.slice_folder(sessions.uploads_of(session), checkpoint.mask_suffix,
                                                          job.folder / "input")),
                "uploaded slice " + ", ".join(names))

    def start_job(self, session: sessions.Session, checked) -> jobs.Job:
        """Queue a checked request (:meth:`check_job_request`) for ``session``. Raises Refused 429
        when the session or the server has as many jobs waiting as it allows."""
        from jaxseg.explain.run import explain

        checkpoint, settings, prepare, description = checked

        def work(job: jobs.Job) -> tuple[dict[str, Path], dict]:
            job.say(f"loading the model {checkpoint.label}")
            predictor = self.predictors.get(checkpoint.run, settings.batch_size)
            result = explain(job.input, checkpoint.run, job.folder / "out", settings, say=job.say, predictor=predictor)
            return {**result.files, "report": result.report}, result.summary

        limit = self.settings.max_jobs_per_session
        with session.lock:  # two clicks at once must not start two jobs
            active = sum(j.active for j in session.jobs.values())
            if active >= limit:
                raise Refused(429, "your previous job has not finished; wait for it before starting another" if limit == 1
                              else f"you have {active} jobs queued or running, as many as one session may "
                                   "(jaxseg serve --max-jobs-per-session); wait for one to finish")
            if self.runner.waiting() >= self.settings.max_queue:
                raise self._queue_full()
            job = jobs.new_job(session.folder / "jobs", f"{description} · model {checkpoint.run.name}", work)
            try:
                job.input = prepare(session, job)  # copied now: later uploads do not change a queued job
                self.runner.submit(job)
            except jobs.QueueFull:
                shutil.rmtree(job.folder, ignore_errors=True)
                raise self._queue_full() from None
            except BaseException:
                shutil.rmtree(job.folder, ignore_errors=True)
                raise
            session.jobs[job.id] = job
            session.save()  # its last use, as a server restarted after a crash will see it
        return job

    def _queue_full(self) -> Refused:
        return Refused(429, f"the server's queue is full ({self.settings.max_queue} jobs waiting, jaxseg serve "
                            "--max-queue); try again in a few minutes")

    def close(self) -> None:
        """Stop the worker (a running job is abandoned), remove expired sessions, and the whole
        working folder if it is the app's own temporary one."""
        self._stop.set()
        self.runner.stop()
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            self.sessions.close()
