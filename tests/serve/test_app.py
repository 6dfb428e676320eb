"""The web app over HTTP: uploads and their checks, sessions, the job lifecycle, the dataset menu.

The server runs in a thread of the test process on 127.0.0.1 and a free port, with the smoke
run as its only checkpoint and a 1 MB upload limit.
"""
from __future__ import annotations

import contextlib
import gzip
import http.client
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from jaxseg.errors import JaxsegError
from jaxseg.serve import catalog
from jaxseg.serve.app import App, ServeSettings, make_server, url_of
from tests.serve.conftest import SHAPE, Client


@contextlib.contextmanager
def running(settings: ServeSettings):
    """The app served from a thread on 127.0.0.1; yields (app, base URL)."""
    app = App(settings)
    httpd = make_server(app)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield app, url_of(httpd)
    finally:
        httpd.shutdown()
        httpd.server_close()
        app.close()


@pytest.fixture(scope="module")
def server(smoke_run, phantom_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("serve_work")
    with running(ServeSettings(port=0, checkpoints=(smoke_run,), data=phantom_root, workdir=workdir,
                               max_upload_mb=1)) as served:
        yield served


@pytest.fixture
def client(server) -> Client:
    return Client(server[1])


def wait_for_job(client: Client, job_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, job = client.get(f"/api/jobs/{job_id}")
        assert status == 200, job
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} still {job['state']} after {timeout} s: {job['steps']}")


def nifti_bytes(array: np.ndarray, tmp_path: Path, name: str = "v.nii.gz") -> bytes:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return path.read_bytes()


def test_page_and_info(client, smoke_run):
    status, page, headers = client.request("GET", "/")
    assert status == 200 and b'<script src="/static/app.js">' in page
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
    for asset in ("/static/app.js", "/static/app.css"):
        assert client.get(asset)[0] == 200
    status, info = client.get("/api/info")
    assert status == 200 and info["data"] and info["max_upload_bytes"] == 2**20
    [checkpoint] = info["checkpoints"]
    assert checkpoint["modalities"] == ["flair", "t1", "t1ce", "t2"] and checkpoint["path"] == str(smoke_run)
    assert info["uploads"] == {} and info["jobs"] == []


def test_upload_limit_and_the_server_keeps_serving(client):
    status, answer = client.upload("flair", b"\0" * (2**20 + 1), "big.nii")
    assert status == 413 and "up to 1 MB" in answer["error"]
    assert client.get("/api/info")[0] == 200


@pytest.mark.parametrize("kind", ["text", "truncated", "2d", "4d", "nan", "seg_labels"])
def test_bad_uploads_give_a_message_naming_the_file(server, client, phantom_case, tmp_path, kind):
    app, _ = server
    good = (phantom_case / f"{phantom_case.name}_flair.nii.gz").read_bytes()
    slot, content = "flair", {
        "text": lambda: b"patient notes, not an image\n" * 20,
        "truncated": lambda: good[: len(good) // 2],
        "2d": lambda: nifti_bytes(np.zeros((8, 8), np.float32), tmp_path),
        "4d": lambda: nifti_bytes(np.zeros((8, 8, 8, 3), np.float32), tmp_path),
        "nan": lambda: nifti_bytes(np.full((8, 8, 8), np.nan, np.float32), tmp_path),
        "seg_labels": lambda: nifti_bytes(np.full((8, 8, 8), 7, np.uint8), tmp_path),
    }[kind]()
    if kind == "seg_labels":
        slot = "seg"
    status, answer = client.upload(slot, content, f"my_{kind}.nii.gz")
    assert status == 400
    message = answer["error"]
    assert message.startswith(f"my_{kind}.nii.gz: ") and str(app.workdir) not in message
    expected = {"text": "not a NIfTI file", "truncated": "truncated or corrupt", "2d": "expected a 3D volume",
                "4d": "expected a 3D volume", "nan": "NaN", "seg_labels": "neither BraTS"}[kind]
    assert expected in message, message
    status, info = client.get("/api/info")
    assert status == 200 and slot not in info["uploads"]


def test_a_volume_on_another_grid_is_refused(client, phantom_case, tmp_path):
    client.upload_case(phantom_case, ("flair",))
    status, answer = client.upload("t1", nifti_bytes(np.ones((20, 20, 20), np.float32), tmp_path), "other.nii.gz")
    assert status == 400 and "other.nii.gz: shape" in answer["error"] and "(flair)" in answer["error"]


def test_client_names_never_become_paths(server, client, phantom_case):
    app, base = server
    flair = (phantom_case / f"{phantom_case.name}_flair.nii.gz").read_bytes()
    status, answer = client.upload("flair", flair, "../../../../escaped.nii.gz")
    assert status == 200 and answer["name"] == "escaped.nii.gz"  # shown, never used as a path
    root = app.workdir.parent
    assert not list(root.rglob("escaped*")) and not list(Path("/tmp").glob("escaped*"))
    # a slot that is not one of the five is no route at all, whatever it spells
    connection = http.client.HTTPConnection(base.split("//")[1].rstrip("/"))
    connection.request("POST", "/api/upload/..%2F..%2Fevil", body=flair)
    assert connection.getresponse().status == 404
    assert not list(root.rglob("evil*"))


def test_foreign_host_headers_are_refused(server):
    connection = http.client.HTTPConnection(server[1].split("//")[1].rstrip("/"))
    connection.request("GET", "/api/info", headers={"Host": "attacker.example:7860"})
    assert connection.getresponse().status == 403


def test_missing_modalities_are_named(client, phantom_case):
    client.upload_case(phantom_case, ("flair",))
    status, answer = client.post_json("/api/jobs", {"checkpoint": "0", "source": "upload"})
    assert status == 400 and answer["error"].endswith("missing: t1, t1ce, t2")


@pytest.mark.parametrize("request_, message", [
    ({"checkpoint": "9"}, "choose a model"),
    ({"checkpoint": "0", "source": "case", "case": "../Phantom"}, "choose a case"),
    ({"checkpoint": "0", "source": "case", "case": "Phantom_5_000", "mc_samples": 0}, "MC-dropout passes"),
    ({"checkpoint": "0", "source": "case", "case": "Phantom_5_000", "target": "XX"}, "Grad-CAM target"),
])
def test_bad_job_requests(client, request_, message):
    status, answer = client.post_json("/api/jobs", request_)
    assert status == 400 and message in answer["error"]


@pytest.fixture(scope="module")
def finished_upload_job(server, phantom_case):
    """One user uploads the phantom's four modalities and its seg, runs a job and waits for it."""
    user = Client(server[1])
    user.upload_case(phantom_case)
    status, job = user.post_json("/api/jobs", {"checkpoint": "0", "source": "upload", "mc_samples": 2})
    assert status == 202 and job["state"] in ("queued", "running"), job
    again = user.post_json("/api/jobs", {"checkpoint": "0", "source": "upload", "mc_samples": 2})
    assert again[0] == 400 and "has not finished" in again[1]["error"]  # one job at a time per session
    return user, wait_for_job(user, job["id"])


@pytest.mark.slow
def test_job_lifecycle(finished_upload_job, phantom_case):
    user, job = finished_upload_job
    assert job["state"] == "done", job["error"]
    assert job["progress"] == 1.0 and len(job["steps"]) == 8  # loading + the seven of explain
    assert job["steps"][-1].endswith("report written to out/upload_report.html")  # no server folder
    result = job["result"]
    assert result["caption"] and set(result["volumes_ml"]) == {"predicted", "ground_truth"}
    keys = [f["key"] for f in result["files"]]
    assert keys[:2] == ["segmentation", "report"] and "gradcam" in keys and "mc_variance" in keys
    status, seg, headers = user.request("GET", f"/api/jobs/{job['id']}/files/segmentation")
    assert status == 200 and headers["Content-Disposition"] == 'attachment; filename="upload_seg.nii.gz"'
    labels = nib.Nifti1Image.from_bytes(gzip.decompress(seg))
    flair = nib.load(phantom_case / f"{phantom_case.name}_flair.nii.gz")
    assert labels.shape == SHAPE and np.array_equal(labels.affine, flair.affine)
    assert set(np.unique(np.asarray(labels.dataobj))) <= {0, 1, 2, 4}
    status, report, headers = user.request("GET", result["report_url"])
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b'id="report-data"' in report
    assert user.get(f"/api/jobs/{job['id']}/files/nothing")[0] == 404


@pytest.mark.slow
def test_sessions_do_not_see_each_other(finished_upload_job, server):
    owner, job = finished_upload_job
    stranger = Client(server[1])
    status, info = stranger.get("/api/info")
    assert status == 200 and info["uploads"] == {} and info["jobs"] == []
    for path in (f"/api/jobs/{job['id']}", f"/api/jobs/{job['id']}/report", f"/api/jobs/{job['id']}/files/segmentation"):
        assert stranger.get(path)[0] == 404
    assert [j["id"] for j in owner.get("/api/info")[1]["jobs"]] == [job["id"]]


@pytest.mark.slow
def test_a_dataset_case_from_the_menu(client, phantom_root):
    status, cases = client.get("/api/cases")
    assert status == 200 and [c["id"] for c in cases] == ["Phantom_5_000", "Phantom_5_001"]
    assert all(c["seg"] and c["modalities"] == ["flair", "t1", "t1ce", "t2"] for c in cases)
    status, job = client.post_json("/api/jobs", {"checkpoint": "0", "source": "case", "case": "Phantom_5_001",
                                                 "mc_samples": 2, "target": "predicted:TC"})
    assert status == 202, job
    job = wait_for_job(client, job["id"])
    assert job["state"] == "done", job["error"]
    assert job["result"]["case"] == "Phantom_5_001" and "ground_truth" in job["result"]["volumes_ml"]
    assert not list(phantom_root.rglob("*_report.html"))  # results go to the app's folder, not the dataset


def test_checkpoint_discovery(smoke_run, tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "first").symlink_to(smoke_run)
    [found] = catalog.find_checkpoints([tmp_path / "runs"])  # a folder of runs
    assert found.run.resolve() == smoke_run.resolve() and found.label.startswith("first:") and found.modalities == ("flair", "t1", "t1ce", "t2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(JaxsegError, match="not a jaxseg run folder"):
        catalog.find_checkpoints([tmp_path / "empty"])
    monkeypatch.chdir(tmp_path)  # no demo_output/run here
    with pytest.raises(JaxsegError, match="run `jaxseg demo` first"):
        catalog.find_checkpoints([])


@pytest.fixture(scope="module")
def flair_run(tmp_path_factory) -> Path:
    """A smoke-size whole-tumor model of FLAIR alone (the pediatric-BraTS setting)."""
    from jaxseg import config as config_lib
    from jaxseg.train import loop
    cfg = config_lib.load("demo", (*config_lib.SMOKE_OVERRIDES, 'data.modalities=["flair"]', "data.target=wt"))
    return loop.train(cfg, tmp_path_factory.mktemp("flair_run"), quiet=True).workdir


@pytest.mark.slow
def test_a_single_flair_volume_for_a_flair_model(flair_run, phantom_case, tmp_path):
    """One plain NIfTI file (no BraTS name) is a whole case for a FLAIR-only model; the app's own
    temporary folder is gone when it stops."""
    with running(ServeSettings(port=0, checkpoints=(flair_run,))) as (app, base):
        user = Client(base)
        [checkpoint] = user.get("/api/info")[1]["checkpoints"]
        assert checkpoint["modalities"] == ["flair"] and checkpoint["regions"] == ["WT"]
        flair = (phantom_case / f"{phantom_case.name}_flair.nii.gz").read_bytes()
        assert user.upload("flair", flair, "scan.nii.gz")[0] == 200
        status, job = user.post_json("/api/jobs", {"checkpoint": "0", "mc_samples": 2, "target": "predicted"})
        assert status == 202, job
        job = wait_for_job(user, job["id"])
        assert job["state"] == "done", job["error"]
        assert set(job["result"]["volumes_ml"]) == {"predicted"}  # no seg uploaded: no ground truth
        status, seg, _ = user.request("GET", f"/api/jobs/{job['id']}/files/segmentation")
        labels = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(seg)).dataobj)
        assert labels.shape == SHAPE and set(np.unique(labels)) <= {0, 1}  # a whole-tumor mask
        workdir = app.workdir
        assert workdir.is_dir()
    assert not workdir.exists()


def test_cli_serve_reports_a_bad_checkpoint_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from jaxseg import cli
    result = CliRunner().invoke(cli.app, ["serve", "--checkpoint", str(tmp_path / "nowhere"), "--port", "0"])
    assert result.exit_code == 2 and "no such checkpoint folder" in result.output
    assert "Traceback" not in result.output


def test_a_bug_answers_500_and_the_server_keeps_serving(server, client, monkeypatch, capsys):
    app, _ = server
    monkeypatch.setattr(app, "info", lambda session: 1 / 0)
    status, answer = client.get("/api/info")
    assert status == 500 and answer["error"] == "internal error (ZeroDivisionError); see the server log"
    assert "ZeroDivisionError" in capsys.readouterr().err  # the traceback is in the server's log
    monkeypatch.undo()
    assert client.get("/api/info")[0] == 200
