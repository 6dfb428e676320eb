"""Subject-level splits and their manifest."""
import json
import random

import numpy as np
import pytest

from jaxseg.data.split import SPLITS, load_manifest, save_manifest, split_cases, split_counts, subject_id
from jaxseg.errors import JaxsegError


def mixed_ids(subjects: int, rng: random.Random) -> list[str]:
    """Case ids of ``subjects`` subjects: BraTS 2021 ids and BraTS 2023 ids with 1-3 timepoints."""
    ids = []
    for s in range(subjects):
        if s % 2:
            ids.append(f"BraTS2021_{s:05d}")
        else:
            ids += [f"BraTS-GLI-{s:05d}-{t:03d}" for t in range(rng.randint(1, 3))]
    return ids


def test_subject_id_drops_only_a_brats_2023_timepoint():
    assert subject_id("BraTS-GLI-00001-000") == "BraTS-GLI-00001"
    assert subject_id("BraTS-GLI-00001-001") == "BraTS-GLI-00001"
    assert subject_id("BraTS-MEN-RT-0042-1") == "BraTS-MEN-RT-0042"
    for own in ("BraTS2021_00000", "Brats18_2013_2_1", "Phantom_0_001", "case-001", "BraTS-GLI-00001"):
        assert subject_id(own) == own


def test_no_subject_in_two_splits_and_union_is_everything_over_many_sizes_and_seeds():
    rng = random.Random(0)
    for subjects in (1, 2, 3, 4, 5, 7, 12, 30, 64):
        ids = mixed_ids(subjects, rng)
        for seed in range(15):
            splits = split_cases(ids, (0.7, 0.15, 0.15), seed=seed)
            assert set(splits) == set(SPLITS)
            flat = [c for name in SPLITS for c in splits[name]]
            assert sorted(flat) == sorted(ids), "every case exactly once"
            owner = {}
            for name in SPLITS:
                assert splits[name] == sorted(splits[name])
                for c in splits[name]:
                    assert owner.setdefault(subject_id(c), name) == name, f"{c} is in two splits"
            n_train, n_val, n_test = (len({subject_id(c) for c in splits[k]}) for k in SPLITS)
            assert n_train >= 1
            assert n_val >= 1 or subjects < 2
            assert n_test >= 1 or subjects < 3


def test_counts_round_as_documented():
    assert split_counts(100, (0.7, 0.15, 0.15)) == (70, 15, 15)
    assert split_counts(12, (0.7, 0.15, 0.15)) == (8, 2, 2)
    assert split_counts(10, (0.7, 0.15, 0.15)) == (7, 2, 1)
    assert split_counts(3, (0.7, 0.15, 0.15)) == (1, 1, 1)
    assert split_counts(2, (0.7, 0.15, 0.15)) == (1, 1, 0)
    assert split_counts(1, (0.7, 0.15, 0.15)) == (1, 0, 0)
    assert split_counts(5, (1.0, 0.0, 0.0)) == (5, 0, 0)
    assert split_counts(3, (0.8, 0.2, 0.0)) == (2, 1, 0)
    for n in range(1, 60):
        counts = split_counts(n, (0.6, 0.25, 0.15))
        assert sum(counts) == n
        if n >= 3:  # past the small-set minimums, each count is within one of its exact share
            assert all(abs(c - r * n) < 1 + 1e-9 for c, r in zip(counts, (0.6, 0.25, 0.15))), (n, counts)


def test_ratios_are_respected_on_a_large_set():
    ids = [f"BraTS2021_{i:05d}" for i in range(1000)]
    splits = split_cases(ids, (0.8, 0.1, 0.1), seed=3)
    assert [len(splits[k]) for k in SPLITS] == [800, 100, 100]


def test_deterministic_by_seed_and_independent_of_input_order():
    ids = mixed_ids(40, random.Random(1))
    first = split_cases(ids, seed=7)
    shuffled = ids[:]
    random.Random(2).shuffle(shuffled)
    assert split_cases(shuffled, seed=7) == first
    assert split_cases(tuple(reversed(ids)), seed=7) == first
    assert split_cases(ids, seed=8) != first


def test_timepoints_of_one_subject_stay_together():
    ids = [f"BraTS-GLI-{s:05d}-{t:03d}" for s in range(20) for t in range(3)]
    for seed in range(10):
        splits = split_cases(ids, seed=seed)
        for name in SPLITS:
            for c in splits[name]:
                siblings = {f"{subject_id(c)}-{t:03d}" for t in range(3)}
                assert siblings <= set(splits[name])


def test_fixed_validation_and_test_cases_are_honoured():
    ids = [f"BraTS2021_{i:05d}" for i in range(20)]
    fixed_val = ["BraTS2021_00003", "BraTS2021_00011"]
    splits = split_cases(ids, (0.7, 0.15, 0.15), seed=0, val_cases=fixed_val)
    assert splits["val"] == fixed_val
    assert len(splits["test"]) == 3  # the test ratio still applies to all 20 cases
    assert not set(fixed_val) & (set(splits["train"]) | set(splits["test"]))

    fixed_test = ["BraTS2021_00000"]
    splits = split_cases(ids, seed=5, val_cases=fixed_val, test_cases=fixed_test)
    assert splits["val"] == fixed_val and splits["test"] == fixed_test
    assert len(splits["train"]) == 17


def test_a_fixed_timepoint_brings_its_whole_subject():
    ids = [f"BraTS-GLI-{s:05d}-{t:03d}" for s in range(6) for t in range(2)]
    splits = split_cases(ids, seed=0, test_cases=["BraTS-GLI-00002-001"])
    assert splits["test"] == ["BraTS-GLI-00002-000", "BraTS-GLI-00002-001"]


@pytest.mark.parametrize("kwargs, match", [
    ({"val_cases": ["BraTS2021_00001", "nope_1", "nope_2"]}, "nope_1, nope_2"),
    ({"test_cases": ["missing"]}, "test_cases.*missing"),
    ({"val_cases": ["BraTS2021_00001"], "test_cases": ["BraTS2021_00001"]}, "both val and test"),
    ({"val_cases": [f"BraTS2021_{i:05d}" for i in range(3)],
      "test_cases": [f"BraTS2021_{i:05d}" for i in range(3, 5)]}, "no case for training"),
    ({"ratios": (0.5, 0.5)}, "ratios"),
    ({"ratios": (0.5, 0.3, 0.3)}, "ratios"),
    ({"ratios": (0.0, 0.5, 0.5)}, "ratios"),
])
def test_bad_splits_raise_jaxseg_errors(kwargs, match):
    ids = [f"BraTS2021_{i:05d}" for i in range(5)]
    with pytest.raises(JaxsegError, match=match):
        split_cases(ids, **kwargs)


def test_empty_and_duplicate_ids_raise():
    with pytest.raises(JaxsegError, match="no cases"):
        split_cases([])
    with pytest.raises(JaxsegError, match="more than once: a"):
        split_cases(["a", "b", "a"])


def test_manifest_round_trip(tmp_path):
    ids = mixed_ids(15, random.Random(4))
    splits = split_cases(ids, (0.7, 0.15, 0.15), seed=2)
    path = tmp_path / "run" / "split.json"
    save_manifest(splits, path, seed=2, ratios=(0.7, 0.15, 0.15), count=np.int64(len(ids)))
    loaded = load_manifest(path)
    assert {k: loaded[k] for k in SPLITS} == splits
    assert loaded["seed"] == 2 and loaded["ratios"] == [0.7, 0.15, 0.15] and loaded["count"] == len(ids)
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temporary left behind


def test_manifest_errors(tmp_path):
    with pytest.raises(JaxsegError, match="not found"):
        load_manifest(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    for text, match in [("{not json", "cannot read"), ("[1, 2]", "not a JSON object"),
                        (json.dumps({"train": ["a"], "val": []}), "'test'"),
                        (json.dumps({"train": ["a"], "val": ["a"], "test": []}), "both train and val")]:
        bad.write_text(text)
        with pytest.raises(JaxsegError, match=match):
            load_manifest(bad)
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(JaxsegError, match="cannot read"):
        load_manifest(bad)
