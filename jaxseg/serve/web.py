"""The HTTP side of the web app: Starlette routes over :class:`jaxseg.serve.app.App`.

Routes (every ``/api`` answer is JSON; errors are ``{"error": "<one line>"}`` with a 4xx/5xx status):

  GET    /                          the page (templates/index.html, rendered once; static/app.js, app.css)
  GET    /api/info                  checkpoints, whether a dataset is listed, limits, this session's uploads and jobs
  GET    /api/cases                 the cases of ``--data`` (id, modalities, seg present)
  POST   /api/upload/<slot>         raw body = one file; header X-Filename. Slots flair|t1|t1ce|t2|seg take
                                    NIfTI; slice (.mat, PNG, TIFF) and slice_mask (PNG, TIFF) one 2D slice
  DELETE /api/upload/<slot>         forget an upload
  POST   /api/jobs                  {"checkpoint", "source": "upload"|"case", "case", "mc_samples", "target"}
  GET    /api/jobs/<id>             state, place in the queue, steps, progress, error, results
  GET    /api/jobs/<id>/events      the same status as server-sent events, one per change, until it ends
  GET    /api/jobs/<id>/report      the job's self-contained report (the page shows it in an iframe)
  GET    /api/jobs/<id>/files/<key> a download (streamed from disk, Range requests answered 206)

A session is a random token in an HttpOnly, SameSite=Strict cookie, set by the first upload or
job; jobs are looked up in the requesting session only. :class:`Guard` wraps every request: the
Host check (DNS rebinding), the cross-site checks of state-changing requests, and one JSON 500
for a bug without stopping the server.
"""
from __future__ import annotations

import asyncio
import json
import sys
import traceback
import urllib.parse
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from jaxseg.errors import JaxsegError
from jaxseg.serve import catalog, jobs, sessions
from jaxseg.serve.app import DEFAULT_MC_SAMPLES, MAX_MC_SAMPLES, App, Refused

STATIC = Path(__file__).parent / "static"
COOKIE = "jaxseg_session"
CSRF_HEADER = "x-jaxseg-request"  # any value; a page elsewhere cannot send it without a CORS preflight
MAX_JSON_BYTES = 64 * 1024
SSE_POLL_S = 0.2  # how often the event stream looks at its job
SSE_PING_S = 15.0  # a comment line this often keeps proxies from closing a quiet stream
PAGE_POLICY = ("default-src 'self'; img-src 'self' data:; frame-src 'self'; object-src 'none'; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def templates() -> jinja2.Environment:
    """The page's templates (``jaxseg/serve/templates``, package data): every value is
    HTML-escaped, and a name the template uses but the caller did not give fails to render."""
    return jinja2.Environment(loader=jinja2.PackageLoader("jaxseg.serve", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def render_page() -> str:
    """The app's one HTML page: the same for every visitor (app.js fills it in from /api/info), with
    the limits :mod:`jaxseg.serve.app` enforces written into its form fields."""
    return templates().get_template("index.html").render(max_mc_samples=MAX_MC_SAMPLES,
                                                         default_mc_samples=DEFAULT_MC_SAMPLES)


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers={"Cache-Control": "no-store"})


class Guard:
    """Pure ASGI middleware in front of every route.

    - ``Host`` must be one of ``host_names`` (when set): a page on another name that resolves to
      127.0.0.1 (DNS rebinding) gets 403.
    - A state-changing request (not GET/HEAD/OPTIONS) with ``Sec-Fetch-Site: cross-site``, or an
      ``Origin`` whose host is not the request's ``Host``, gets 403; and it must carry
      ``Content-Type: application/json`` or the ``X-Jaxseg-Request`` header, neither of which a
      foreign page's form or simple ``fetch`` can send without a CORS preflight (never answered).
    - An exception in a route answers 500 with one line (traceback to stderr) and the server goes on.
    """

    def __init__(self, app, host_names: tuple[str, ...] | None):
        self.app, self.host_names = app, host_names

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self.refusal(scope["method"], headers)
        if refusal is not None:
            return await error(403, refusal)(scope, receive, send)
        started = False

        async def tracked(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-content-type-options", b"nosniff")]
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:  # noqa: BLE001 - a bug answers 500 and the server keeps serving
            traceback.print_exc(file=sys.stderr)
            if not started:
                await error(500, f"internal error ({type(exc).__name__}); see the server log")(scope, receive, send)

    def refusal(self, method: str, headers: dict[str, str]) -> str | None:
        host = headers.get("host", "").strip().lower()
        if self.host_names is not None and _host_name(host) not in self.host_names:
            return f"this server only answers to {' / '.join(self.host_names)} (Host header {host or 'missing'})"
        if method in SAFE_METHODS:
            return None
        if headers.get("sec-fetch-site", "") == "cross-site":
            return "cross-site request refused (Sec-Fetch-Site: cross-site)"
        origin = headers.get("origin")
        if origin is not None and urllib.parse.urlsplit(origin).netloc.lower() != host:
            return f"cross-origin request refused (Origin {origin} is not this server)"
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json" and CSRF_HEADER not in headers:
            return "a request that changes something needs Content-Type: application/json or an X-Jaxseg-Request header"
        return None


def _host_name(host: str) -> str:
    """``[::1]:7860`` -> ``::1``, ``localhost:7860`` -> ``localhost``."""
    if host.startswith("["):
        return host[1:].split("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def build(app: App) -> Starlette:
    """The ASGI application of ``app`` (Guard outermost).

    Routes that only read the app's state in memory run on the event loop (no thread); file
    checks, copies and job starts go to Starlette's thread pool, the JAX work to the job runner.
    """

    def token(request: Request) -> str | None:
        return request.cookies.get(COOKIE)

    def session_of(request: Request) -> sessions.Session | None:
        return app.session(token(request))

    def with_cookie(response: Response, new_token: str | None, request: Request) -> Response:
        if new_token is not None:
            response.set_cookie(COOKIE, new_token, path="/", httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
        return response

    async def session_or_new(request: Request) -> tuple[sessions.Session, str | None]:
        session = session_of(request)
        if session is not None:
            return session, None
        return await run_in_threadpool(app.new_session)

    async def forget_if_new(session: sessions.Session, new_token: str | None) -> None:
        """A refused request answers without the new session's cookie: remove that session."""
        if new_token is not None:
            await run_in_threadpool(app.sessions.discard, session)

    def static(name: str, media_type: str):
        async def endpoint(request: Request) -> Response:
            return FileResponse(STATIC / name, media_type=media_type, headers={"Cache-Control": "no-cache"})
        return endpoint

    page_html = render_page()  # once: nothing on it depends on the request

    async def page(request: Request) -> Response:
        return Response(page_html, media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_POLICY})

    async def info(request: Request) -> Response:
        return JSONResponse(app.info(session_of(request)), headers={"Cache-Control": "no-store"})

    async def cases(request: Request) -> Response:
        return JSONResponse([catalog.describe_case(c) for c in app.cases.values()])

    async def upload(request: Request) -> Response:
        slot = request.path_params["slot"]
        if slot not in sessions.SLOTS:
            return error(404, f"no such API route: POST {request.url.path}")
        name = sessions.display_name(urllib.parse.unquote(request.headers.get("x-filename", "")))
        session, new_token = await session_or_new(request)
        part = sessions.part_file(session)
        try:
            with part.open("wb") as out:
                await receive_body(request, app.max_upload_bytes, "the file", out, app.settings.body_timeout)
            result = await run_in_threadpool(sessions.accept_upload, session, slot, part, name)
        except BaseException:
            await forget_if_new(session, new_token)
            raise
        finally:
            part.unlink(missing_ok=True)
        return with_cookie(JSONResponse(result.describe()), new_token, request)

    async def remove_upload(request: Request) -> Response:
        slot = request.path_params["slot"]
        if slot not in sessions.SLOTS:
            return error(404, f"no such API route: DELETE {request.url.path}")
        session = session_of(request)
        if session is not None:
            sessions.remove_upload(session, slot)
        return JSONResponse({"removed": slot})

    async def start_job(request: Request) -> Response:
        chunks: list[bytes] = []
        await receive_body(request, MAX_JSON_BYTES, "the job request", chunks, app.settings.body_timeout)
        try:
            body = json.loads(b"".join(chunks) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise JaxsegError("the job request is not JSON") from None
        if not isinstance(body, dict):
            raise JaxsegError("the job request must be a JSON object")
        checked = await run_in_threadpool(app.check_job_request, session_of(request), body)
        session, new_token = await session_or_new(request)
        try:
            job = await run_in_threadpool(app.start_job, session, checked)
        except BaseException:
            await forget_if_new(session, new_token)
            raise
        return with_cookie(JSONResponse(app.job_status(job), 202), new_token, request)

    def job_of(request: Request):
        session = session_of(request)
        job = session.jobs.get(request.path_params["job"]) if session is not None else None
        if job is None:  # someone else's job looks exactly like no job
            raise Refused(404, "no such job in this session")
        return job

    async def job_status(request: Request) -> Response:
        return JSONResponse(app.job_status(job_of(request)), headers={"Cache-Control": "no-store"})

    async def job_events(request: Request) -> Response:
        job = job_of(request)

        async def events():
            seen, quiet = -1, 0.0
            while True:
                version = job.version
                if version != seen:
                    seen, quiet = version, 0.0
                    yield f"data: {json.dumps(app.job_status(job))}\n\n"
                    if not job.active:
                        return
                elif quiet >= SSE_PING_S:
                    quiet = 0.0
                    yield ": still working\n\n"
                await asyncio.sleep(SSE_POLL_S)
                quiet += SSE_POLL_S

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    def finished_file(request: Request, key: str) -> Path:
        job = job_of(request)
        if job.state != "done":
            raise Refused(409, "the job has not finished" if job.active else f"the job {job.state}: it has no files")
        if key not in job.files:
            raise Refused(404, "no such file for this job")
        return job.files[key]  # a name explain chose, looked up by key

    async def report(request: Request) -> Response:
        return FileResponse(finished_file(request, "report"), media_type="text/html; charset=utf-8",
                            headers={"Content-Security-Policy": "frame-ancestors 'self'", "Cache-Control": "no-store"})

    async def download(request: Request) -> Response:
        key = request.path_params["key"]
        path = finished_file(request, key)
        return FileResponse(path, media_type=jobs.media_type(path), filename=path.name, headers={"Cache-Control": "no-store"})

    async def refused(request: Request, exc: Refused) -> Response:
        return error(exc.status, exc.message)

    async def bad_input(request: Request, exc: JaxsegError) -> Response:
        return error(400, str(exc))

    async def bug(request: Request, exc: Exception) -> Response:  # Starlette re-raises it to Guard, which logs it
        return error(500, f"internal error ({type(exc).__name__}); see the server log")

    async def http_error(request: Request, exc: HTTPException) -> Response:
        message = {404: f"no such page or API route: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return error(exc.status_code, message)

    routes = [
        Route("/", page),
        Route("/static/app.js", static("app.js", "text/javascript; charset=utf-8")),
        Route("/static/app.css", static("app.css", "text/css; charset=utf-8")),
        Route("/api/info", info),
        Route("/api/cases", cases),
        Route("/api/upload/{slot}", upload, methods=["POST"]),
        Route("/api/upload/{slot}", remove_upload, methods=["DELETE"]),
        Route("/api/jobs", start_job, methods=["POST"]),
        Route("/api/jobs/{job}", job_status),
        Route("/api/jobs/{job}/events", job_events),
        Route("/api/jobs/{job}/report", report),
        Route("/api/jobs/{job}/files/{key}", download),
    ]
    web = Starlette(routes=routes, exception_handlers={Refused: refused, JaxsegError: bad_input,
                                                       HTTPException: http_error, Exception: bug})
    return Guard(web, app.settings.host_names)


async def receive_body(request: Request, limit: int, what: str, out: Any, timeout: float) -> int:
    """Stream the request body into ``out`` (a file, or a list of chunks), at most ``limit`` bytes.

    The cap holds while streaming, whatever Content-Length says (chunked bodies too); a body
    declared or found larger is refused with 413 after reading (and dropping) up to
    :data:`DRAIN_BYTES` more of it, so a client that sends everything before it reads an answer
    gets the message rather than a broken pipe. A pause of more than ``timeout`` seconds between
    chunks answers 408; a client that leaves mid-body gets nothing (and nothing is kept).
    """
    declared = request.headers.get("content-length")
    declared_too_large = declared is not None and declared.isdigit() and int(declared) > limit
    too_large = Refused(413, f"{what} is {int(declared) / 2**20:.1f} MB; this server accepts up to "
                             f"{limit / 2**20:.0f} MB (jaxseg serve --max-upload-mb)" if declared_too_large else
                        f"{what} is larger than this server accepts ({limit / 2**20:.0f} MB, "
                        "jaxseg serve --max-upload-mb)")
    stream = request.stream().__aiter__()
    # Bytes received when the body was refused (nothing is stored from then on); None: kept so far.
    received, refused_at = 0, (0 if declared_too_large else None)
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise Refused(408, f"{what}: no data arrived for {timeout:g} s; the request was dropped") from None
        except ClientDisconnect:
            raise Refused(400, f"{what}: the upload was cut short (the connection closed)") from None
        received += len(chunk)
        if refused_at is None and received > limit:
            refused_at = received
        if refused_at is not None:
            if received - refused_at > DRAIN_BYTES:
                break
            continue
        if isinstance(out, list):
            out.append(chunk)
        else:
            out.write(chunk)
    if refused_at is not None:
        raise too_large
    return received


DRAIN_BYTES = 256 * 2**20
