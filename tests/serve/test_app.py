"""The web app's routes in-process (Starlette's TestClient): uploads and their checks, sessions,
the Host and cross-site checks, the job lifecycle with server-sent events and Range downloads,
the dataset menu, the predictor cache.

The app has the smoke run as its only checkpoint and a 1 MB upload limit.
"""
from __future__ import annotations

import contextlib
import gzip
import html.parser
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from jaxseg.errors import JaxsegError
from jaxseg.serve import catalog, web
from jaxseg.serve.app import App, ServeSettings
from tests.serve.conftest import HEADERS, SHAPE, Client, wait_for_job


@contextlib.contextmanager
def served(settings: ServeSettings):
    """The app and its ASGI application; closed at the end."""
    app = App(settings)
    try:
        yield app, web.build(app)
    finally:
        app.close()


@pytest.fixture(scope="module")
def server(smoke_run, phantom_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("serve_work")
    with served(ServeSettings(checkpoints=(smoke_run,), data=phantom_root, workdir=workdir, max_upload_mb=1)) as s:
        yield s


@pytest.fixture
def client(server) -> Client:
    return Client(server[1])


def nifti_bytes(array: np.ndarray, tmp_path: Path, name: str = "v.nii.gz") -> bytes:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return path.read_bytes()


def session_folders(app: App) -> set[Path]:
    return {p for p in (app.workdir / "sessions").iterdir() if p.is_dir()}


def test_page_and_info(client, smoke_run):
    status, page, headers = client.request("GET", "/")
    assert status == 200 and b'<script src="/static/app.js">' in page
    assert "default-src 'self'" in headers["content-security-policy"] and headers["x-content-type-options"] == "nosniff"
    assert "set-cookie" not in headers  # reading the page makes no session
    for asset in ("/static/app.js", "/static/app.css"):
        assert client.get(asset)[0] == 200
    status, info = client.get("/api/info")
    assert status == 200 and info["data"] and info["max_upload_bytes"] == 2**20 and info["message"] is None
    [checkpoint] = info["checkpoints"]
    assert checkpoint["modalities"] == ["flair", "t1", "t1ce", "t2"] and checkpoint["path"] == str(smoke_run)
    assert info["uploads"] == {} and info["jobs"] == []


class Inputs(html.parser.HTMLParser):
    """The attributes of every ``<input>`` of a page, by id."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str | None]] = {}

    def handle_starttag(self, tag, attrs):
        if tag == "input" and dict(attrs).get("id"):
            self.by_id[dict(attrs)["id"]] = dict(attrs)


def test_the_pages_mc_field_offers_what_the_server_accepts(server, client):
    """The template writes the server's limits into the form: the field's max is accepted by the
    job check and one more is refused; its initial value is what a request without one gets."""
    app, _ = server
    inputs = Inputs()
    inputs.feed(client.request("GET", "/")[1].decode())
    field = inputs.by_id["mc-samples"]
    request = {"checkpoint": next(iter(app.checkpoints)), "source": "case", "case": next(iter(app.cases))}
    _, largest, _, _ = app.check_job_request(None, {**request, "mc_samples": int(field["max"])})
    assert largest.mc_samples == int(field["max"])
    with pytest.raises(JaxsegError, match="MC-dropout passes"):
        app.check_job_request(None, {**request, "mc_samples": int(field["max"]) + 1})
    assert app.check_job_request(None, request)[1].mc_samples == int(field["value"]) and field["min"] == "1"


def test_the_page_template_escapes_what_it_is_given():
    assert web.templates().from_string("<p>{{ name }}</p>").render(name='<img src=x onerror="alert(1)">') == \
        "<p>&lt;img src=x onerror=&#34;alert(1)&#34;&gt;</p>"


def test_a_session_starts_with_the_first_upload_only(server, phantom_case):
    app, asgi = server
    before_sessions, before_folders = len(app.sessions), session_folders(app)
    for _ in range(25):  # health checks, crawlers, a script without cookies
        anonymous = Client(asgi)
        assert anonymous.get("/")[0] == 200 and anonymous.get("/api/info")[0] == 200
        assert anonymous.get("/api/cases")[0] == 200 and anonymous.get("/api/jobs/abc")[0] == 404
    assert len(app.sessions) == before_sessions and session_folders(app) == before_folders
    user = Client(asgi)
    flair = phantom_case / f"{phantom_case.name}_flair.nii.gz"
    status, _, headers = user.request("POST", "/api/upload/flair", flair.read_bytes(), {"X-Filename": "f.nii.gz", **HEADERS})
    assert status == 200
    cookie = headers["set-cookie"]
    assert cookie.startswith(web.COOKIE + "=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert len(app.sessions) == before_sessions + 1 and len(session_folders(app) - before_folders) == 1
    status, _, headers = user.request("POST", "/api/upload/flair", flair.read_bytes(), {"X-Filename": "f.nii.gz", **HEADERS})
    assert status == 200 and "set-cookie" not in headers and len(app.sessions) == before_sessions + 1
    token = cookie.split(";")[0].split("=", 1)[1]
    assert all(token not in p.read_text() for p in (app.workdir / "sessions").rglob("session.json"))  # only its hash


def test_upload_limit_and_the_server_keeps_serving(server, client):
    app, _ = server
    status, answer = client.upload("flair", b"\0" * (2**20 + 1), "big.nii")
    assert status == 413 and "is 1.0 MB; this server accepts up to 1 MB" in answer["error"]
    assert client.get("/api/info")[0] == 200


def test_the_cap_holds_while_streaming_without_a_content_length(server, client):
    """A chunked body has no Content-Length to check first: the cap is counted as it arrives, and
    nothing of it stays on disk."""
    app, _ = server
    sent = []

    def body():
        for _ in range(40):
            sent.append(64 * 1024)
            yield b"\1" * (64 * 1024)

    answer = client.http.post("/api/upload/t2", content=body(), headers={"X-Filename": "endless.nii", **HEADERS})
    assert answer.status_code == 413 and "larger than this server accepts (1 MB" in answer.json()["error"]
    assert sum(sent) > 2**20 and "content-length" not in answer.request.headers
    assert not list(app.workdir.rglob(".part-*")) and not list(app.workdir.rglob("t2.nii*"))


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
    before = session_folders(app)
    status, answer = client.upload(slot, content, f"my_{kind}.nii.gz")
    assert status == 400
    # A first request refused leaves no session: its answer set no cookie (a fresh client).
    assert session_folders(app) == before
    message = answer["error"]
    assert message.startswith(f"my_{kind}.nii.gz: ") and str(app.workdir) not in message
    expected = {"text": "not a NIfTI file", "truncated": "truncated or corrupt", "2d": "expected a 3D volume",
                "4d": "expected a 3D volume", "nan": "NaN", "seg_labels": "neither BraTS"}[kind]
    assert expected in message, message
    status, info = client.get("/api/info")
    assert status == 200 and slot not in info["uploads"]
    assert not list(app.workdir.rglob(".part-*"))


def test_a_volume_on_another_grid_is_refused(client, phantom_case, tmp_path):
    client.upload_case(phantom_case, ("flair",))
    status, answer = client.upload("t1", nifti_bytes(np.ones((20, 20, 20), np.float32), tmp_path), "other.nii.gz")
    assert status == 400 and "other.nii.gz: shape" in answer["error"] and "(flair)" in answer["error"]


def test_client_names_never_become_paths(server, client, phantom_case):
    app, _ = server
    flair = (phantom_case / f"{phantom_case.name}_flair.nii.gz").read_bytes()
    status, answer = client.upload("flair", flair, "../../../../escaped.nii.gz")
    assert status == 200 and answer["name"] == "escaped.nii.gz"  # shown, never used as a path
    root = app.workdir.parent
    assert not list(root.rglob("escaped*")) and not list(Path("/tmp").glob("escaped*"))
    # a slot that is not one of the known ones is no route at all, whatever it spells
    assert client.request("POST", "/api/upload/..%2F..%2Fevil", flair, HEADERS)[0] == 404
    assert not list(root.rglob("evil*"))


def test_foreign_host_headers_are_refused(server, smoke_run, tmp_path):
    app, asgi = server
    status, answer, _ = Client(asgi).request("GET", "/api/info", headers={"Host": "attacker.example:7860"})
    assert status == 403 and "only answers to 127.0.0.1" in answer["error"]
    assert Client(asgi).request("GET", "/api/info", headers={"Host": "localhost:7860"})[0] == 200
    with served(ServeSettings(checkpoints=(smoke_run,), workdir=tmp_path, allowed_hosts=("seg.example.org",))) as (_, proxied):
        assert Client(proxied).request("GET", "/api/info", headers={"Host": "seg.example.org"})[0] == 200
        assert Client(proxied).request("GET", "/api/info", headers={"Host": "other.example.org"})[0] == 403


JOB = json.dumps({"checkpoint": "0", "source": "case", "case": "Phantom_5_000"}).encode()


@pytest.mark.parametrize("headers, reason", [
    ({"Content-Type": "text/plain", "Origin": "http://evil.example"}, "Origin http://evil.example is not this server"),
    ({"Content-Type": "application/json", "Origin": "http://localhost:8000"}, "cross-origin"),  # same site, other port
    ({"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site: cross-site"),
    ({"Content-Type": "text/plain"}, "needs Content-Type: application/json or an X-Jaxseg-Request header"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, "needs Content-Type: application/json"),
])
def test_cross_site_job_requests_are_refused(server, headers, reason):
    """What another web page can make a browser send (a form, a simple fetch) is refused before
    any session or job exists."""
    app, asgi = server
    before = (len(app.sessions), session_folders(app))
    status, answer, _ = Client(asgi).request("POST", "/api/jobs", JOB, headers)
    assert status == 403 and reason in answer["error"], answer
    assert (len(app.sessions), session_folders(app)) == before


def test_cross_site_uploads_and_deletes_are_refused(server, client, phantom_case):
    flair = (phantom_case / f"{phantom_case.name}_flair.nii.gz").read_bytes()
    assert client.request("POST", "/api/upload/flair", flair, {"X-Filename": "f.nii.gz"})[0] == 403  # no header
    assert client.request("POST", "/api/upload/flair", flair,
                          {"X-Filename": "f.nii.gz", "Origin": "http://evil.example", **HEADERS})[0] == 403
    client.upload_case(phantom_case, ("flair",))
    assert client.request("DELETE", "/api/upload/flair")[0] == 403
    assert "flair" in client.get("/api/info")[1]["uploads"]
    same_origin = {"Origin": "http://127.0.0.1:7860", "Sec-Fetch-Site": "same-origin", **HEADERS}
    assert client.request("DELETE", "/api/upload/flair", headers=same_origin)[0] == 200
    assert "flair" not in client.get("/api/info")[1]["uploads"]


def test_missing_modalities_are_named(client, phantom_case):
    client.upload_case(phantom_case, ("flair",))
    status, answer = client.post_json("/api/jobs", {"checkpoint": "0", "source": "upload"})
    assert status == 400 and answer["error"].endswith("missing: t1, t1ce, t2")


@pytest.mark.parametrize("request_, message", [
    ({"checkpoint": "9"}, "choose a model"),
    ({"checkpoint": "0", "source": "case", "case": "../Phantom"}, "choose a case"),
    ({"checkpoint": "0", "source": "case", "case": "Phantom_5_000", "mc_samples": 0}, "MC-dropout passes"),
    ({"checkpoint": "0", "source": "case", "case": "Phantom_5_000", "target": "XX"}, "Grad-CAM target"),
    ({"checkpoint": "0", "source": "upload"}, "upload them first"),
])
def test_bad_job_requests(server, request_, message):
    app, asgi = server
    before = len(app.sessions)
    status, answer = Client(asgi).post_json("/api/jobs", request_)
    assert status == 400 and message in answer["error"]
    assert len(app.sessions) == before  # a refused request makes no session


@pytest.fixture(scope="module")
def finished_upload_job(server, phantom_case):
    """One user uploads the phantom's four modalities and its seg, runs a job and waits for it."""
    user = Client(server[1])
    user.upload_case(phantom_case)
    status, job = user.post_json("/api/jobs", {"checkpoint": "0", "source": "upload", "mc_samples": 2})
    assert status == 202 and job["state"] in ("queued", "running"), job
    again = user.post_json("/api/jobs", {"checkpoint": "0", "source": "upload", "mc_samples": 2})
    assert again[0] == 429 and "has not finished" in again[1]["error"]  # one job at a time per session
    with user.http.stream("GET", f"/api/jobs/{job['id']}/events") as answer:  # to the end of the job
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in answer.iter_lines() if line.startswith("data: ")]
    return user, wait_for_job(user, job["id"]), events


@pytest.mark.slow
def test_job_lifecycle(finished_upload_job, phantom_case):
    user, job, _ = finished_upload_job
    assert job["state"] == "done", job["error"]
    from jaxseg.serve import jobs
    # Loading + every step of explain (this case has ground truth, MC dropout and compared layers).
    assert job["progress"] == 1.0 and len(job["steps"]) == jobs.EXPLAIN_STEPS + 1
    assert job["steps"][-1].endswith("report written to out/upload_report.html")  # no server folder
    result = job["result"]
    assert result["caption"] and set(result["volumes_ml"]) == {"predicted", "ground_truth"}
    keys = [f["key"] for f in result["files"]]
    assert keys[:2] == ["segmentation", "report"] and "gradcam" in keys and "mc_variance" in keys
    # Every file explain wrote is offered, the per-sequence attribution maps named for their sequence.
    assert {"ig_flair", "ig_t1", "ig_t1ce", "ig_t2"} <= set(keys)
    assert {f["key"]: f["label"] for f in result["files"]}["ig_t1ce"] == "Whole-tumor attribution, T1ce (NIfTI)"
    status, seg, headers = user.request("GET", f"/api/jobs/{job['id']}/files/segmentation")
    assert status == 200 and headers["content-disposition"] == 'attachment; filename="upload_seg.nii.gz"'
    labels = nib.Nifti1Image.from_bytes(gzip.decompress(seg))
    flair = nib.load(phantom_case / f"{phantom_case.name}_flair.nii.gz")
    assert labels.shape == SHAPE and np.array_equal(labels.affine, flair.affine)
    assert set(np.unique(np.asarray(labels.dataobj))) <= {0, 1, 2, 4}
    status, report, headers = user.request("GET", result["report_url"])
    assert status == 200 and headers["content-type"].startswith("text/html") and b'id="report-data"' in report
    assert headers["content-security-policy"] == "frame-ancestors 'self'"
    assert user.get(f"/api/jobs/{job['id']}/files/nothing")[0] == 404


@pytest.mark.slow
def test_progress_is_pushed_as_server_sent_events(finished_upload_job):
    _, job, events = finished_upload_job
    assert len(events) >= 3 and events[-1] == job  # the last event is the finished job, as polled
    steps = [len(e["steps"]) for e in events]
    progress = [e["progress"] for e in events]
    assert steps == sorted(steps) and progress == sorted(progress) and progress[-1] == 1.0
    assert {e["state"] for e in events[:-1]} <= {"queued", "running"} and events[-1]["state"] == "done"


@pytest.mark.slow
def test_downloads_answer_range_requests(finished_upload_job, server):
    user, job, _ = finished_upload_job
    whole = user.request("GET", f"/api/jobs/{job['id']}/files/probabilities")[1]
    [on_disk] = server[0].workdir.glob(f"sessions/*/jobs/{job['id']}/out/*_prob.nii.gz")
    assert len(whole) > 1000 and whole == on_disk.read_bytes()
    status, part, headers = user.request("GET", f"/api/jobs/{job['id']}/files/probabilities", headers={"Range": "bytes=100-899"})
    assert status == 206 and part == whole[100:900]
    assert headers["content-range"] == f"bytes 100-899/{len(whole)}" and headers["accept-ranges"] == "bytes"
    status, tail, _ = user.request("GET", f"/api/jobs/{job['id']}/files/probabilities", headers={"Range": "bytes=-10"})
    assert status == 206 and tail == whole[-10:]
    status, _, headers = user.request("GET", f"/api/jobs/{job['id']}/files/probabilities",
                                      headers={"Range": f"bytes={len(whole)}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{len(whole)}"


@pytest.mark.slow
def test_sessions_do_not_see_each_other(finished_upload_job, server, phantom_case):
    owner, job, _ = finished_upload_job
    stranger = Client(server[1])
    stranger.upload_case(phantom_case, ("flair",))
    status, info = stranger.get("/api/info")
    assert status == 200 and list(info["uploads"]) == ["flair"] and info["jobs"] == []
    for path in (f"/api/jobs/{job['id']}", f"/api/jobs/{job['id']}/report", f"/api/jobs/{job['id']}/files/segmentation",
                 f"/api/jobs/{job['id']}/events"):
        assert stranger.get(path)[0] == 404
    assert [j["id"] for j in owner.get("/api/info")[1]["jobs"]] == [job["id"]]


@pytest.mark.slow
def test_a_dataset_case_and_the_cached_predictor(finished_upload_job, server, phantom_root, monkeypatch):
    """The second job of the model neither restores the checkpoint nor lowers (traces and
    compiles) any program: the app keeps the predictor, JAX its compiled explanations."""
    import jax

    from jaxseg.infer import predict as predict_lib
    app, asgi = server
    restores, lowered = [], []
    real_restore = predict_lib.load_model_state
    monkeypatch.setattr(predict_lib, "load_model_state", lambda *a, **k: restores.append(1) or real_restore(*a, **k))
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kw: lowered.append(event) if event == "/jax/core/compile/jaxpr_to_mlir_module_duration" else None)
    builds = app.predictors.builds
    client = Client(asgi)
    status, cases = client.get("/api/cases")
    assert status == 200 and [c["id"] for c in cases] == ["Phantom_5_000", "Phantom_5_001"]
    assert all(c["seg"] and c["modalities"] == ["flair", "t1", "t1ce", "t2"] for c in cases)
    # the same settings as the first job (mc_samples, target): the same programs
    status, job = client.post_json("/api/jobs", {"checkpoint": "0", "source": "case", "case": "Phantom_5_001",
                                                 "mc_samples": 2, "target": "mean"})
    assert status == 202, job
    job = wait_for_job(client, job["id"])
    assert job["state"] == "done", job["error"]
    assert job["result"]["case"] == "Phantom_5_001" and "ground_truth" in job["result"]["volumes_ml"]
    assert not list(phantom_root.rglob("*_report.html"))  # results go to the app's folder, not the dataset
    assert app.predictors.builds == builds == 1 and restores == [] and lowered == []


def test_checkpoint_discovery(smoke_run, tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "first").symlink_to(smoke_run)
    [found] = catalog.find_checkpoints([tmp_path / "runs"])  # a folder of runs
    assert found.run.resolve() == smoke_run.resolve() and found.label.startswith("first:") and found.modalities == ("flair", "t1", "t1ce", "t2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(JaxsegError, match="not a jaxseg run folder"):
        catalog.find_checkpoints([tmp_path / "empty"])
    monkeypatch.chdir(tmp_path)  # no demo_output/run here, no demo model in this JAXSEG_HOME
    monkeypatch.setenv("JAXSEG_HOME", str(tmp_path / "home"))
    assert all(name != "demo model" for _, name in catalog.default_models())
    demo = tmp_path / "home" / "models" / "demo"
    demo.parent.mkdir(parents=True)
    demo.symlink_to(smoke_run)  # where `jaxseg demo` leaves its model
    assert [c.label.split(":")[0] for c in catalog.find_checkpoints([])][-1] == "demo model"


def test_without_a_model_the_page_is_up_and_jobs_say_why(tmp_path, monkeypatch, phantom_root):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JAXSEG_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(catalog, "default_models", lambda: [])  # whatever is bundled with this checkout
    with served(ServeSettings(workdir=tmp_path / "work", data=phantom_root)) as (app, asgi):
        user = Client(asgi)
        assert user.get("/")[0] == 200
        status, info = user.get("/api/info")
        assert status == 200 and info["checkpoints"] == [] and "no model yet" in info["message"]
        status, answer = user.post_json("/api/jobs", {"checkpoint": "0", "source": "case", "case": "Phantom_5_000"})
        assert status == 409 and "no model yet: pass --checkpoint" in answer["error"] and len(app.sessions) == 0


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
    with served(ServeSettings(checkpoints=(flair_run,))) as (app, asgi):
        user = Client(asgi)
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
