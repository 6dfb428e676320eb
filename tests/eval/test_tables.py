"""Summary statistics and CSV files of an evaluation."""
import csv
import math

import numpy as np
import pytest
from rich.console import Console

from jaxseg.eval import tables
from jaxseg.eval.slices import SCORES
from jaxseg.eval.volumes import METRICS


def test_statistics_are_population_ones():
    values = [0.2, 0.9, 0.4, 0.4]
    assert tables.statistics(values) == pytest.approx(
        {"mean": np.mean(values), "std": np.sqrt(np.mean((np.array(values) - np.mean(values)) ** 2)),
         "median": 0.4, "n": 4})


def test_region_summary_groups_rows_by_region():
    rng = np.random.default_rng(0)
    per_case = [{"case": f"c{i}", "region": region, **{m: float(rng.random()) for m in METRICS}}
                for i in range(3) for region in ("WT", "TC", "ET")]
    summary = tables.summarize_regions(per_case)
    assert [(r["region"], r["metric"]) for r in summary] == [(g, m) for g in ("WT", "TC", "ET") for m in METRICS]
    for row in summary:
        values = [r[row["metric"]] for r in per_case if r["region"] == row["region"]]
        assert row["mean"] == pytest.approx(sum(values) / 3) and row["median"] == sorted(values)[1]
    result = tables.Summary(per_case, summary, None, None, cases=("c0", "c1", "c2"))
    assert result.stat("TC", "hd95", "median") == next(r["median"] for r in summary
                                                        if (r["region"], r["metric"]) == ("TC", "hd95"))
    with pytest.raises(KeyError):
        result.stat("XX", "dice")
    console = Console(record=True, width=120)
    console.print(result.render())
    assert "3 case(s)" in console.export_text()


def test_slice_summary_has_three_levels():
    per_slice = [{"dice": d, "iou": d / 2, "precision": 1.0, "recall": d} for d in (0.5, 1.0, 0.0)]
    per_patient = [{"dice": d, "iou": d, "precision": d, "recall": d} for d in (0.25, 0.75)]
    dataset = dict(zip(SCORES, (0.6, 0.4, 0.9, 0.5)))
    summary = tables.summarize_slices(per_slice, per_patient, dataset)
    levels = {(r["level"], r["metric"]): r for r in summary}
    assert levels[("slice", "dice")]["mean"] == pytest.approx(0.5) and levels[("slice", "dice")]["n"] == 3
    assert levels[("patient", "dice")]["median"] == pytest.approx(0.5) and levels[("patient", "dice")]["n"] == 2
    assert levels[("dataset", "precision")] == {"level": "dataset", "metric": "precision", "mean": 0.9, "std": 0.0,
                                                "median": 0.9, "n": 3}


def test_csv_writes_six_significant_digits_and_names_non_finite_values(tmp_path):
    rows = [{"case": "a", "x": 1 / 3, "n": 7}, {"case": "b", "x": math.nan, "n": 0},
            {"case": "c", "x": math.inf, "n": 1}]
    path = tables.write_csv(tmp_path / "sub" / "t.csv", ("case", "x", "n"), rows)
    with open(path, newline="") as f:
        read = list(csv.reader(f))
    assert read == [["case", "x", "n"], ["a", "0.333333", "7"], ["b", "nan", "0"], ["c", "inf", "1"]]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["t.csv"]  # no temporary left behind
