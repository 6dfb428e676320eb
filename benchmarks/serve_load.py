"""`jaxseg serve` under load and faults, against a real server process on 127.0.0.1 (issue 15).

    python benchmarks/serve_load.py                      # trains a smoke model, ~3-5 minutes
    python benchmarks/serve_load.py --run RUN --jobs 20  # an existing run folder
    python benchmarks/serve_load.py --baseline 525fcd9   # also the standard-library server of that commit

Measured on `python cli.py serve` (uvicorn) and, with ``--baseline COMMIT``, on the
ThreadingHTTPServer app of that commit (extracted with ``git archive``), both bound to
127.0.0.1 and a free port, every count and wait bounded:

- requests/s and p50/p99 latency of ``GET /api/info`` with 50 concurrent keep-alive clients;
- threads and RSS of the server process before and after 500 requests without a cookie (and the
  session folders they left), and with 200 idle connections open (connected, sending nothing);
- the latency of a normal request behind those 200 idle connections;
- a cross-origin ``text/plain`` POST to ``/api/jobs`` (the new server must answer 403);
- ``--jobs`` explanation jobs in a row on one phantom case: seconds per job and RSS after each
  (flat once the predictor is cached); then ``kill -9`` during a job, a restart on the same
  ``--workdir``, and whether the finished jobs' results and the cut-off job's state came back.

Prints a Markdown table. Latencies depend on what else the machine runs: say so when quoting.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
CASE = "Phantom_9_000"  # the one phantom case (seed 9) the servers list


class Server:
    """A `serve` process; ``host``/``port`` once it printed its address (within 120 s)."""

    def __init__(self, cli: Path, args: list[str], pythonpath: str | None = None):
        env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
        self.process = subprocess.Popen([PYTHON, str(cli), "serve", "--port", "0", *args], cwd=cli.parent, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.process.stdout.readline, "")), daemon=True).start()
        deadline = time.monotonic() + 120
        while not (m := next((re.search(r"jaxseg serve: http://([\d.]+):(\d+)", x) for x in list(self.lines)
                              if "jaxseg serve: http" in x), None)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise SystemExit(f"serve did not start: {''.join(self.lines)}")
            time.sleep(0.05)
        self.host, self.port = m[1], int(m[2])

    def stats(self) -> tuple[int, float]:
        """(threads, RSS in MB) of the server process, from /proc."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M)[1])
        rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)[1]) / 1024
        return threads, rss

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 60) -> tuple[int, bytes, dict]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            answer = connection.getresponse()
            return answer.status, answer.read(), dict(answer.getheaders())
        finally:
            connection.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


async def _load(host: str, port: int, clients: int, per_client: int) -> tuple[float, float, float, int]:
    """``clients`` keep-alive connections, ``per_client`` GET /api/info each; (req/s, p50 ms, p99 ms, errors)."""
    latencies: list[float] = []
    errors = 0
    request = f"GET /api/info HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for _ in range(per_client):
                start = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head)[1])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
                errors += not head.startswith(b"HTTP/1.1 200")
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), 300)
    elapsed = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    return len(latencies) / elapsed, 1000 * statistics.median(latencies), 1000 * q[98], errors


def connection_rows(server: Server, sessions_dir: Path | None) -> dict[str, str]:
    rows: dict[str, str] = {}
    threads, rss = server.stats()
    rows["threads / RSS (MB) at start"] = f"{threads} / {rss:.0f}"
    rps, p50, p99, errors = asyncio.run(_load(server.host, server.port, 50, 40))
    rows["GET /api/info, 50 concurrent clients: requests/s"] = f"{rps:.0f}"
    rows["  p50 / p99 latency (ms)"] = f"{p50:.1f} / {p99:.1f}" + (f" ({errors} errors)" if errors else "")
    threads, rss = server.stats()
    rows["  threads / RSS (MB) after that load"] = f"{threads} / {rss:.0f}"
    for _ in range(500):  # new connection, no cookie: a health check, a crawler, a script
        server.request("GET", "/api/info")
    threads, rss = server.stats()
    rows["after 500 cookie-less requests: threads / RSS (MB)"] = f"{threads} / {rss:.0f}"
    if sessions_dir is not None:
        folders = sum(p.is_dir() for p in sessions_dir.iterdir()) if sessions_dir.is_dir() else 0
        rows["  session folders left by these and the 2,000 above"] = str(folders)
    idle = [socket.create_connection((server.host, server.port)) for _ in range(200)]
    try:
        time.sleep(1.0)
        threads, rss = server.stats()
        rows["with 200 idle connections open: threads / RSS (MB)"] = f"{threads} / {rss:.0f}"
        latencies = []
        for _ in range(20):
            start = time.perf_counter()
            status, _, _ = server.request("GET", "/api/info", timeout=30)
            latencies.append(time.perf_counter() - start)
        rows["  a normal request behind them: median latency (ms)"] = f"{1000 * statistics.median(latencies):.1f}"
    finally:
        for sock in idle:
            sock.close()
    job = json.dumps({"checkpoint": "0", "source": "case", "case": CASE, "mc_samples": 1}).encode()
    status, body, _ = server.request("POST", "/api/jobs", job, {"Content-Type": "text/plain", "Origin": "http://evil.example"})
    rows["another site's text/plain POST of a valid job: status"] = str(status) + (" (queued)" if status == 202 else "")
    return rows


def wait_job(server: Server, cookie: str, job_id: str, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = json.loads(server.request("GET", f"/api/jobs/{job_id}", headers={"Cookie": cookie})[1])
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.1)
    raise SystemExit(f"job {job_id} did not finish in {timeout} s")


def start_job(server: Server, cookie: str | None, case: str) -> tuple[dict, str]:
    status, body, headers = server.request(
        "POST", "/api/jobs", json.dumps({"checkpoint": "0", "source": "case", "case": case, "mc_samples": 5}).encode(),
        {"Content-Type": "application/json", **({"Cookie": cookie} if cookie else {})})
    if status != 202:
        raise SystemExit(f"job refused: {status} {body!r}")
    cookie = cookie or headers["set-cookie"].split(";")[0]
    return json.loads(body), cookie


def job_rows(cli: Path, run: Path, data: Path, workdir: Path, n_jobs: int) -> dict[str, str]:
    rows: dict[str, str] = {}
    args = ["--checkpoint", str(run), "--data", str(data), "--workdir", str(workdir)]
    server = Server(cli, args)
    cookie, seconds, rss, done = None, [], [], []
    case = CASE
    try:
        for _ in range(n_jobs):
            start = time.perf_counter()
            job, cookie = start_job(server, cookie, case)
            finished = wait_job(server, cookie, job["id"])
            seconds.append(time.perf_counter() - start)
            if finished["state"] != "done":
                raise SystemExit(f"job failed: {finished['error']}")
            done.append(finished["id"])
            rss.append(server.stats()[1])
        rows[f"{n_jobs} jobs in a row: seconds, first / median of the rest"] = (
            f"{seconds[0]:.1f} / {statistics.median(seconds[1:]):.1f}")
        rows["  RSS (MB) after job 1 / 2 / 10 / last"] = " / ".join(f"{rss[i]:.0f}" for i in (0, 1, min(9, n_jobs - 1), -1))
        rows["  RSS growth from job 2 to the last (MB)"] = f"{rss[-1] - rss[1]:+.0f}"
        seg = server.request("GET", f"/api/jobs/{done[-1]}/files/segmentation", headers={"Cookie": cookie})[1]
        job, cookie = start_job(server, cookie, case)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            state = json.loads(server.request("GET", f"/api/jobs/{job['id']}", headers={"Cookie": cookie})[1])
            if state["state"] == "running" and len(state["steps"]) >= 2:
                break
            time.sleep(0.05)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(30)
    finally:
        server.stop()
    restarted = Server(cli, args)
    try:
        info = json.loads(restarted.request("GET", "/api/info", headers={"Cookie": cookie})[1])
        states = {j["id"]: j["state"] for j in info["jobs"]}
        kept = sum(states.get(i) == "done" for i in done)
        same = restarted.request("GET", f"/api/jobs/{done[-1]}/files/segmentation", headers={"Cookie": cookie})[1] == seg
        cut = restarted.request("GET", f"/api/jobs/{job['id']}/files/segmentation", headers={"Cookie": cookie})[0]
        rows["kill -9 mid-job, restart: finished jobs shown done"] = f"{kept} of {len(done)}"
        rows["  last result downloads byte for byte / cut-off job state"] = f"{'yes' if same else 'NO'} / {states.get(job['id'])}"
        rows["  a file of the cut-off job: status"] = str(cut)
    finally:
        restarted.stop()
    return rows


def baseline_tree(commit: str, folder: Path) -> Path:
    """The repository at ``commit`` (its jaxseg and cli.py), for the old server."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "jaxseg", "cli.py"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def run_for_baseline(run: Path, old: Path, folder: Path) -> Path:
    """A copy of ``run`` whose config.toml the old code reads: settings added since are dropped
    (one at a time, as the old loader names them)."""
    import shutil
    copy = folder / "run"
    shutil.copytree(run, copy, symlinks=True)
    for _ in range(20):
        check = subprocess.run([PYTHON, "-c", f"from jaxseg import config; config.load({str(copy / 'config.toml')!r})"],
                               env={**os.environ, "PYTHONPATH": str(old)}, cwd=old, capture_output=True, text=True)
        unknown = re.search(r"unknown setting '(\w+)\.(\w+)'", check.stdout + check.stderr)
        if check.returncode == 0 or unknown is None:
            return copy
        text, section = [], None
        for line in (copy / "config.toml").read_text().splitlines():
            section = line.strip()[1:-1] if line.strip().startswith("[") else section
            if not (section == unknown[1] and re.match(rf"\s*{unknown[2]}\s*=", line)):
                text.append(line)
        (copy / "config.toml").write_text("\n".join(text) + "\n")
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a run folder (default: train a smoke model)")
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--baseline", help="a commit whose standard-library server to measure too (e.g. 525fcd9)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve_load-") as tmp:
        tmp = Path(tmp)
        run = args.run
        if run is None:
            run = tmp / "smoke"
            subprocess.run([PYTHON, str(ROOT / "cli.py"), "train", "--config", "demo", "--smoke", "--workdir", str(run)],
                           check=True, stdout=subprocess.DEVNULL)
        data = tmp / "data"
        subprocess.run([PYTHON, str(ROOT / "cli.py"), "phantom", "--out", str(data), "--cases", "1", "--seed", "9",
                        "--shape", "64", "64", "48"], check=True, stdout=subprocess.DEVNULL)
        columns: dict[str, dict[str, str]] = {}
        server = Server(ROOT / "cli.py", ["--checkpoint", str(run), "--data", str(data), "--workdir", str(tmp / "work")])
        try:
            columns["jaxseg serve (Starlette + uvicorn)"] = connection_rows(server, tmp / "work" / "sessions")
        finally:
            server.stop()
        if args.baseline:
            old = baseline_tree(args.baseline, Path(tempfile.mkdtemp(dir=tmp)))
            old_run = run_for_baseline(run, old, Path(tempfile.mkdtemp(dir=tmp)))
            server = Server(old / "cli.py", ["--checkpoint", str(old_run), "--data", str(data), "--workdir",
                                             str(tmp / "old_work")], str(old))
            try:
                columns[f"before ({args.baseline}: ThreadingHTTPServer)"] = connection_rows(server, tmp / "old_work" / "sessions")
            finally:
                server.stop()
        columns["jaxseg serve (Starlette + uvicorn)"].update(
            job_rows(ROOT / "cli.py", run, data, tmp / "jobs_work", args.jobs))
    names = list(columns)
    print(f"\n`python benchmarks/serve_load.py{' --baseline ' + args.baseline if args.baseline else ''}`, "
          f"{os.cpu_count()} CPU cores, jobs on a 64 x 64 x 48 phantom with a smoke model (5 MC-dropout passes)\n")
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for row in columns[names[0]]:
        print(f"| {row} | " + " | ".join(columns[n].get(row, "") for n in names) + " |")


if __name__ == "__main__":
    main()
