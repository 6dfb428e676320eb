"""Headless Chromium driven over the DevTools protocol (Debian's chromium + websocket-client).

Shared by the browser tests through the `browser` fixture of tests/conftest.py, which skips
with a clear reason where chromium or websocket-client is missing.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--remote-debugging-port=0"]
# Schemes a self-contained page may load from: itself and in-memory data.
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


def chromium_binary() -> str | None:
    """$JAXSEG_CHROMIUM, else the first of chromium / chromium-browser / google-chrome on PATH."""
    if os.environ.get("JAXSEG_CHROMIUM"):
        return os.environ["JAXSEG_CHROMIUM"]
    return next((path for name in ("chromium", "chromium-browser", "google-chrome")
                 if (path := shutil.which(name))), None)


class Browser:
    """One headless Chromium page, driven with DevTools protocol commands over a websocket."""

    def __init__(self, binary: str, width: int = 1600, height: int = 1000) -> None:
        import websocket  # websocket-client

        self.profile = tempfile.mkdtemp(prefix="jaxseg-chromium-")
        self.process = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError(f"{binary} did not start its DevTools server")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
            target = next(t for t in json.load(answer) if t["type"] == "page")
        self.socket = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=120, suppress_origin=True)
        self.next_id = 0
        self.loads = 0
        self.events: list[dict[str, Any]] = []
        self.allowed_origins: tuple[str, ...] = ()  # e.g. the web app's http://127.0.0.1:PORT/
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run one protocol command and return its result; events that arrive meanwhile are kept."""
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 120) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := self.evaluate(expression):
                return value
            time.sleep(0.1)
        raise TimeoutError(f"waited {timeout} s for {expression}; problems: {self.problems()}")

    def open(self, path: Path) -> None:
        """Load a report and wait until the viewer says it is ready (or failed)."""
        self.events.clear()
        self.loads += 1  # a fresh query string: the old document must not pass for the new one
        url = f"{path.resolve().as_uri()}?load={self.loads}"
        self.send("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && (document.documentElement?.dataset.ready === 'true'"
                      " || document.getElementById('loading')?.classList.contains('error'))")

    def goto(self, url: str, ready: str, timeout: float = 120) -> None:
        """Load ``url`` (an app the test serves; its origin is allowed) and wait until ``ready`` is true."""
        self.events.clear()
        origin = "/".join(url.split("/")[:3]) + "/"
        if origin not in self.allowed_origins:
            self.allowed_origins += (origin,)
        self.send("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && ({ready})", timeout)

    def set_files(self, selector: str, paths: list[Path]) -> None:
        """Choose files in an ``<input type=file>`` as a user would (the page gets its change event)."""
        root = self.send("DOM.getDocument", depth=0)["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        if not node:
            raise RuntimeError(f"no element matches {selector}")
        self.send("DOM.setFileInputFiles", nodeId=node, files=[str(Path(p).resolve()) for p in paths])

    def allow_downloads(self, folder: Path) -> None:
        """Save downloads into ``folder`` under their own names."""
        folder.mkdir(parents=True, exist_ok=True)
        self.send("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(folder.resolve()),
                  eventsEnabled=True)

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions, log errors and requests to other than local schemes and
        ``allowed_origins`` seen so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                found.append("exception: " + params["exceptionDetails"].get("exception", {}).get("description", "?"))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append("log: " + params["entry"]["text"])
            elif method == "Network.requestWillBeSent" and not params["request"]["url"].startswith(
                    LOCAL_SCHEMES + self.allowed_origins):
                found.append("network: " + params["request"]["url"])
        return found

    def center_of(self, selector: str) -> tuple[float, float]:
        box = self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                            " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        return box[0], box[1]

    def mouse(self, kind: str, x: float, y: float, buttons: int = 1) -> None:
        self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", buttons=buttons, clickCount=1)

    def click(self, selector: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).scrollIntoView({{block: 'center'}})")
        x, y = self.center_of(selector)
        self.mouse("mousePressed", x, y)
        self.mouse("mouseReleased", x, y, buttons=0)

    def drag(self, selector: str, dx: float, dy: float, steps: int = 8) -> None:
        x, y = self.center_of(selector)
        self.mouse("mousePressed", x, y)
        for i in range(1, steps + 1):
            self.mouse("mouseMoved", x + dx * i / steps, y + dy * i / steps)
        self.mouse("mouseReleased", x + dx, y + dy, buttons=0)

    def canvas_digest(self, canvas_id: str) -> int:
        """A checksum of a canvas's pixels, after the next two animation frames (renders are batched)."""
        return self.evaluate(
            "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => {"
            f" const c = document.getElementById({json.dumps(canvas_id)});"
            " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let h = 0; for (let i = 0; i < d.length; i += 4) h = (h * 31 + d[i] + 3 * d[i + 1] + 7 * d[i + 2]) >>> 0;"
            " r(h); })))")

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", **params)["data"]))
        return path

    def close(self) -> None:
        if getattr(self, "socket", None):
            self.socket.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.profile, ignore_errors=True)
