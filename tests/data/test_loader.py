"""loader: the one loader builder gives, for 2D slices and 3D patches alike, the batches of its parts
composed by hand: grain's seeded sampler order, the format's source, the sampling's operation."""
from __future__ import annotations

import grain
import numpy as np
import pytest

from jaxseg import config
from jaxseg.data import brats, formats, loader, patches, phantom, pipeline
from jaxseg.data.formats import brats_volumes
from jaxseg.errors import JaxsegError

MODS = ("flair", "t1", "t1ce", "t2")
BATCH = 4


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    phantom.write_phantoms(root, cases=3, seed=0, shape=(32, 32, 24))
    return brats.find_cases(root)


def _cfg(*overrides: str) -> config.Config:
    return config.load(None, ["data.image_size=32", f"train.batch_size={BATCH}", "model.features=[4, 8]",
                              "data.augment.flip=true", "data.augment.rot90=true", "data.augment.intensity_scale=0.1",
                              "data.patch_size=16", "data.samples_per_case=2", *overrides])


def _by_hand(source, operation, seed: int, train: bool, batches: int) -> list[dict]:
    """The first ``batches`` batches: grain's IndexSampler (shuffled endless epochs for training,
    one ordered pass for validation), each record through ``operation`` with its own generator."""
    sampler = grain.samplers.IndexSampler(num_records=len(source), shard_options=grain.sharding.NoSharding(),
                                          shuffle=train, num_epochs=None if train else 1, seed=seed)
    rows = []
    for position in range(batches * BATCH):
        meta = sampler[position]
        item = source[meta.record_key]
        rows.append(item if operation is None else operation.random_map(item, meta.rng))
    return [{k: np.stack([np.asarray(r[k]) for r in rows[b * BATCH:(b + 1) * BATCH]]) for k in rows[0]}
            for b in range(batches)]


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]), err_msg=k)


def test_slice_loaders_are_the_sampler_order_of_the_slice_source_augmented(cases, tmp_path):
    cfg = _cfg()
    train_cases, val_cases = cases[:2], cases[2:]
    loaders = loader.train_val_loaders(cfg, formats.SLICES, train_cases, val_cases, pipeline.make_mesh(), tmp_path)
    index = brats_volumes.build_slice_index(train_cases, MODS, cfg.data, cfg.train.seed, True)
    source = brats_volumes.SliceSource(train_cases, MODS, cfg.data, index)
    it = iter(loaders.train)
    _same([next(it) for _ in range(2)], _by_hand(source, pipeline.Augment(cfg.data.augment), cfg.train.seed, True, 2))
    assert loaders.steps_per_epoch == len(index) // BATCH
    val_index = brats_volumes.build_slice_index(val_cases, MODS, cfg.data, cfg.train.seed, False)
    assert loaders.val_batches == -(-len(val_index) // BATCH)
    val = list(loaders.val)
    assert len(val) == loaders.val_batches
    whole = len(val_index) // BATCH
    _same(val[:whole], _by_hand(brats_volumes.SliceSource(val_cases, MODS, cfg.data, val_index), None,
                                cfg.train.seed, False, whole))


def test_patch_loaders_are_the_sampler_order_of_random_patches(cases, tmp_path):
    cfg = _cfg()
    train_cases, val_cases = cases[:2], cases[2:]
    loaders = loader.train_val_loaders(cfg, formats.PATCHES, train_cases, val_cases, pipeline.make_mesh(), tmp_path)
    spec = patches.PatchSpec(16, cfg.data.patch_mode, cfg.data.tumor_probability)
    source = patches.PatchSource(train_cases, MODS, cfg.data, spec, patches.patch_index(2, 2))
    it = iter(loaders.train)
    _same([next(it) for _ in range(2)],
          _by_hand(source, patches.RandomPatch(spec, cfg.data.target, flip=True), cfg.train.seed, True, 2))
    assert loaders.steps_per_epoch == 2 * 2 // BATCH and loaders.val_batches == 1
    (val,) = list(loaders.val)
    centre = patches.PatchSpec(16, "center")
    reference = patches.RandomPatch(centre, cfg.data.target).random_map(
        patches.PatchSource(val_cases, MODS, cfg.data, centre, patches.patch_index(1, 1))[0],
        np.random.default_rng(0))  # centre patches, no flips: the generator decides nothing
    for k in reference:
        np.testing.assert_array_equal(val[k][0], reference[k], err_msg=k)
    assert val["valid"].tolist() == [True, False, False, False]


def test_a_2d_format_cannot_feed_a_3d_model(cases):
    cfg = config.load(None, ["data.format=figshare_mat", 'data.modalities=["t1ce"]', "data.target=wt"])
    with pytest.raises(JaxsegError, match="data.format: figshare_mat cannot feed a model with 3 spatial dims"):
        loader.make_loader(cfg, [], formats.PATCHES, train=True, seed=0)
