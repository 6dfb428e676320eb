"""Fixtures of the web-app tests: a small phantom dataset and a client with its own cookies."""
from __future__ import annotations

import http.cookiejar
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

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


class Client:
    """One browser's worth of HTTP: its own cookie jar. Answers are (status, parsed JSON or bytes)."""

    def __init__(self, base: str):
        self.base = base.rstrip("/")
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        request = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        try:
            with self.opener.open(request, timeout=60) as answer:
                status, raw, got = answer.status, answer.read(), dict(answer.headers)
        except urllib.error.HTTPError as error:
            status, raw, got = error.code, error.read(), dict(error.headers)
        content_type = got.get("Content-Type", "")
        return status, json.loads(raw) if content_type.startswith("application/json") else raw, got

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)[:2]

    def post_json(self, path: str, data: Any) -> tuple[int, Any]:
        return self.request("POST", path, json.dumps(data).encode(), {"Content-Type": "application/json"})[:2]

    def upload(self, slot: str, content: bytes, name: str) -> tuple[int, Any]:
        return self.request("POST", f"/api/upload/{slot}", content, {"X-Filename": name})[:2]

    def upload_case(self, case: Path, slots=("flair", "t1", "t1ce", "t2", "seg")) -> None:
        for slot in slots:
            path = case / f"{case.name}_{slot}.nii.gz"
            status, answer = self.upload(slot, path.read_bytes(), path.name)
            assert status == 200, answer
