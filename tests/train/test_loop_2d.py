"""Training, resuming, predicting and evaluating on the 2D formats (figshare .mat, image folders)."""
import json

import imageio.v3 as iio
import jax
import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg.train import loop
from tests.data.formats2d import tumor_slice, write_figshare_mat, write_image_pair

TINY = (*config_lib.SMOKE_OVERRIDES, "train.epochs=2", "train.steps_per_epoch=2")


def figshare_set(root):
    """12 slices of 6 patients; 64x64 and non-square 64x48 slices, classes 1-3."""
    pids = {}
    for n in range(1, 13):
        image, mask = tumor_slice((64, 64) if n % 2 else (64, 48), (20, 16 + n), 6, seed=n)
        pids[str(n)] = f"MR{(n - 1) // 2:03d}"
        write_figshare_mat(root / f"brainTumorDataPublic_{(n - 1) // 6}" / f"{n}.mat", image, mask,
                           1 + n % 3, pids[str(n)])
    return pids


def tiny_figshare_run(tmp_path_factory):
    """(data root, run folder): a tiny whole-tumor U-Net with dropout, trained on :func:`figshare_set`
    (the explain and serve tests of 2D slices)."""
    root = tmp_path_factory.mktemp("figshare")
    figshare_set(root)
    cfg = config_lib.load("figshare_resunet34", [*TINY, "model.name=unet", "model.dropout=0.2", f"data.root={root}"])
    return root, loop.train(cfg, tmp_path_factory.mktemp("fig_run"), quiet=True).workdir


def lgg_set(root):
    """4 patient folders of 3 RGB TIFF slices each; a third of the masks are empty."""
    for p in range(4):
        patient = f"TCGA_XX_{p:04d}_20000101"
        for n in range(1, 4):
            image, mask = tumor_slice((48, 48), (16, 20), 5, seed=10 * p + n)
            rgb = np.stack([np.clip(image // 4, 0, 255)] * 3, axis=-1).astype(np.uint8)
            rgb[..., 1] //= 2
            write_image_pair(root / patient, f"{patient}_{n}", rgb, mask if n != 2 else 0 * mask, ".tif")


@pytest.fixture(scope="module")
def figshare_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("figshare")
    pids = figshare_set(root)
    cfg = config_lib.load("figshare_resunet34", [*TINY, "model.name=unet", f"data.root={root}"])
    return root, pids, cfg, loop.train(cfg, tmp_path_factory.mktemp("fig_run"), quiet=True)


@pytest.fixture(scope="module")
def lgg_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("kaggle_3m")
    lgg_set(root)
    cfg = config_lib.load("lgg_folder", [*TINY, f"data.root={root}"])
    return root, cfg, loop.train(cfg, tmp_path_factory.mktemp("lgg_run"), quiet=True)


def check_run(result, subject_of):
    run = result.workdir
    assert result.steps == 4
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(np.isfinite(h["train_loss"]) and 0 <= h["val_dice_WT"] <= 1 for h in history)
    assert "val_dice_TC" not in history[0]  # a binary target: whole tumor only
    splits = json.loads((run / "splits.json").read_text())
    owners = [{subject_of(c) for c in splits[name]} for name in ("train", "val", "test")]
    assert all(owners) and not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])
    return splits


def test_figshare_trains_with_slices_split_by_patient(figshare_run):
    root, pids, cfg, result = figshare_run
    splits = check_run(result, pids.__getitem__)
    assert sorted(sum((splits[k] for k in ("train", "val", "test")), [])) == sorted(pids, key=str)


def test_image_folder_trains_with_slices_split_by_patient_folder(lgg_run):
    root, cfg, result = lgg_run
    check_run(result, lambda case_id: case_id.split("/")[0])
    assert cfg.in_channels == 3


def test_a_2d_run_resumes_exactly(figshare_run, tmp_path):
    *_, cfg, uninterrupted = figshare_run
    workdir = tmp_path / "resumed"
    assert loop.train(cfg, workdir, max_steps=3, quiet=True).steps == 3
    resumed = loop.train(cfg, workdir, quiet=True)
    for a, b in zip(jax.tree.leaves(uninterrupted.state.params), jax.tree.leaves(resumed.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_predict_writes_a_png_of_the_input_size_and_evaluate_scores_it(figshare_run, tmp_path):
    from jaxseg.eval.run import evaluate_folders
    from jaxseg.infer.predict import predict
    root, pids, _, result = figshare_run
    one = next(root.rglob("2.mat"))  # 64 x 48: a transposed mask would be 48 x 64
    [p] = predict(one, result.workdir, tmp_path / "single" / "seg.nii.gz", probabilities=True)
    assert p.segmentation == tmp_path / "single" / "seg.png"
    mask = iio.imread(p.segmentation)
    assert mask.shape == (64, 48) and set(np.unique(mask)) <= {0, 255}
    prob = np.load(p.probabilities)
    assert prob.shape == (64, 48) and 0 <= prob.min() and prob.max() <= 1
    np.testing.assert_array_equal(mask > 0, prob > 0.5)
    predictions = predict(root, result.workdir, tmp_path / "pred")
    assert sorted(x.case_id for x in predictions) == sorted(pids, key=str)
    summary = evaluate_folders(tmp_path / "pred", root, tmp_path / "eval")
    assert len(summary.per_slice) == 12 and len(summary.per_patient) == 6
    assert {r["patient"] for r in summary.per_patient} == set(pids.values())
    # per-patient Dice pools the slices' confusion counts: recompute one patient from per_slice
    first = summary.per_patient[0]
    rows = [r for r in summary.per_slice if r["patient"] == first["patient"]]
    tp = sum(r["recall"] * r["ref_pixels"] for r in rows)
    denominator = sum(r["pred_pixels"] + r["ref_pixels"] for r in rows)
    assert first["dice"] == pytest.approx(2 * tp / denominator if denominator else 1.0)
    assert (tmp_path / "eval" / "per_patient.csv").read_text().startswith("patient,dice,")


def test_predict_on_an_image_folder_mirrors_its_patient_folders(lgg_run, tmp_path):
    from jaxseg.infer.predict import predict
    root, _, result = lgg_run
    predictions = predict(root, result.workdir, tmp_path / "pred")
    assert len(predictions) == 12
    for p in predictions:
        assert p.segmentation == tmp_path / "pred" / f"{p.case_id}.png"
        assert iio.imread(p.segmentation).shape == (48, 48)


def test_cli_predict_and_evaluate_on_an_image_folder(lgg_run, tmp_path):
    from typer.testing import CliRunner
    from jaxseg import cli
    root, _, result = lgg_run
    runner = CliRunner()
    out = runner.invoke(cli.app, ["predict", str(root), "--checkpoint", str(result.workdir), "--out", str(tmp_path / "p")])
    assert out.exit_code == 0, out.output
    out = runner.invoke(cli.app, ["evaluate", "--pred", str(tmp_path / "p"), "--ref", str(root), "--out",
                                  str(tmp_path / "e")])
    assert out.exit_code == 0, out.output
    assert "Evaluation of 12 slice(s) of 4 patient(s)" in out.output
    rows = (tmp_path / "e" / "per_slice.csv").read_text().splitlines()
    assert rows[0].startswith("case,patient,dice") and len(rows) == 13
    out = runner.invoke(cli.app, ["predict", str(root), "--checkpoint", str(result.workdir), "--out",
                                  str(tmp_path / "q"), "--min-component-ml", "1"])
    assert out.exit_code == 2 and "2D slices have none" in out.output
