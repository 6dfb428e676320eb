"""Headless Chromium for the browser tests: Playwright driving Debian's chromium.

Playwright's own browser download (``playwright install``) is never needed: it launches the
system's chromium by ``executable_path``. Shared through the `browser` fixture of
tests/conftest.py, which skips, saying why, where chromium or the playwright package is missing.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

# Schemes a self-contained page may load from: itself and in-memory data.
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
TIMEOUT_MS = 120_000  # a first jit compile on a busy machine; every wait names its own when longer


def chromium_binary() -> str | None:
    """$JAXSEG_CHROMIUM, else the first of chromium / chromium-browser / google-chrome on PATH."""
    if os.environ.get("JAXSEG_CHROMIUM"):
        return os.environ["JAXSEG_CHROMIUM"]
    return next((path for name in ("chromium", "chromium-browser", "google-chrome")
                 if (path := shutil.which(name))), None)


class Browser:
    """One Playwright page (``.page``, the sync API) in a headless Chromium, and what went wrong on it."""

    def __init__(self, binary: str, width: int = 1600, height: int = 1000) -> None:
        from playwright.sync_api import sync_playwright

        self.playwright = sync_playwright().start()
        # --no-sandbox: CI and containers run as root, where Chromium's sandbox refuses to start.
        self.chromium = self.playwright.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        self.context = self.chromium.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.seen: list[str] = []
        self.allowed_origins: tuple[str, ...] = ()  # e.g. the web app's http://127.0.0.1:PORT/
        self.page.on("console", lambda m: self.seen.append(f"console: {m.text}") if m.type in ("error", "assert") else None)
        self.page.on("pageerror", lambda e: self.seen.append(f"exception: {e}"))
        self.context.on("request", lambda r: None if r.url.startswith(LOCAL_SCHEMES + self.allowed_origins)
                        else self.seen.append(f"network: {r.url}"))

    def problems(self) -> list[str]:
        """Console errors (the browser's own log lines, such as a failed load, come as console
        errors too), uncaught exceptions, and requests to other than local schemes and
        ``allowed_origins``, since the last :meth:`open`/:meth:`goto`."""
        return list(self.seen)

    def open(self, path: Path) -> None:
        """Load a report and wait until its viewer says it is ready (or failed)."""
        self.seen.clear()
        self.page.goto(path.resolve().as_uri())
        self.wait_for("document.documentElement.dataset.ready === 'true'"
                      " || document.getElementById('loading')?.classList.contains('error')")

    def goto(self, url: str, ready: str) -> None:
        """Load ``url`` (an app the test serves: its origin is allowed) and wait until ``ready`` is true."""
        self.seen.clear()
        origin = "/".join(url.split("/")[:3]) + "/"
        self.allowed_origins += () if origin in self.allowed_origins else (origin,)
        self.page.goto(url)
        self.wait_for(ready)

    def evaluate(self, expression: str):
        """The JSON value of a JavaScript expression (a promise is awaited)."""
        return self.page.evaluate(expression)

    def wait_for(self, expression: str, timeout_s: float = TIMEOUT_MS / 1000):
        """The first truthy value of ``expression``, asked every 0.1 s. (Not Playwright's
        ``wait_for_function``: it evaluates the string with ``eval``, which the web app's
        Content-Security-Policy forbids, and ``bypass_csp`` would hide the page's own violations.)"""
        deadline = time.monotonic() + timeout_s
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout_s} s for {expression}; problems: {self.problems()}")
            self.page.wait_for_timeout(100)
        return value

    def canvas_digest(self, canvas_id: str) -> int:
        """A checksum of a canvas's pixels, after the next two animation frames (renders are batched)."""
        return self.evaluate(
            "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => {"
            f" const c = document.getElementById('{canvas_id}');"
            " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let h = 0; for (let i = 0; i < d.length; i += 4) h = (h * 31 + d[i] + 3 * d[i + 1] + 7 * d[i + 2]) >>> 0;"
            " r(h); })))")

    def screenshot(self, path: Path) -> Path:
        """The whole page as a PNG at ``path``."""
        self.page.screenshot(path=path, full_page=True)
        return path

    def close(self) -> None:
        self.chromium.close()
        self.playwright.stop()
