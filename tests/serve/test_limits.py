"""The app's bounds and faults without a model: the session cap and expiry, the bounded job queue,
a failing job failing alone, and a restart on the same working folder (after a clean stop, and
after a crash mid-job).

`explain` is replaced by a stand-in that writes the same kinds of files and waits when told to,
so these tests are about the server, not about JAX; the route code, sessions, job runner and
on-disk records are the real ones.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from jaxseg.explain import run as explain_run
from jaxseg.files import write_text
from jaxseg.serve import web
from jaxseg.serve.app import App, ServeSettings
from tests.serve.conftest import Client, wait_for_job


class FakeExplain:
    """Stands in for `jaxseg.explain.run.explain`: says two steps, waits for ``release`` when the
    case is in ``hold``, raises what ``fail`` maps the case to, and writes a report and a seg."""

    def __init__(self):
        self.release, self.hold, self.fail, self.started = threading.Event(), set(), {}, []

    def __call__(self, path, checkpoint, out, settings, say, predictor=None):
        case = Path(path).name.split("_flair")[0]
        self.started.append(case)
        say("read the case")
        if case in self.hold:
            self.release.wait(30)
        if case in self.fail:
            raise self.fail[case]
        say("segmented")
        files = {"segmentation": Path(out) / f"{case}_seg.nii.gz", "summary": Path(out) / f"{case}_explain.json"}
        write_text(files["segmentation"], f"segmentation of {case}")
        write_text(files["summary"], json.dumps({"case": case}))
        report = Path(out) / f"{case}_report.html"
        write_text(report, f"<html>report of {case}</html>")
        return explain_run.ExplainResult(case, report, files, {"case": case, "caption": f"caption of {case}"})


@pytest.fixture
def fake(monkeypatch):
    fake = FakeExplain()
    monkeypatch.setattr(explain_run, "explain", fake)
    yield fake
    fake.release.set()


def make_app(smoke_run, phantom_root, workdir, **settings) -> App:
    app = App(ServeSettings(checkpoints=(smoke_run,), data=phantom_root, workdir=workdir, **settings))
    app.predictors.get = lambda run, batch_size=16: None  # the stand-in needs no model
    return app


def same_browser(client: Client, asgi) -> Client:
    """A client of another app (the restarted server) with ``client``'s cookies."""
    again = Client(asgi)
    again.http.cookies = client.http.cookies
    return again


def job_request(case: str) -> dict:
    return {"checkpoint": "0", "source": "case", "case": case, "mc_samples": 2}


def test_the_queue_is_bounded_per_session_and_overall(fake, smoke_run, phantom_root, tmp_path):
    fake.hold.add("Phantom_5_000")
    app = make_app(smoke_run, phantom_root, tmp_path, max_queue=1, max_jobs_per_session=1)
    try:
        asgi = web.build(app)
        first, second, third = Client(asgi), Client(asgi), Client(asgi)
        status, running = first.post_json("/api/jobs", job_request("Phantom_5_000"))
        assert status == 202
        deadline = time.monotonic() + 10
        while first.get(f"/api/jobs/{running['id']}")[1]["state"] != "running" and time.monotonic() < deadline:
            time.sleep(0.02)
        status, answer = first.post_json("/api/jobs", job_request("Phantom_5_001"))
        assert status == 429 and "your previous job has not finished" in answer["error"]  # one per session
        status, waiting = second.post_json("/api/jobs", job_request("Phantom_5_001"))
        assert status == 202 and waiting["state"] == "queued"
        status, answer = third.post_json("/api/jobs", job_request("Phantom_5_001"))
        assert status == 429 and answer["error"] == ("the server's queue is full (1 jobs waiting, jaxseg serve "
                                                     "--max-queue); try again in a few minutes")
        # The refused job left nothing behind: no session (its answer set no cookie), no folder.
        assert len(app.sessions) == 2
        assert len([p for p in app.sessions.root.iterdir() if p.is_dir()]) == 2
        fake.release.set()
        assert wait_for_job(first, running["id"])["state"] == "done"
        assert wait_for_job(second, waiting["id"])["state"] == "done"
        status, job = third.post_json("/api/jobs", job_request("Phantom_5_001"))  # room again
        assert status == 202 and wait_for_job(third, job["id"])["state"] == "done"
    finally:
        app.close()


@pytest.mark.parametrize("failure, message", [
    (MemoryError(), "out of memory: try fewer MC-dropout passes or a smaller volume"),
    (ValueError("a bug"), "internal error (ValueError: a bug); see the server log"),
])
def test_a_failing_job_fails_alone_and_the_server_keeps_serving(fake, smoke_run, phantom_root, tmp_path,
                                                                failure, message):
    fake.fail["Phantom_5_000"] = failure
    app = make_app(smoke_run, phantom_root, tmp_path)
    try:
        user = Client(web.build(app))
        status, job = user.post_json("/api/jobs", job_request("Phantom_5_000"))
        assert status == 202
        failed = wait_for_job(user, job["id"])
        assert failed["state"] == "failed" and failed["error"] == message
        assert user.get(f"/api/jobs/{job['id']}/files/segmentation")[0] == 409
        status, job = user.post_json("/api/jobs", job_request("Phantom_5_001"))
        assert status == 202 and wait_for_job(user, job["id"])["state"] == "done"
    finally:
        app.close()


def test_finished_results_survive_a_restart(fake, smoke_run, phantom_root, tmp_path):
    app = make_app(smoke_run, phantom_root, tmp_path)
    user = Client(web.build(app))
    status, job = user.post_json("/api/jobs", job_request("Phantom_5_000"))
    assert status == 202 and wait_for_job(user, job["id"])["state"] == "done"
    before = user.get(f"/api/jobs/{job['id']}")[1]
    app.close()

    again = make_app(smoke_run, phantom_root, tmp_path)  # a new server on the same --workdir
    try:
        assert again.restored_sessions == 1
        user = same_browser(user, web.build(again))
        status, info = user.get("/api/info")
        assert status == 200 and info["jobs"] == [before]
        status, seg, _ = user.request("GET", f"/api/jobs/{job['id']}/files/segmentation")
        assert status == 200 and seg == b"segmentation of Phantom_5_000"
        assert user.get(f"/api/jobs/{job['id']}/report")[1] == b"<html>report of Phantom_5_000</html>"
        assert Client(web.build(again)).get(f"/api/jobs/{job['id']}")[0] == 404  # still this browser's only
    finally:
        again.close()


def test_a_job_cut_off_by_a_crash_shows_as_interrupted(fake, smoke_run, phantom_root, tmp_path):
    """The first server is never closed: what it leaves on disk mid-job is what `kill -9` leaves
    (tests/serve/test_server.py kills a real process)."""
    fake.hold.add("Phantom_5_000")
    crashed = make_app(smoke_run, phantom_root, tmp_path)
    user = Client(web.build(crashed))
    status, job = user.post_json("/api/jobs", job_request("Phantom_5_000"))
    assert status == 202
    deadline = time.monotonic() + 10
    while len(user.get(f"/api/jobs/{job['id']}")[1]["steps"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)  # running, and holding after its second step
    [out] = tmp_path.glob(f"sessions/*/jobs/{job['id']}")
    write_text(out / "out" / "Phantom_5_000_seg.nii.gz", "half")  # a file of the cut-off job

    restarted = make_app(smoke_run, phantom_root, tmp_path)
    try:
        user = same_browser(user, web.build(restarted))
        status, info = user.get("/api/info")
        [shown] = info["jobs"]
        assert shown["state"] == "interrupted" and "stopped while this job was running" in shown["error"]
        assert "result" not in shown and shown["steps"] == ["loading the model " + restarted.checkpoints["0"].label,
                                                             "read the case"]
        for path in ("report", "files/segmentation"):
            status, answer = user.get(f"/api/jobs/{job['id']}/{path}")
            assert status == 409 and "interrupted" in answer["error"]
        assert not (out / "out").exists()  # the partial outputs are gone, not just hidden
        status, again = user.post_json("/api/jobs", job_request("Phantom_5_001"))  # the session goes on
        assert status == 202 and wait_for_job(user, again["id"])["state"] == "done"
    finally:
        fake.release.set()
        crashed.close()
        restarted.close()


def test_sessions_are_capped(smoke_run, phantom_case, tmp_path):
    app = App(ServeSettings(checkpoints=(smoke_run,), workdir=tmp_path, max_sessions=2))
    try:
        asgi = web.build(app)
        flair = phantom_case / f"{phantom_case.name}_flair.nii.gz"
        users = [Client(asgi) for _ in range(3)]
        users[0].upload_case(phantom_case, ("flair",))
        users[1].upload_case(phantom_case, ("flair",))
        status, answer = users[2].upload("flair", flair.read_bytes(), flair.name)
        assert status == 503 and "as many sessions as it allows (2, jaxseg serve --max-sessions)" in answer["error"]
        assert len(app.sessions) == 2 and len(list((tmp_path / "sessions").iterdir())) == 2
        users[0].upload_case(phantom_case, ("t1",))  # existing sessions go on
    finally:
        app.close()


def test_idle_sessions_expire_with_their_files(smoke_run, phantom_case, tmp_path):
    app = App(ServeSettings(checkpoints=(smoke_run,), workdir=tmp_path, session_ttl=0.5, max_sessions=1))
    try:
        asgi = web.build(app)
        user = Client(asgi)
        user.upload_case(phantom_case, ("flair",))
        [folder] = (tmp_path / "sessions").iterdir()
        assert (folder / "uploads" / "flair.nii.gz").is_file()
        deadline = time.monotonic() + 10
        while folder.exists() and time.monotonic() < deadline:  # the sweeper removes it, no request needed
            time.sleep(0.05)
        assert not folder.exists() and len(app.sessions) == 0
        status, info = user.get("/api/info")  # the old cookie no longer names a session
        assert status == 200 and info["uploads"] == {}
        Client(asgi).upload_case(phantom_case, ("flair",))  # its place in the cap is free again
    finally:
        app.close()
    assert len(list((tmp_path / "sessions").iterdir())) == 1  # with --workdir a live session is kept at exit
