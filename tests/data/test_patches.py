"""patches: brain-box volumes and their inverse, patch placement, the 3D grain loader, device placement."""
from __future__ import annotations

import json
import pickle

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxseg import config
from jaxseg.data import brats, formats, loader, patches, phantom, pipeline, preprocess
from jaxseg.errors import JaxsegError
from jaxseg.target import target_kind

SHAPE = (32, 32, 24)  # the phantom brain's box is about 22 x 26 x 21 voxels
MODS = ("flair", "t1", "t1ce", "t2")


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    phantom.write_phantoms(root, cases=2, seed=0, shape=SHAPE)
    return brats.find_cases(root)


@pytest.fixture(scope="module")
def volumes(cases):
    return [patches.load_prepared_volume(c, MODS, _cfg().data) for c in cases]


def _cfg(*overrides: str) -> config.Config:
    return config.load(None, ["train.batch_size=4", "model.features=[4, 8]", *overrides])


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


_PATCH_SETTINGS = {"mode": "patch_mode"}  # keyword -> data.* setting


def _loader(*overrides: str, cases, train=True, seed=1, mesh=None, index=None, **settings):
    """The patch loader of ``_cfg(*overrides)`` with ``data.<setting>`` = ``settings`` (patch_size 16,
    samples_per_case 4 unless given), the config read inside (a bad setting raises here)."""
    settings = {"patch_size": 16, "samples_per_case": 4, **settings}
    cfg = _cfg(*(f"data.{_PATCH_SETTINGS.get(k, k)}={v!r}" for k, v in settings.items()), *overrides)
    return loader.make_loader(cfg, cases, formats.PATCHES, train=train, seed=seed, mesh=mesh, index=index)


def test_prepared_volume_is_the_normalised_brain_box_and_restores_exactly(cases):
    image, classes, _ = brats.load_case(cases[0], MODS)
    for method in ("zscore_minmax", "slice_zscore"):
        data_cfg = _cfg(f"data.normalize={method!r}").data
        prepared = patches.load_prepared_volume(cases[0], MODS, data_cfg)
        box = prepared.box
        assert box.volume_shape == SHAPE and prepared.image.shape == box.shape + (4,)
        assert prepared.image.dtype == np.float32 and prepared.classes.dtype == np.uint8
        assert box.shape < SHAPE and min(box.shape) > 16  # a real crop, still larger than a 16^3 patch
        whole = preprocess.normalize(image, preprocess.brain_mask(image), method)
        np.testing.assert_array_equal(patches.restore_box(prepared.image, box), whole)
        np.testing.assert_array_equal(patches.restore_box(prepared.classes, box), classes)
        # the box is tight: each face touches the brain
        brain = preprocess.brain_mask(prepared.image)
        for axis in range(3):
            assert brain.take(0, axis).any() and brain.take(-1, axis).any()
    np.testing.assert_array_equal(prepared.tumor_voxels, np.argwhere(prepared.classes > 0))
    uncropped = patches.load_prepared_volume(cases[0], MODS, _cfg("data.crop='none'").data)
    assert uncropped.box == patches.VolumeBox((0, 0, 0), SHAPE, SHAPE)
    assert patches.VolumeBox.from_dict(json.loads(json.dumps(box.as_dict()))) == box
    with pytest.raises(ValueError, match="does not match the box"):
        patches.restore_box(prepared.classes[1:], box)


def test_volume_store_serves_identical_volumes_without_reading_nifti(cases, tmp_path, monkeypatch):
    data_cfg = _cfg().data
    plain = patches.load_prepared_volume(cases[1], MODS, data_cfg)
    patches.load_prepared_volume(cases[1], MODS, data_cfg, cache_dir=tmp_path)
    assert {p.name.split(".", 1)[1] for p in (tmp_path / "volumes3d").iterdir()} == {
        "image.npy", "classes.npy", "tumor.npy", "json"}
    monkeypatch.setattr(brats, "load_case", lambda *a, **k: pytest.fail("store should be used"))
    stored = patches.load_prepared_volume(cases[1], MODS, data_cfg, cache_dir=tmp_path)
    assert isinstance(stored.image, np.memmap) and stored.box == plain.box
    for name in ("image", "classes", "tumor_voxels"):
        np.testing.assert_array_equal(getattr(stored, name), getattr(plain, name))
    (broken,) = (tmp_path / "volumes3d").glob("*.json")
    broken.write_text("{")  # a damaged store is rebuilt, not trusted
    monkeypatch.undo()
    np.testing.assert_array_equal(patches.load_prepared_volume(cases[1], MODS, data_cfg, tmp_path).image, plain.image)


@pytest.mark.parametrize("target,k", [("wt", 1), ("regions", 3)])
def test_loader_items_shapes_and_dtypes(cases, target, k):
    batch = next(iter(_loader(f"data.target={target!r}", cases=cases)))
    assert batch["image"].shape == (4, 16, 16, 16, 4) and batch["image"].dtype == np.float32
    assert batch["target"].shape == (4, 16, 16, 16, k) and batch["target"].dtype == np.float32
    assert batch["classes"].shape == (4, 16, 16, 16) and batch["classes"].dtype == np.uint8
    assert batch["case"].dtype == np.int32 and batch["origin"].shape == (4, 3) and batch["origin"].dtype == np.int32
    assert batch["valid"].dtype == bool and batch["valid"].all()
    for classes, tgt in zip(batch["classes"], batch["target"]):
        np.testing.assert_array_equal(tgt, target_kind(target).encode(classes))


def test_centre_patch_is_the_centre_crop(cases, volumes):
    spec = patches.PatchSpec(16, "center")
    source = patches.PatchSource(cases, MODS, _cfg().data, spec, patches.patch_index(2, 1))
    for i, volume in enumerate(volumes):
        item = patches.RandomPatch(spec, "wt").random_map(source[i], np.random.default_rng(i))
        o = [(n - 16) // 2 for n in volume.box.shape]
        crop = tuple(slice(a, a + 16) for a in o)
        np.testing.assert_array_equal(item["image"], volume.image[crop])
        np.testing.assert_array_equal(item["classes"], volume.classes[crop])
        np.testing.assert_array_equal(item["origin"], np.add(volume.box.start, o))
        assert item["image"].flags.writeable  # a copy, never a view of the shared cache


def test_volume_smaller_than_the_patch_is_zero_padded(volumes):
    volume = volumes[0]
    item = patches.RandomPatch(patches.PatchSpec(32, "center"), "wt").random_map(
        {"volume": volume, "case": np.int32(0), "valid": np.bool_(True)}, np.random.default_rng(0))
    pad = [(32 - n) // 2 for n in volume.box.shape]  # every axis of the box is below 32
    inside = tuple(slice(p, p + n) for p, n in zip(pad, volume.box.shape))
    np.testing.assert_array_equal(item["image"][inside], volume.image)
    np.testing.assert_array_equal(item["classes"][inside], volume.classes)
    outside = np.ones((32, 32, 32), bool)
    outside[inside] = False
    assert not item["image"][outside].any() and not item["classes"][outside].any()
    np.testing.assert_array_equal(item["origin"], np.subtract(volume.box.start, pad))
    # any placement of an oversized patch is the same centred one
    tumor_spec = patches.PatchSpec(32, "tumor", 0.5)
    assert {tuple(patches.place_patch(volume, tumor_spec, np.random.default_rng(s))[0]) for s in range(20)} == {
        tuple(-p for p in pad)}


def test_tumor_patches_follow_the_probability_and_stay_inside(volumes):
    draws, p = 200, 0.67
    for volume in volumes:
        lo, hi = patches.patch_range(volume.image.shape, 8)
        spec = patches.PatchSpec(8, "tumor", p)
        on_tumor, has_tumor = [], []
        for seed in range(draws):
            origin, centred = patches.place_patch(volume, spec, np.random.default_rng(seed))
            assert np.all(origin >= lo) and np.all(origin <= hi) and np.all(lo == 0)  # inside the volume
            patch = patches.cut_patch(volume.classes, origin, 8)
            on_tumor.append(centred)
            has_tumor.append(patch.any())
            if centred:
                assert patch.any()
            else:  # the centre is a brain voxel (or clipped from one): the patch holds brain
                assert patches.cut_patch(volume.image, origin, 8).any()
        # binomial(200, 0.67): sd 0.033; 4 sd either side
        assert abs(np.mean(on_tumor) - p) < 4 * np.sqrt(p * (1 - p) / draws)
        assert np.mean(has_tumor) >= np.mean(on_tumor)
        never = [patches.place_patch(volume, patches.PatchSpec(8, "tumor", 0.0), np.random.default_rng(s))[1]
                 for s in range(50)]
        assert not any(never)
        always = [patches.place_patch(volume, patches.PatchSpec(8, "tumor", 1.0), np.random.default_rng(s))
                  for s in range(50)]
        assert all(c and patches.cut_patch(volume.classes, o, 8).any() for o, c in always)
        assert len({tuple(o) for o, _ in always}) > 5  # random tumor voxels, not one spot


def test_flips_keep_image_target_and_classes_aligned(volumes):
    spec = patches.PatchSpec(16, "tumor", 1.0)
    element = {"volume": volumes[0], "case": np.int32(0), "valid": np.bool_(True)}
    plain = patches.RandomPatch(spec, "regions", flip=False)
    flipped = patches.RandomPatch(spec, "regions", flip=True)
    seen = set()
    for seed in range(24):
        a = plain.random_map(element, np.random.default_rng(seed))
        b = flipped.random_map(element, np.random.default_rng(seed))
        np.testing.assert_array_equal(a["origin"], b["origin"])  # same placement; flips come after
        # find the flips that map the plain image to the flipped one; they must map all three arrays
        for mask in range(8):
            flip_axes = tuple(ax for ax in range(3) if mask >> ax & 1)
            if np.array_equal(np.flip(a["image"], flip_axes), b["image"]):
                np.testing.assert_array_equal(np.flip(a["classes"], flip_axes), b["classes"])
                np.testing.assert_array_equal(np.flip(a["target"], flip_axes), b["target"])
                seen.add(flip_axes)
                break
        else:
            pytest.fail(f"seed {seed}: the flipped patch is no flip of the plain one")
    assert len(seen) >= 6  # the eight flip combinations occur (asymmetric phantom: distinguishable)


def test_loader_is_deterministic_by_seed_and_new_each_epoch(cases):
    a = _take(iter(_loader(cases=cases, seed=1)), 4)
    b = _take(iter(_loader(cases=cases, seed=1)), 4)
    c = _take(iter(_loader(cases=cases, seed=2)), 2)
    assert all(_same(x, y) for x, y in zip(a, b))
    assert not all(_same(x, y) for x, y in zip(a, c))
    # 8 records = 2 batches an epoch; every epoch draws each case samples_per_case times ...
    epochs = [np.concatenate([a[2 * e]["case"], a[2 * e + 1]["case"]]) for e in range(2)]
    assert all(np.bincount(e, minlength=2).tolist() == [4, 4] for e in epochs)
    # ... at new places (the generator is keyed by the position in the endless order, not the record)
    origins = [{(int(k), *map(int, o)) for b_ in a[2 * e:2 * e + 2] for k, o in zip(b_["case"], b_["origin"])}
               for e in range(2)]
    assert origins[0] != origins[1]


def test_validation_sees_each_record_once_in_order_and_pads(cases):
    # the loop validates on one centre patch per case; three records per case are given as an index
    batches = list(_loader("train.batch_size=4", cases=cases, train=False, index=patches.patch_index(2, 3)))
    assert len(batches) == 2 and all(len(b["valid"]) == 4 for b in batches)
    cases_seen = np.concatenate([b["case"] for b in batches])
    valid = np.concatenate([b["valid"] for b in batches])
    assert cases_seen[valid].tolist() == [0, 0, 0, 1, 1, 1] and valid.tolist() == [True] * 6 + [False] * 2
    first = batches[0]
    assert all(np.array_equal(first["image"][0], x) for x in first["image"][1:3])  # centre crops: no flips


def test_iterator_state_round_trip(cases):
    it = iter(_loader(cases=cases, seed=7))
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 2)
    resumed = iter(_loader(cases=cases, seed=7))
    resumed.set_state(state)
    assert all(_same(x, y) for x, y in zip(expected, _take(resumed, 2)))
    other_patches = iter(_loader(cases=cases, seed=7, patch_size=8))
    with pytest.raises(ValueError, match="DataSource"):  # grain refuses other patches
        other_patches.set_state(state)


def test_source_cache_is_a_bounded_lru_and_survives_pickling(cases):
    spec = patches.PatchSpec(16)
    source = patches.PatchSource(cases, MODS, _cfg("data.cache_volumes=1").data, spec, patches.patch_index(2, 2))
    assert len(source) == 4 and source[1]["volume"] is source[0]["volume"]
    assert source.volumes_prepared == 1 and source.cached_cases == (0,)
    source[2]
    assert source.cached_cases == (1,) and source.volumes_prepared == 2
    with pytest.raises(ValueError):
        source[3]["volume"].image[0, 0, 0, 0] = 1  # the cached volume is read-only
    clone = pickle.loads(pickle.dumps(source))
    assert clone.cached_cases == () and repr(clone) == repr(source)
    np.testing.assert_array_equal(clone[3]["volume"].image, source[3]["volume"].image)
    assert "0x" not in repr(source)
    assert repr(source) != repr(patches.PatchSource(cases, MODS, _cfg().data, patches.PatchSpec(16, "center"),
                                                    patches.patch_index(2, 2)))


def test_two_devices_get_half_a_batch_each(cases):
    mesh = pipeline.make_mesh(jax.devices()[:2])
    batch = next(pipeline.device_batches(iter(_loader(cases=cases, seed=3, mesh=mesh)), mesh))
    for key, array in batch.items():
        assert array.sharding.spec == P("data") and array.sharding.device_set == set(jax.devices()[:2])
        assert array.shape[0] == 4 and all(s.data.shape[0] == 2 for s in array.addressable_shards), key
    assert batch["image"].shape == (4, 16, 16, 16, 4) and batch["classes"].dtype == np.uint8


@pytest.mark.parametrize("kwargs,match", [
    ({"patch_size": 12}, "data.patch_size"), ({"patch_size": 0}, "data.patch_size"),
    ({"patch_size": 4}, "data.patch_size"), ({"mode": "random"}, "data.patch_mode"),
    ({"tumor_probability": 1.5}, "data.tumor_probability"), ({"samples_per_case": 0}, "data.samples_per_case"),
])
def test_bad_patch_settings_are_user_errors(cases, kwargs, match):
    with pytest.raises(JaxsegError, match=match):
        _loader(cases=cases, **kwargs)


def test_batch_and_record_count_errors(cases):
    with pytest.raises(JaxsegError, match=r"train\.batch_size = 6 .* 4 devices"):
        _loader("train.batch_size=6", cases=cases)
    with pytest.raises(JaxsegError, match="larger than the 2 patch records"):
        _loader(cases=cases[:1], samples_per_case=2)
    with pytest.raises(JaxsegError, match="no training cases"):
        _loader(cases=[])


def test_worker_process_loader_matches_in_process(cases):
    # the worker is spawned: PatchSource and RandomPatch travel by pickle, and placement comes from
    # the per-record generator, so one worker process gives the in-process stream.
    it = iter(_loader("data.workers=1", cases=cases, seed=5))
    with_worker = _take(it, 2)
    assert json.loads(it.get_state())["worker_count"] == 1
    in_process = _take(iter(_loader(cases=cases, seed=5)), 2)
    assert all(_same(x, y) for x, y in zip(with_worker, in_process))
