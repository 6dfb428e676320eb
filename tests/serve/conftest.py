"""Fixtures of the web-app tests: a small phantom dataset and an in-process client with its own cookies."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from jaxseg.data import phantom

SHAPE = (48, 48, 32)


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """Two BraTS-2021-named phantom cases of 48 x 48 x 32 voxels (a `--data` folder)."""
    root = tmp_path_factory.mktemp("serve_data")
    phantom.write_phantoms(root, 2, seed=5, shape=SHAPE)
    return root


@pytest.fixture(scope="session")
def phantom_case(phantom_root) -> Path:
    return sorted(p for p in phantom_root.iterdir() if p.is_dir())[0]


HEADERS = {"X-Jaxseg-Request": "1"}  # what the page sends with every request that changes something


class Client:
    """One browser's worth of HTTP against the ASGI app in-process (Starlette's TestClient: its
    own cookie jar). Answers are (status, parsed JSON or bytes)."""

    def __init__(self, asgi):
        from starlette.testclient import TestClient
        self.http = TestClient(asgi, base_url="http://127.0.0.1:7860", raise_server_exceptions=False)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        answer = self.http.request(method, path, content=body, headers=headers or {})
        content_type = answer.headers.get("content-type", "")
        data = answer.json() if content_type.startswith("application/json") else answer.content
        return answer.status_code, data, dict(answer.headers)

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)[:2]

    def post_json(self, path: str, data: Any) -> tuple[int, Any]:
        return self.request("POST", path, json.dumps(data).encode(), {"Content-Type": "application/json"})[:2]

    def upload(self, slot: str, content: bytes, name: str) -> tuple[int, Any]:
        return self.request("POST", f"/api/upload/{slot}", content, {"X-Filename": name, **HEADERS})[:2]

    def upload_case(self, case: Path, slots=("flair", "t1", "t1ce", "t2", "seg")) -> None:
        for slot in slots:
            path = case / f"{case.name}_{slot}.nii.gz"
            status, answer = self.upload(slot, path.read_bytes(), path.name)
            assert status == 200, answer


def wait_for_job(client: Client, job_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, job = client.get(f"/api/jobs/{job_id}")
        assert status == 200, job
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} still {job['state']} after {timeout} s: {job['steps']}")


REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def serve_process(*args: str) -> Iterator[str]:
    """`python cli.py serve ARGS --port 0` as a process on 127.0.0.1; yields its URL. Stopped
    with Ctrl-C (SIGINT) at the end, which must end it cleanly."""
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(REPO / ".pytest_cache" / "jax-compilation")}
    process = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "serve", *args, "--port", "0"],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not (url := next((m[1] for line in lines if (m := re.search(r"jaxseg serve: (http://\S+)", line))), None)):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"jaxseg serve did not start: {''.join(lines)}")
        time.sleep(0.1)
    yield url
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0, "".join(lines)
    reader.join(10)
    assert lines[-1].strip() == "stopped", "".join(lines)
