"""The job runner alone (no model): one job at a time in submission order, places in the queue,
failures kept to their job, stop()."""
from __future__ import annotations

import threading
import time

import pytest

from jaxseg.errors import JaxsegError
from jaxseg.serve.jobs import EXPLAIN_STEPS, JobRunner, new_job


def wait(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.01)


@pytest.fixture
def runner():
    runner = JobRunner()
    yield runner
    runner.stop()
    runner.join(10)


def test_jobs_run_one_at_a_time_in_order(runner, tmp_path):
    release, ran, running_together = threading.Event(), [], []

    def work(job):
        running_together.append(sum(j.state == "running" for j in jobs))
        job.say("step one")
        release.wait(10)
        ran.append(job.id)
        return {"report": job.folder / "r.html"}, {"case": job.id}

    jobs = [new_job(tmp_path, f"job {i}", work) for i in range(3)]
    for job in jobs:
        runner.submit(job)
    wait(lambda: jobs[0].state == "running")
    assert [runner.position(j) for j in jobs] == [0, 0, 1]  # running, next, after one
    assert jobs[0].progress == pytest.approx(1 / (EXPLAIN_STEPS + 1))
    release.set()
    wait(lambda: all(j.state == "done" for j in jobs))
    assert ran == [j.id for j in jobs] and running_together == [1, 1, 1]
    assert all(j.progress == 1.0 and j.summary == {"case": j.id} for j in jobs)


def test_a_failing_job_fails_alone(runner, tmp_path):
    def bad_input(job):
        raise JaxsegError(f"{job.folder}/input/upload_t1.nii.gz: image data is truncated or corrupt")

    def bug(job):
        raise ZeroDivisionError("oops")

    jobs = [new_job(tmp_path, "bad", bad_input), new_job(tmp_path, "bug", bug),
            new_job(tmp_path, "good", lambda job: ({}, {}))]
    for job in jobs:
        runner.submit(job)
    wait(lambda: not any(j.active for j in jobs))
    assert [j.state for j in jobs] == ["failed", "failed", "done"]
    assert jobs[0].error == "input/upload_t1.nii.gz: image data is truncated or corrupt"  # no server folder
    assert jobs[1].error.startswith("internal error (ZeroDivisionError: oops)")


def test_stop_fails_the_waiting_jobs(tmp_path):
    runner, release = JobRunner(), threading.Event()
    first = new_job(tmp_path, "first", lambda job: (release.wait(10), ({}, {}))[1])
    second = new_job(tmp_path, "second", lambda job: ({}, {}))
    runner.submit(first)
    runner.submit(second)
    wait(lambda: first.state == "running")
    runner.stop()
    release.set()
    runner.join(10)
    assert first.state == "done" and second.state == "failed" and "stopped" in second.error


def test_a_full_queue_refuses_and_keeps_order(tmp_path):
    from jaxseg.serve.jobs import QueueFull
    runner, release = JobRunner(max_waiting=2), threading.Event()
    try:
        jobs = [new_job(tmp_path, f"job {i}", lambda job: (release.wait(10), ({}, {}))[1]) for i in range(4)]
        runner.submit(jobs[0])
        wait(lambda: jobs[0].state == "running")  # running jobs do not count as waiting
        runner.submit(jobs[1])
        runner.submit(jobs[2])
        with pytest.raises(QueueFull):
            runner.submit(jobs[3])
        assert runner.waiting() == 2 and jobs[3].state == "queued"
        release.set()
        wait(lambda: jobs[2].state == "done")
        runner.submit(jobs[3])
        wait(lambda: jobs[3].state == "done")
    finally:
        release.set()
        runner.stop()
        runner.join(10)


def test_job_records_on_disk(tmp_path):
    """job.json follows the job; read back, a finished job offers its files, an active one is
    interrupted and offers none, an unreadable record is no job."""
    import json

    from jaxseg.serve.jobs import load_job

    def work(job):
        (job.folder / "out").mkdir()
        (job.folder / "out" / "seg.nii.gz").write_bytes(b"seg")
        return {"segmentation": job.folder / "out" / "seg.nii.gz"}, {"case": "c"}

    runner = JobRunner()
    try:
        done = new_job(tmp_path, "done", work)
        runner.submit(done)
        wait(lambda: done.state == "done")
        record = json.loads((done.folder / "job.json").read_text())
        assert record["state"] == "done" and record["files"] == {"segmentation": "out/seg.nii.gz"}
        again = load_job(done.folder)
        assert again.state == "done" and again.files["segmentation"].read_bytes() == b"seg"
        assert again.summary == {"case": "c"} and again.steps == done.steps

        queued = new_job(tmp_path, "never ran", work)  # as a killed server leaves it
        (queued.folder / "out").mkdir()
        cut = load_job(queued.folder)
        assert cut.state == "interrupted" and cut.files == {} and not (queued.folder / "out").exists()
        assert json.loads((queued.folder / "job.json").read_text())["state"] == "interrupted"

        (done.folder / "out" / "seg.nii.gz").unlink()  # a file removed behind the server's back
        assert load_job(done.folder).state == "failed"
        (done.folder / "job.json").write_text("{not json")
        assert load_job(done.folder) is None
    finally:
        runner.stop()
        runner.join(10)
