"""Running the web app on uvicorn: one event loop, so a slow or idle client costs a socket, not
a thread.

Limits: ``max_connections`` is uvicorn's ``limit_concurrency`` (beyond it, 503); ``keep_alive``
closes an idle connection, also one that has not sent its first request yet (uvicorn itself only
times out connections after a response; :class:`IdleTimeoutH11`); ``body_timeout`` drops a
request whose body stalls (`jaxseg.serve.web.receive_body`). The JAX work runs in the job
runner's own thread, route code that touches files in Starlette's thread pool.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
from typing import Callable

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from jaxseg.errors import JaxsegError
from jaxseg.serve import catalog, web
from jaxseg.serve.app import LOOPBACK, App, ServeSettings


class IdleTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol, with the keep-alive timeout running from the moment a connection
    opens: a client that connects and sends nothing is closed after ``timeout_keep_alive``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)


class _Server(uvicorn.Server):
    """uvicorn's server without re-raising the stopping signal after shutdown, so Ctrl-C and
    SIGTERM end `serve` normally (the caller then tidies up and exits 0)."""

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one); JaxsegError if it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise JaxsegError(f"--host {host} --port {port}: cannot listen there ({error.strerror or error})") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def make_server(app: App) -> _Server:
    s = app.settings
    config = uvicorn.Config(web.build(app), http=IdleTimeoutH11, ws="none", lifespan="off", loop="asyncio",
                            limit_concurrency=s.max_connections, timeout_keep_alive=s.keep_alive,
                            timeout_graceful_shutdown=5, access_log=s.verbose, server_header=False,
                            log_level="info" if s.verbose else "warning",
                            # X-Forwarded-Proto/-For from a reverse proxy on this machine only: behind
                            # TLS the scheme is https, so the session cookie is marked Secure
                            proxy_headers=True, forwarded_allow_ips="127.0.0.1")
    return _Server(config)


def startup_lines(app: App) -> list[str]:
    """What `serve` prints before the address: models (or why there is none), dataset, warnings."""
    s = app.settings
    lines = [f"models: {', '.join(c.label for c in app.checkpoints.values())}" if app.checkpoints
             else f"models: none. {catalog.NO_MODEL}; the page is up and says so"]
    if app.cases:
        lines.append(f"dataset: {len(app.cases)} cases in {s.data}")
    if app.restored_sessions:
        lines.append(f"sessions: {app.restored_sessions} taken back from {app.workdir} (finished results kept)")
    if s.host not in LOOPBACK:
        lines.append(f"warning: listening on {s.host}: anyone who can reach this machine on port {s.port} can use "
                     "the app, with no password and no TLS. To offer it to a network, keep the default "
                     "127.0.0.1 and put a reverse proxy with TLS and authentication in front (docs/serve.md)")
    return lines


def serve(settings: ServeSettings, say: Callable[[str], None] = print) -> None:
    """Serve until Ctrl-C (or SIGTERM); then stop the worker and tidy the working folder."""
    sock = bind(settings.host, settings.port)
    try:
        app = App(settings)
    except BaseException:
        sock.close()
        raise
    try:
        for line in startup_lines(app):
            say(line)
        say(f"jaxseg serve: {url_of(sock)}  (Ctrl-C stops)")
        sys.stdout.flush()
        if not settings.verbose:
            logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        make_server(app).run(sockets=[sock])
    finally:
        sock.close()
        app.close()
        say("stopped")
