"""pipeline: the slice source, augmentation, grain loaders, state round trips, device placement."""
from __future__ import annotations

import json
import pickle
import time

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxseg import config
from jaxseg.data import brats, formats, loader, phantom, pipeline, preprocess
from jaxseg.data.formats import brats_volumes
from jaxseg.errors import JaxsegError
from jaxseg.target import target_kind

SHAPE = (32, 32, 16)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    phantom.write_phantoms(root, cases=3, seed=0, shape=SHAPE)
    return brats.find_cases(root)


def _cfg(*overrides: str) -> config.Config:
    return config.load(None, ["data.image_size=32", "train.batch_size=4", "model.features=[4, 8]", *overrides])


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def test_slice_index_train_and_val(cases):
    cfg = _cfg()
    mods = config.canonical_modalities(cfg)
    val = brats_volumes.build_slice_index(cases, mods, cfg.data, seed=0, train=False)
    brain_slices = sum(int(brats.load_case(c, mods)[0].any(axis=(0, 1, 3)).sum()) for c in cases)
    assert val.shape == (brain_slices, 2) and val.dtype == np.int64
    assert set(val[:, 0]) == {0, 1, 2}
    train = brats_volumes.build_slice_index(cases, mods, cfg.data, seed=0, train=True)
    np.testing.assert_array_equal(train, val)  # defaults keep every brain slice
    tumor_only = brats_volumes.build_slice_index(cases, mods, _cfg("data.empty_slice_fraction=0.0").data, 0, True)
    for case_index, z in tumor_only:
        _, classes, _ = brats.load_case(cases[case_index], mods)
        assert classes[:, :, z].any()
    assert 0 < len(tumor_only) < len(train)
    # a fraction no case reaches drops every training case but never touches validation
    strict = _cfg("data.min_tumor_fraction=0.9").data
    assert len(brats_volumes.build_slice_index(cases, mods, strict, 0, True)) == 0
    assert len(brats_volumes.build_slice_index(cases, mods, strict, 0, False)) == len(val)


def test_slice_index_cache(cases, tmp_path, monkeypatch):
    cfg = _cfg("data.empty_slice_fraction=0.5")
    mods = config.canonical_modalities(cfg)
    first = brats_volumes.build_slice_index(cases, mods, cfg.data, 3, True, cache_dir=tmp_path)
    (stored,) = tmp_path.glob("slice_index_train_*.json")
    assert json.loads(stored.read_text())["index"] == first.tolist()

    def no_loading(*args, **kwargs):
        raise AssertionError("cached index should not load volumes")

    monkeypatch.setattr(brats, "load_case", no_loading)
    np.testing.assert_array_equal(brats_volumes.build_slice_index(cases, mods, cfg.data, 3, True, cache_dir=tmp_path), first)
    # a new seed needs a new index, but the prepared volumes stored beside the first one serve it
    other_seed = brats_volumes.build_slice_index(cases, mods, cfg.data, 4, True, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("slice_index_train_*.json"))) == 2
    assert len(other_seed) == len(first)  # the same share of empty slices ...
    assert not np.array_equal(other_seed, first)  # ... but other ones: the seed is used
    monkeypatch.undo()
    changed = brats_volumes.build_slice_index(cases, mods, _cfg("data.image_size=16").data, 3, True, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("slice_index_train_*.json"))) == 3 and len(changed)


def test_volume_store_serves_identical_items_without_reading_nifti(cases, tmp_path, monkeypatch):
    cfg = _cfg()
    mods = config.canonical_modalities(cfg)
    index = [(0, 4), (1, 8), (2, 12)]
    plain = brats_volumes.SliceSource(cases, mods, cfg.data, index)
    stored = brats_volumes.SliceSource(cases, mods, cfg.data, index, cache_dir=tmp_path)
    expected = [plain[i] for i in range(3)]
    assert all(_same(stored[i], expected[i]) for i in range(3))  # first pass writes the store
    assert len(list((tmp_path / "volumes").glob("*.slices.npy"))) == 3
    monkeypatch.setattr(brats, "load_case", lambda *a, **k: pytest.fail("store should be used"))
    again = brats_volumes.SliceSource(cases, mods, cfg.data, index, cache_dir=tmp_path)
    assert all(_same(again[i], expected[i]) for i in range(3))
    assert isinstance(again.volume(0).slices, np.memmap)
    assert repr(again) == repr(plain)  # where volumes come from is not part of the content
    for broken in (tmp_path / "volumes").glob("*.json"):
        broken.write_text("{")  # a damaged store is rebuilt, not trusted
    monkeypatch.undo()
    rebuilt = brats_volumes.SliceSource(cases, mods, cfg.data, index, cache_dir=tmp_path)
    assert _same(rebuilt[1], expected[1])


@pytest.mark.parametrize("target,k", [("wt", 1), ("regions", 3), ("classes", 4)])
def test_source_items(cases, target, k):
    loss = "ce_dice" if target == "classes" else "bce_dice"
    cfg = _cfg(f"data.target={target!r}", f"train.loss={loss!r}")
    index = [(1, 8), (2, 3)]
    source = brats_volumes.SliceSource(cases, config.canonical_modalities(cfg), cfg.data, index)
    assert len(source) == 2
    item = source[0]
    assert item["image"].shape == (32, 32, 4) and item["image"].dtype == np.float32
    assert item["target"].shape == (32, 32, k) and item["target"].dtype == np.float32
    assert item["classes"].shape == (32, 32) and item["classes"].dtype == np.uint8
    assert item["case"].dtype == np.int32 and int(item["case"]) == 1 and int(item["z"]) == 8
    assert bool(item["valid"])
    np.testing.assert_array_equal(item["target"], target_kind(target).encode(item["classes"]))
    # exactly slice 8 of the prepared case 1
    image, classes, _ = brats.load_case(cases[1], config.canonical_modalities(cfg))
    prepared = preprocess.prepare_volume(image, classes, cfg.data)
    np.testing.assert_array_equal(item["image"], prepared.slices[8])
    np.testing.assert_array_equal(item["classes"], prepared.classes[8])
    assert item["image"].any()


def test_source_cache_is_a_bounded_lru_and_survives_pickling(cases):
    cfg = _cfg("data.cache_volumes=2")
    index = [(c, 8) for c in (0, 1, 2)]
    source = brats_volumes.SliceSource(cases, config.canonical_modalities(cfg), cfg.data, index)
    source[0], source[1]
    assert source.cached_cases == (0, 1) and source.volumes_prepared == 2
    source[0]  # a hit makes case 0 most recent ...
    assert source.volumes_prepared == 2 and source.cached_cases == (1, 0)
    source[2]  # ... so case 1 is evicted
    assert source.cached_cases == (0, 2) and source.volumes_prepared == 3
    source[1]
    assert len(source.cached_cases) == 2 and source.volumes_prepared == 4
    clone = pickle.loads(pickle.dumps(source))
    assert clone.cached_cases == () and repr(clone) == repr(source)
    assert _same(clone[2], source[2])


def test_source_repr_names_the_content(cases):
    cfg = _cfg()
    mods = config.canonical_modalities(cfg)
    a = brats_volumes.SliceSource(cases, mods, cfg.data, [(0, 5)])
    assert repr(a) == repr(brats_volumes.SliceSource(cases, mods, _cfg("data.cache_volumes=9").data, [(0, 5)]))
    assert repr(a) != repr(brats_volumes.SliceSource(cases, mods, cfg.data, [(0, 6)]))
    assert repr(a) != repr(brats_volumes.SliceSource(cases, mods, _cfg("data.normalize='slice_zscore'").data, [(0, 5)]))
    assert "0x" not in repr(a)


def _marker_item():
    """An item whose image, target and classes all mark pixel (1, 5), asymmetric under flips/turns."""
    image = np.zeros((8, 8, 2), np.float32)
    image[1:7, 1:7] = 0.5  # brain
    image[1, 5] = (1.0, 0.9)
    classes = np.zeros((8, 8), np.uint8)
    classes[1, 5] = 3
    return {"image": image, "target": target_kind("regions").encode(classes), "classes": classes,
            "case": np.int32(0), "z": np.int32(0), "valid": np.bool_(True)}


def test_augment_keeps_image_target_and_classes_aligned():
    augment = pipeline.Augment(config.AugmentConfig(flip=True, rot90=True, intensity_scale=0.2, intensity_shift=0.1))
    item = _marker_item()
    positions = set()
    for seed in range(40):
        out = augment.random_map(item, np.random.default_rng(seed))
        where_image = np.unravel_index(out["image"][..., 0].argmax(), (8, 8))
        where_classes = tuple(np.argwhere(out["classes"] == 3)[0])
        assert where_image == where_classes == tuple(np.argwhere(out["target"][..., 2] > 0)[0])
        positions.add(where_classes)
        # the brain moved with the image; intensity changes kept the background at zero
        assert np.count_nonzero(out["image"].any(-1)) == np.count_nonzero(item["image"].any(-1))
        assert out["image"].dtype == np.float32 and out["image"].flags.c_contiguous
    assert len(positions) == 8  # all flip/rotation combinations of an asymmetric point occur
    np.testing.assert_array_equal(item["classes"][1, 5], 3)  # input untouched
    same = [augment.random_map(item, np.random.default_rng(5)) for _ in range(2)]
    assert _same(*same)


def test_augment_intensity_only_on_brain_and_within_bounds():
    augment = pipeline.Augment(config.AugmentConfig(flip=False, intensity_scale=0.2, intensity_shift=0.1))
    item = _marker_item()
    out = augment.random_map(item, np.random.default_rng(0))
    brain = item["image"].any(-1)
    assert np.all(out["image"][~brain] == 0)
    # brain pixel value 0.5 -> 0.5 * s + t with s in [0.8, 1.2], t in [-0.1, 0.1]
    values = out["image"][1, 1]
    assert np.all((values >= 0.5 * 0.8 - 0.1) & (values <= 0.5 * 1.2 + 0.1)) and not np.allclose(values, 0.5)
    np.testing.assert_array_equal(out["classes"], item["classes"])


def test_train_loader_is_deterministic_by_seed(cases):
    cfg = _cfg("data.augment.rot90=true", "data.augment.intensity_scale=0.1")
    a = _take(iter(loader.make_loader(cfg, cases, formats.SLICES, train=True, seed=1)), 3)
    b = _take(iter(loader.make_loader(cfg, cases, formats.SLICES, train=True, seed=1)), 3)
    c = _take(iter(loader.make_loader(cfg, cases, formats.SLICES, train=True, seed=2)), 3)
    assert all(_same(x, y) for x, y in zip(a, b))
    assert not all(_same(x, y) for x, y in zip(a, c))
    batch = a[0]
    assert batch["image"].shape == (4, 32, 32, 4) and batch["image"].dtype == np.float32
    assert batch["target"].shape == (4, 32, 32, 1) and batch["classes"].shape == (4, 32, 32)
    assert batch["case"].dtype == np.int32 and batch["valid"].all()


def test_train_loader_reshuffles_every_epoch(cases):
    index = np.array([(c, z) for c in (0, 1) for z in range(4, 10)])  # 12 slices, 3 batches an epoch
    it = iter(loader.make_loader(_cfg(), cases, formats.SLICES, train=True, seed=0, index=index))
    seen = [(int(c), int(z)) for b in _take(it, 9) for c, z in zip(b["case"], b["z"])]
    epochs = [seen[k * 12:(k + 1) * 12] for k in range(3)]
    for epoch in epochs:  # each epoch is a permutation of the index ...
        assert sorted(epoch) == sorted(map(tuple, index.tolist()))
    assert epochs[0] != epochs[1] != epochs[2]  # ... in a new order


def test_val_loader_sees_each_slice_once_and_pads_the_last_batch(cases):
    cfg = _cfg("train.batch_size=4")
    index = brats_volumes.build_slice_index(cases, config.canonical_modalities(cfg), cfg.data, 0, False)[:-1]
    assert len(index) % 4  # make sure there is padding to do
    batches = list(loader.make_loader(cfg, cases, formats.SLICES, train=False, seed=0, index=index))
    assert len(batches) == -(-len(index) // 4) and all(len(b["valid"]) == 4 for b in batches)
    seen = [(int(c), int(z)) for b in batches for c, z, v in zip(b["case"], b["z"], b["valid"]) if v]
    assert seen == [tuple(r) for r in index.tolist()]  # in order, each once
    assert batches[-1]["valid"].sum() == len(index) % 4


def test_iterator_state_round_trip(cases):
    cfg = _cfg("data.augment.rot90=true", "data.augment.intensity_shift=0.1")
    it = iter(loader.make_loader(cfg, cases, formats.SLICES, train=True, seed=7))
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 2)
    resumed = iter(loader.make_loader(cfg, cases, formats.SLICES, train=True, seed=7))
    resumed.set_state(state)
    assert all(_same(x, y) for x, y in zip(expected, _take(resumed, 2)))
    other_data = iter(loader.make_loader(_cfg("data.image_size=16"), cases, formats.SLICES, train=True, seed=7))
    with pytest.raises(ValueError, match="DataSource"):  # grain refuses a different dataset
        other_data.set_state(state)


def test_two_devices_get_half_a_batch_each(cases):
    cfg = _cfg("train.batch_size=4")
    mesh = pipeline.make_mesh(jax.devices()[:2])

    def first_batches():
        slices = loader.make_loader(cfg, cases, formats.SLICES, train=True, seed=3, mesh=mesh)
        return _take(pipeline.device_batches(iter(slices), mesh), 2)

    runs = [first_batches(), first_batches()]
    for batch in runs[0]:
        for key, array in batch.items():
            assert array.sharding.spec == P("data")
            assert array.sharding.device_set == set(jax.devices()[:2])
            assert array.shape[0] == 4
            assert all(shard.data.shape[0] == 2 for shard in array.addressable_shards), key
        assert batch["image"].dtype == np.float32 and batch["classes"].dtype == np.uint8
    for a, b in zip(*runs):
        assert _same({k: np.asarray(v) for k, v in a.items()}, {k: np.asarray(v) for k, v in b.items()})


def test_batch_not_divisible_by_devices_is_a_user_error(cases):
    mesh = pipeline.make_mesh(jax.devices()[:2])
    with pytest.raises(JaxsegError, match=r"train\.batch_size = 3 .* 2 devices"):
        loader.make_loader(_cfg("train.batch_size=3"), cases, formats.SLICES, train=True, seed=0, mesh=mesh)
    with pytest.raises(JaxsegError, match=r"train\.batch_size = 6 .* 4 devices"):
        loader.make_loader(_cfg("train.batch_size=6"), cases, formats.SLICES, train=True, seed=0)  # default: all 4
    odd = iter([{"image": np.zeros((3, 4, 4, 1), np.float32)}])
    with pytest.raises(JaxsegError, match="train.batch_size"):
        next(pipeline.device_batches(odd, mesh))


def test_empty_index_is_a_user_error(cases):
    with pytest.raises(JaxsegError, match="no training slices"):
        loader.make_loader(_cfg(), cases, formats.SLICES, train=True, seed=0, index=np.zeros((0, 2), np.int64))


def test_worker_process_loader_matches_in_process(cases):
    # grain spawns the worker: the source and Augment travel by pickle, absl flags must be marked
    # parsed, and the per-record RNG makes the stream independent of the worker count.
    with_worker = _cfg("data.workers=1", "data.augment.rot90=true")
    start = time.perf_counter()
    it = iter(loader.make_loader(with_worker, cases, formats.SLICES, train=True, seed=5))
    batches = _take(it, 3)
    state = it.get_state()
    assert json.loads(state)["worker_count"] == 1
    in_process = _take(iter(loader.make_loader(_cfg("data.augment.rot90=true"), cases, formats.SLICES, train=True, seed=5)), 3)
    assert all(_same(x, y) for x, y in zip(batches, in_process))
    assert time.perf_counter() - start < 60  # ~2 s: spawning imports jax once in the worker
