"""The web app: a standard-library HTTP server, one static page and a small JSON API.

Routes (every ``/api`` answer is JSON; errors are ``{"error": "<one line>"}`` with a 4xx status):

  GET    /                          the page (static/index.html, app.js, app.css)
  GET    /api/info                  checkpoints, whether a dataset is listed, limits, this session's uploads and jobs
  GET    /api/cases                 the cases of ``--data`` (id, modalities, seg present)
  POST   /api/upload/<slot>         raw body = one NIfTI file (slot flair|t1|t1ce|t2|seg); header X-Filename
  DELETE /api/upload/<slot>         forget an upload
  POST   /api/jobs                  {"checkpoint", "source": "upload"|"case", "case", "mc_samples", "target"}
  GET    /api/jobs/<id>             state, place in the queue, steps, progress, error, results
  GET    /api/jobs/<id>/report      the job's self-contained report (the page shows it in an iframe)
  GET    /api/jobs/<id>/files/<key> a download: segmentation, report, probabilities, gradcam, mc_*, summary

A session is a random token in an HttpOnly, SameSite=Strict cookie; jobs are looked up in the
requesting session only, so one browser never sees another's files. Bound to a loopback address
the server also refuses requests whose Host header is not a loopback name (DNS rebinding).
"""
from __future__ import annotations

import dataclasses
import http.cookies
import json
import shutil
import signal
import socket
import sys
import tempfile
import threading
import traceback
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from jaxseg.errors import JaxsegError
from jaxseg.serve import catalog, jobs, sessions

STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
                "/static/app.css": ("app.css", "text/css; charset=utf-8")}
COOKIE = "jaxseg_session"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_JSON_BYTES = 64 * 1024
MAX_MC_SAMPLES = 50
PAGE_POLICY = ("default-src 'self'; img-src 'self' data:; frame-src 'self'; object-src 'none'; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 7860  # 0: any free port (the URL printed says which)
    checkpoints: tuple[Path, ...] = ()  # run folders or folders of runs; () = the demo model
    data: Path | None = None  # a dataset folder whose cases the page lists
    workdir: Path | None = None  # sessions, uploads and results; None = a temporary folder, removed at exit
    max_upload_mb: float = 512.0
    verbose: bool = False  # log every request


class App:
    """Everything the request handlers share: settings, catalog, sessions, the job runner."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.checkpoints = {c.id: c for c in catalog.find_checkpoints(settings.checkpoints)}
        self.cases = catalog.find_dataset_cases(settings.data)
        self.own_workdir = settings.workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="jaxseg-serve-")) if self.own_workdir else Path(settings.workdir)
        self.sessions = sessions.SessionStore(self.workdir / "sessions")
        self.runner = jobs.JobRunner()
        self.max_upload_bytes = int(settings.max_upload_mb * 1024 * 1024)

    def info(self, session: sessions.Session) -> dict[str, Any]:
        with session.lock:  # another request of this session may be adding an upload or a job
            uploads, session_jobs = dict(session.uploads), list(session.jobs.values())
        return {"checkpoints": [c.describe() for c in self.checkpoints.values()], "data": bool(self.cases),
                "data_root": str(self.settings.data) if self.settings.data else None,
                "max_upload_bytes": self.max_upload_bytes, "slots": list(sessions.SLOTS),
                "uploads": {slot: u.describe() for slot, u in uploads.items()},
                "jobs": [self.job_status(j) for j in sorted(session_jobs, key=lambda j: j.created)]}

    def start_job(self, session: sessions.Session, request: dict[str, Any]) -> jobs.Job:
        """Check a job request and queue it. Raises JaxsegError saying what is wrong."""
        from jaxseg.explain.run import ExplainSettings, explain

        checkpoint = self.checkpoints.get(str(request.get("checkpoint")))
        if checkpoint is None:
            raise JaxsegError("choose a model from the list")
        mc_samples = request.get("mc_samples", 10)
        if not isinstance(mc_samples, int) or isinstance(mc_samples, bool) or not 1 <= mc_samples <= MAX_MC_SAMPLES:
            raise JaxsegError(f"MC-dropout passes must be a whole number from 1 to {MAX_MC_SAMPLES}")
        regions = checkpoint.describe()["regions"]
        targets = ["mean", "predicted", *regions, *(f"predicted:{r}" for r in regions)]
        target = request.get("target", "mean")
        if target not in targets:
            raise JaxsegError(f"Grad-CAM target must be one of {', '.join(targets)}")
        settings = ExplainSettings(mc_samples=mc_samples, target=target)
        if request.get("source") == "case":
            case = self.cases.get(str(request.get("case")))
            if case is None:
                raise JaxsegError("choose a case from the list")
            missing = [m for m in checkpoint.modalities if m not in case.images]
            if missing:
                raise JaxsegError(f"case {case.case_id} has no {', '.join(missing)} image, which this model needs")
            # One of the case's own files: its siblings make the case whatever the folder layout.
            prepare: Callable[[jobs.Job], Path] = lambda job: case.images[checkpoint.modalities[0]]
            description = f"dataset case {case.case_id}"
        else:
            sessions.require(session, checkpoint.modalities)
            names = [session.uploads[m].name for m in checkpoint.modalities]
            prepare = lambda job: sessions.case_folder(session, checkpoint.modalities, job.folder / "input")
            description = "uploaded " + ", ".join(names)

        def work(job: jobs.Job) -> tuple[dict[str, Path], dict]:
            job.say(f"loading the model {checkpoint.label}")
            result = explain(job.input, checkpoint.run, job.folder / "out", settings, say=job.say)
            return {**result.files, "report": result.report}, result.summary

        with session.lock:  # two clicks at once must not start two jobs
            if any(j.active for j in session.jobs.values()):
                raise JaxsegError("your previous job has not finished; wait for it before starting another")
            job = jobs.new_job(session.folder / "jobs", f"{description} · model {checkpoint.run.name}", work)
            job.input = prepare(job)  # copied now: later uploads do not change a queued job
            session.jobs[job.id] = job
        self.runner.submit(job)
        return job

    def job_status(self, job: jobs.Job) -> dict[str, Any]:
        status = {"id": job.id, "description": job.description, "state": job.state, "steps": job.steps,
                  "progress": job.progress, "error": job.error, "queue_position": self.runner.position(job)}
        if job.state == "done":
            s = job.summary
            status["result"] = {
                "case": s.get("case"), "caption": s.get("caption"), "volumes_ml": s.get("volumes_ml"),
                "faithfulness_auc": s.get("faithfulness_auc"), "report_url": f"/api/jobs/{job.id}/report",
                "files": [{"key": k, "label": label, "name": job.files[k].name,
                           "url": f"/api/jobs/{job.id}/files/{k}"} for k, label in jobs.FILE_LABELS.items()
                          if k in job.files]}
        return status

    def close(self) -> None:
        self.runner.stop()
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


class Handler(BaseHTTPRequestHandler):
    server_version = "jaxseg-serve"
    protocol_version = "HTTP/1.1"
    timeout = 120  # seconds a silent client may hold its thread
    app: App  # set by make_server

    # ----------------------------------------------------------------------------- plumbing
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if self.app.settings.verbose:
            super().log_message(format, *args)

    def _dispatch(self, method: str) -> None:
        self._new_cookie = None
        try:
            if self.app.settings.host in LOOPBACK and not self._loopback_host():
                return self._error(HTTPStatus.FORBIDDEN, "this server only answers to 127.0.0.1 / localhost")
            path = urllib.parse.urlsplit(self.path).path
            if method == "GET" and path in STATIC_FILES:
                return self._static(*STATIC_FILES[path])
            if not path.startswith("/api/"):
                return self._error(HTTPStatus.NOT_FOUND, f"no such page: {path}")
            self._route(method, path.split("/")[2:], self._session())
        except JaxsegError as error:
            self._error(HTTPStatus.BAD_REQUEST, str(error))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as error:  # noqa: BLE001 - a bug answers 500 and the server keeps serving
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error ({type(error).__name__}); see the server log")

    def _loopback_host(self) -> bool:
        host = (self.headers.get("Host") or "").strip()
        name = host[1:].split("]")[0] if host.startswith("[") else host.rsplit(":", 1)[0]
        return name in LOOPBACK

    def _session(self) -> sessions.Session:
        cookie = http.cookies.SimpleCookie()
        try:
            cookie.load(self.headers.get("Cookie") or "")
        except http.cookies.CookieError:
            pass
        session = self.app.sessions.get(cookie[COOKIE].value if COOKIE in cookie else None)
        if session is None:
            session = self.app.sessions.create()
            self._new_cookie = f"{COOKIE}={session.token}; Path=/; HttpOnly; SameSite=Strict"
        return session

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self._new_cookie:
            self.send_header("Set-Cookie", self._new_cookie)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, status: int = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json({"error": message}, status)

    def _static(self, name: str, content_type: str) -> None:
        if name == "index.html":
            self._session()  # the page's first request sets the cookie its API calls carry
        self._send(HTTPStatus.OK, (STATIC / name).read_bytes(), content_type,
                   {"Content-Security-Policy": PAGE_POLICY} if name == "index.html" else None)

    def _body_length(self, limit: int, what: str) -> int:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            raise _Refused(HTTPStatus.LENGTH_REQUIRED, f"{what}: send a Content-Length, not a chunked body")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            raise _Refused(HTTPStatus.LENGTH_REQUIRED, f"{what}: the request has no Content-Length") from None
        if length > limit:
            self._discard(length, limit)
            self.close_connection = True
            raise _Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"{what} is {length / 2**20:.1f} MB; this server accepts up to {limit / 2**20:.0f} MB "
                           "(jaxseg serve --max-upload-mb)")
        return length

    def _discard(self, length: int, limit: int) -> None:
        """Read and drop a refused body, so the client (which sends all of it before it reads an
        answer) gets the 413 and its message rather than a broken pipe. Far larger bodies are not
        read: the connection is closed on them and the client sees a connection error."""
        if length > max(4 * limit, 256 * 2**20):
            return
        while length > 0 and (chunk := self.rfile.read(min(sessions.CHUNK, length))):
            length -= len(chunk)

    # ----------------------------------------------------------------------------- routes
    def _route(self, method: str, parts: list[str], session: sessions.Session) -> None:
        try:
            match method, parts:
                case "GET", ["info"]:
                    return self._json(self.app.info(session))
                case "GET", ["cases"]:
                    return self._json([catalog.describe_case(c) for c in self.app.cases.values()])
                case "POST", ["upload", slot] if slot in sessions.SLOTS:
                    length = self._body_length(self.app.max_upload_bytes, "the file")
                    name = sessions.display_name(urllib.parse.unquote(self.headers.get("X-Filename", "")))
                    upload = sessions.save_upload(session, slot, self.rfile, length, name)
                    return self._json(upload.describe())
                case "DELETE", ["upload", slot] if slot in sessions.SLOTS:
                    sessions.remove_upload(session, slot)
                    return self._json({"removed": slot})
                case "POST", ["jobs"]:
                    length = self._body_length(MAX_JSON_BYTES, "the job request")
                    try:
                        request = json.loads(self.rfile.read(length) or b"{}")
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        raise JaxsegError("the job request is not JSON") from None
                    if not isinstance(request, dict):
                        raise JaxsegError("the job request must be a JSON object")
                    job = self.app.start_job(session, request)
                    return self._json(self.app.job_status(job), HTTPStatus.ACCEPTED)
                case "GET", ["jobs", job_id, *rest]:
                    return self._job(session.jobs.get(job_id), rest)
        except _Refused as refused:
            return self._error(refused.status, refused.message)
        self._error(HTTPStatus.NOT_FOUND, f"no such API route: {method} /api/{'/'.join(parts)}")

    def _job(self, job: jobs.Job | None, rest: list[str]) -> None:
        if job is None:  # someone else's job looks exactly like no job
            return self._error(HTTPStatus.NOT_FOUND, "no such job in this session")
        if not rest:
            return self._json(self.app.job_status(job))
        if job.state != "done":
            return self._error(HTTPStatus.CONFLICT, "the job has not finished")
        if rest == ["report"]:
            return self._send(HTTPStatus.OK, job.files["report"].read_bytes(), "text/html; charset=utf-8",
                              {"Content-Security-Policy": "frame-ancestors 'self'"})
        if len(rest) == 2 and rest[0] == "files" and rest[1] in job.files:
            path = job.files[rest[1]]  # a name explain chose, looked up by key
            kind = {"report": "text/html", "summary": "application/json"}.get(rest[1], "application/gzip")
            return self._send(HTTPStatus.OK, path.read_bytes(), kind,
                              {"Content-Disposition": f'attachment; filename="{path.name}"'})
        return self._error(HTTPStatus.NOT_FOUND, "no such file for this job")


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def make_server(app: App) -> ThreadingHTTPServer:
    """The HTTP server bound to the settings' host and port (not yet serving)."""
    handler = type("BoundHandler", (Handler,), {"app": app})
    server_class = ThreadingHTTPServer
    if ":" in app.settings.host:  # IPv6
        server_class = type("ThreadingHTTPServer6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
    try:
        server = server_class((app.settings.host, app.settings.port), handler)
    except OSError as error:
        raise JaxsegError(f"cannot listen on {app.settings.host}:{app.settings.port} ({error.strerror or error})") from None
    server.daemon_threads = True
    return server


def url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve(settings: ServeSettings, say: Callable[[str], None] = print) -> None:
    """Serve until Ctrl-C (or SIGTERM); then stop the worker and remove a temporary workdir."""
    app = App(settings)
    try:
        server = make_server(app)
    except JaxsegError:
        app.close()
        raise
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl-C
    names = ", ".join(c.label for c in app.checkpoints.values())
    say(f"models: {names}")
    if app.cases:
        say(f"dataset: {len(app.cases)} cases in {settings.data}")
    if settings.host not in LOOPBACK:
        say(f"warning: listening on {settings.host}: anyone who can reach this machine can use the app")
    say(f"jaxseg serve: {url_of(server)}  (Ctrl-C stops)")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.close()
        say("stopped")
