"""`jaxseg serve` as a real uvicorn process on 127.0.0.1: idle and slow clients cost no thread
and are closed, the upload cap holds on a chunked body over the wire, a stalled body is dropped,
requests without a cookie make no session, `--host 0.0.0.0` warns, and `kill -9` during a job
followed by a restart keeps the finished result and shows the cut-off job as interrupted.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
HEADERS = {"X-Jaxseg-Request": "1"}


class Served:
    """`python cli.py serve ...` started as a process; ``url`` once it printed its address."""

    def __init__(self, *args: str):
        env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(REPO / ".pytest_cache" / "jax-compilation")}
        self.process = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "serve", "--port", "0", *args],
                                        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.process.stdout.readline, "")), daemon=True).start()
        deadline = time.monotonic() + 120
        while not (url := next((m[1] for line in list(self.lines) if (m := re.search(r"jaxseg serve: (http://\S+)", line))), None)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"jaxseg serve did not start: {''.join(self.lines)}")
            time.sleep(0.05)
        self.url = url.rstrip("/")
        self.host, self.port = url.split("//")[1].rstrip("/").rsplit(":", 1)

    def threads(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"^Threads:\s+(\d+)", status, re.M)[1])

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=60)


@contextlib.contextmanager
def served(*args: str):
    server = Served(*args)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(30)


@pytest.fixture(scope="module")
def server(smoke_run, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("serve_process")
    with served("--checkpoint", str(smoke_run), "--workdir", str(workdir), "--keep-alive", "2",
                "--body-timeout", "1", "--max-upload-mb", "1") as s:
        s.workdir = workdir
        yield s
        assert s.stop() == 0 and s.lines[-1].strip() == "stopped", "".join(s.lines)


def test_idle_connections_cost_no_thread_and_are_closed(server):
    if not Path("/proc/self/status").exists():
        pytest.skip("counts threads through /proc (Linux)")
    before = server.threads()
    idle = [socket.create_connection((server.host, int(server.port))) for _ in range(200)]
    try:
        time.sleep(0.5)
        answer = httpx.get(server.url + "/api/info", timeout=10)  # a normal request behind the 200
        assert answer.status_code == 200 and answer.json()["checkpoints"]
        assert server.threads() <= before + 2  # the thread pool may start one for the request
        idle[0].settimeout(20)
        assert idle[0].recv(1) == b""  # closed by the server after --keep-alive seconds of silence
    finally:
        for sock in idle:
            sock.close()


def test_requests_without_a_cookie_make_no_session(server):
    before = sorted((server.workdir / "sessions").iterdir())
    with httpx.Client(base_url=server.url) as anonymous:
        for _ in range(50):
            anonymous.cookies.clear()
            assert anonymous.get("/").status_code == 200 and anonymous.get("/api/info").status_code == 200
    assert sorted((server.workdir / "sessions").iterdir()) == before


def test_the_upload_cap_holds_on_a_chunked_body(server):
    def body():
        for _ in range(64):  # 4 MB in 64 KB chunks, with no Content-Length
            yield b"\0" * 65536

    answer = httpx.post(server.url + "/api/upload/flair", content=body(), headers={"X-Filename": "x.nii", **HEADERS},
                        timeout=30)
    assert answer.status_code == 413 and "larger than this server accepts (1 MB" in answer.json()["error"]
    assert not list(server.workdir.rglob(".part-*"))


def test_a_stalled_body_is_dropped(server):
    with socket.create_connection((server.host, int(server.port)), timeout=20) as sock:
        sock.sendall(f"POST /api/upload/flair HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nX-Jaxseg-Request: 1\r\n"
                     "Content-Length: 100000\r\n\r\n".encode() + b"\0" * 1000)  # then nothing
        received = b""
        while chunk := sock.recv(65536):  # the answer, then the server closes the connection
            received += chunk
        answer = received.decode()
    assert answer.startswith("HTTP/1.1 408") and "no data arrived for 1 s" in answer
    assert not list(server.workdir.rglob(".part-*"))


def test_a_foreign_origin_is_refused_over_the_wire(server):
    answer = httpx.post(server.url + "/api/jobs", content=b'{"checkpoint": "0"}',
                        headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
    assert answer.status_code == 403 and "cross-origin" in answer.json()["error"]


def test_listening_on_every_address_warns(smoke_run, tmp_path):
    with served("--checkpoint", str(smoke_run), "--workdir", str(tmp_path), "--host", "0.0.0.0") as s:
        warning = next(line for line in s.lines if line.startswith("warning:"))
        assert "listening on 0.0.0.0" in warning and "reverse proxy with TLS" in warning
        assert httpx.get(f"http://127.0.0.1:{s.port}/api/info").status_code == 200
        assert s.stop() == 0


def job_events(client: httpx.Client, job_id: str):
    with client.stream("GET", f"/api/jobs/{job_id}/events", timeout=600) as answer:
        for line in answer.iter_lines():
            if line.startswith("data: "):
                yield json.loads(line[len("data: "):])


@pytest.mark.slow
def test_kill_9_during_a_job_then_restart(smoke_run, phantom_root, tmp_path):
    args = ("--checkpoint", str(smoke_run), "--data", str(phantom_root), "--workdir", str(tmp_path))
    request = {"checkpoint": "0", "source": "case", "mc_samples": 2}
    with served(*args) as first:
        user = httpx.Client(base_url=first.url, timeout=60)
        done = user.post("/api/jobs", json={**request, "case": "Phantom_5_000"}).json()
        assert [e["state"] for e in job_events(user, done["id"])][-1] == "done"
        seg = user.get(f"/api/jobs/{done['id']}/files/segmentation").content
        cut = user.post("/api/jobs", json={**request, "case": "Phantom_5_001"}).json()
        for event in job_events(user, cut["id"]):  # pushed as it happens: kill once it has started
            if event["state"] == "running" and len(event["steps"]) >= 2:
                break
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(30)
    with served(*args) as second:
        assert any("sessions: 1 taken back" in line for line in second.lines)
        again = httpx.Client(base_url=second.url, cookies=user.cookies, timeout=60)
        jobs = {j["id"]: j for j in again.get("/api/info").json()["jobs"]}
        assert jobs[done["id"]]["state"] == "done" and jobs[cut["id"]]["state"] == "interrupted"
        assert again.get(f"/api/jobs/{done['id']}/files/segmentation").content == seg
        for path in ("report", "files/segmentation", "files/summary"):
            assert again.get(f"/api/jobs/{cut['id']}/{path}").status_code == 409
        [folder] = tmp_path.glob(f"sessions/*/jobs/{cut['id']}")
        assert not (folder / "out").exists() and not list(tmp_path.rglob(".*.tmp-*"))
        assert second.stop() == 0


def test_behind_a_tls_proxy_the_cookie_is_secure(server, phantom_case):
    """A reverse proxy on this machine says the client spoke https (X-Forwarded-Proto): the
    session cookie is then only sent back over TLS, and the proxied Origin is accepted."""
    flair = (phantom_case / f"{phantom_case.name}_flair.nii.gz").read_bytes()
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7", "X-Filename": "f.nii.gz",
               "Origin": f"https://{server.host}:{server.port}", **HEADERS}
    answer = httpx.post(server.url + "/api/upload/flair", content=flair, headers=proxied)
    assert answer.status_code == 200 and "Secure" in answer.headers["set-cookie"]
    direct = httpx.post(server.url + "/api/upload/flair", content=flair, headers={"X-Filename": "f.nii.gz", **HEADERS})
    assert direct.status_code == 200 and "Secure" not in direct.headers["set-cookie"]


def test_connections_beyond_the_limit_get_503(smoke_run, tmp_path):
    with served("--checkpoint", str(smoke_run), "--workdir", str(tmp_path), "--max-connections", "5",
                "--keep-alive", "30") as s:
        idle = [socket.create_connection((s.host, int(s.port))) for _ in range(5)]
        try:
            time.sleep(0.3)
            assert httpx.get(s.url + "/api/info", timeout=10).status_code == 503  # bounded, not queued forever
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + 10
        while (status := httpx.get(s.url + "/api/info", timeout=10).status_code) != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status == 200
        assert s.stop() == 0
