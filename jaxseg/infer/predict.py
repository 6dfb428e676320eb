"""Inference: a trained run applied to whole volumes, written back in each volume's own geometry.

The path is the training path in reverse: read (to canonical RAS) -> the run's preprocessing ->
batched slice-wise forward passes sharded over all devices (3D models: sliding windows over the
brain box, :mod:`jaxseg.infer.sliding_window`) -> probabilities restored to the canonical
volume -> labels in the input's convention -> written in the input's orientation, shape, affine
and header.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy import ndimage
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxseg import config as config_lib
from jaxseg.config import Config
from jaxseg.data import brats, checks, formats, nifti, pipeline, preprocess
from jaxseg.errors import JaxsegError
from jaxseg.infer import chunks, predict2d, sliding_window
from jaxseg.infer.prediction import Prediction
from jaxseg.models import registry
from jaxseg.model_store import calibration_temperatures, resolve_checkpoint
from jaxseg import target as target_lib
from jaxseg.target import TargetKind, divide_by_temperature, target_for
from jaxseg.train.checkpoint import find_run, load_model_state, load_run_config
from jaxseg.train.state import abstract_state, graphdef_of, make_optimizer


class Predictor:
    """A restored model with its config; maps canonical volumes to probabilities.

    Attributes ``cfg``, ``graphdef``, ``params``, ``batch_stats`` are what explanations need too;
    ``target_kind`` (:class:`~jaxseg.target.TargetKind`) says what the output channels mean.
    ``precision``: the compute dtype, ``"float32"`` or ``"bfloat16"``; default the run's
    ``train.precision`` (a run trained in bfloat16 predicts in bfloat16). The checkpoint's
    parameters are float32 either way; ``self.precision`` says which one the graphdef computes in.
    ``temperature``: ``(K,)`` float32 per-channel temperatures of the folder's calibration.json
    (docs/calibration.md), applied as logits / T before the activation; None without one or
    with ``calibrated=False``.
    """

    def __init__(self, checkpoint: str | Path, batch_size: int = 16, precision: str | None = None,
                 calibrated: bool = True):
        self.run = find_run(checkpoint)
        self.cfg: Config = load_run_config(self.run)
        self.target_kind: TargetKind = target_for(self.cfg)
        self.mesh = pipeline.make_mesh()
        self.precision = precision or self.cfg.train.precision
        self.graphdef = graphdef_of(self.cfg, precision=self.precision)
        target = abstract_state(self.cfg, make_optimizer(self.cfg, 1), self.mesh)
        self.params, self.batch_stats, self.meta = load_model_state(self.run, target)
        # Batches are split over devices, so round the batch up to a multiple of their number.
        self.batch_size = -(-batch_size // self.mesh.size) * self.mesh.size
        self.modalities = config_lib.canonical_modalities(self.cfg)
        # How the model reads an image (2D slices or 3D sliding windows) and the way back.
        self.sampling = formats.sampling(registry.spatial_dims(self.cfg))
        self.volumetric = self.sampling.spatial_dims == 3
        # slices: 4 flips of (H, W); windows: 8 flips of (X, Y, Z)
        self.flip_axes = tuple(self.sampling.flip_axes) if self.cfg.infer.tta_flips else ()
        self.temperature = (calibration_temperatures(self.run, self.target_kind.channel_names)
                            if calibrated else None)

    def model(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.params, self.batch_stats)

    def forward(self, x: jax.Array) -> jax.Array:
        """``(B, *spatial, C)`` float32 batch -> ``(B, *spatial, K)`` float32 probabilities, with
        the run's test-time flips; compiled once per model structure and shape (shared by every
        Predictor of the same model: :func:`probabilities`)."""
        return probabilities(self.params, self.batch_stats, x, graphdef=self.graphdef,
                             target_kind=self.cfg.data.target, flip_axes=self.flip_axes,
                             temperature=self.temperature)

    def slice_probabilities(self, slices: np.ndarray) -> np.ndarray:
        """(Z, S, S, C) float32 preprocessed slices -> (Z, S, S, K) float32 probabilities."""
        return chunks.map_chunks(lambda _, chunk: self.forward(chunk), np.asarray(slices),
                                 batch_size=self.batch_size, sharding=NamedSharding(self.mesh, P("data")),
                                 empty=np.zeros((0,), np.float32))

    def volume_probabilities(self, volume: np.ndarray) -> np.ndarray:
        """3D models: (X', Y', Z', C) float32 prepared volume (``patches.prepare_volume_3d``) ->
        (X', Y', Z', K) float32 probabilities by sliding windows of the training patch size
        (``[infer]`` overlap, blend, window_batch, tta_flips)."""
        sharding = NamedSharding(self.mesh, P("data"))

        def forward(windows: np.ndarray) -> jax.Array:
            return self.forward(jax.device_put(windows, sharding))

        i = self.cfg.infer
        return sliding_window.sliding_window_probabilities(
            forward, volume, self.cfg.data.patch_size, overlap=i.overlap, blend=i.blend,
            window_batch=i.window_batch, batch_multiple=self.mesh.size)

    def predict_image(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Canonical (X, Y, Z, C) image -> (probabilities (X, Y, Z, K) float32, classes (X, Y, Z)
        uint8 internal classes). Voxels outside the brain are background."""
        model_input = self.sampling.prepare_input(image, self.cfg.data)
        probs = model_input.restore(self.sampling.probabilities(self, model_input.values))
        probs *= preprocess.brain_mask(image)[..., None]
        return probs, self.target_kind.classes_from_output(probs)


@functools.partial(jax.jit, static_argnames=("graphdef", "target_kind", "flip_axes"))
def probabilities(params: nnx.State, batch_stats: nnx.State, x: jax.Array, *, graphdef: nnx.GraphDef,
                  target_kind: str | TargetKind, flip_axes: tuple[int, ...] = (),
                  temperature: jax.Array | None = None) -> jax.Array:
    """The model's probabilities of a batch: one jitted function for every model, keyed on its
    (static, hashable) graphdef, so two Predictors of the same model share one compilation.

    Args:
      params, batch_stats: the model's state (``nnx.split(model, nnx.Param, nnx.BatchStat)``).
      x: ``(B, *spatial, C)`` float32.
      graphdef: the model's structure (its convolution mode included).
      target_kind: a ``data.target`` name or :class:`~jaxseg.target.TargetKind`.
      flip_axes: test-time flips: the mean over flips of every subset of these axes of ``x``
        (training flips the same axes, ``data.augment.flip``); ``()`` none.
      temperature: ``(K,)`` float32 (or a scalar) the logits are divided by before the
        activation (a calibration); None = 1.

    Returns:
      ``(B, *spatial, K)`` float32.
    """
    def forward(batch: jax.Array) -> jax.Array:
        logits, _ = nnx.merge(graphdef, params, batch_stats)(batch, train=False)
        logits = logits.astype(jnp.float32)
        logits = divide_by_temperature(logits, temperature)  # T > 0: thresholds at 0.5 do not move
        return target_lib.target_kind(target_kind).probabilities(logits)
    return sliding_window.with_flip_tta(forward, flip_axes)(x) if flip_axes else forward(x)


def remove_small_components(classes: np.ndarray, spacing: tuple[float, ...], min_ml: float) -> np.ndarray:
    """Zero every 26-connected whole-tumor component smaller than ``min_ml`` millilitres.

    ``classes`` (X, Y, Z) uint8 internal classes; returns a copy. Small isolated blobs are the
    false positives that BraTS 2023 lesion-wise scores punish hardest (each counts as a lesion
    with Dice 0 and HD95 374).
    """
    if min_ml <= 0:
        return classes
    labels, count = ndimage.label(classes > 0, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return classes
    voxel_ml = float(np.prod(spacing)) / 1000.0
    small = np.bincount(labels.ravel()) * voxel_ml < min_ml
    small[0] = False
    out = classes.copy()
    out[small[labels]] = 0
    return out


def relabel_small_enhancing(classes: np.ndarray, spacing: tuple[float, ...], min_ml: float) -> np.ndarray:
    """Enhancing tumor totalling less than ``min_ml`` millilitres becomes necrosis (class 1).

    ``classes`` (X, Y, Z) uint8 internal classes; returns a copy. A few voxels of predicted ET in
    a case with none (low-grade gliomas often have none) turn a perfect empty-vs-empty ET Dice of
    1 into 0; BraTS entries have done this since Isensee et al. 2018 ("No New-Net", 500 voxels).
    The voxels stay tumor, so WT is unchanged and TC keeps them.
    """
    if min_ml <= 0:
        return classes
    enhancing = classes == 3
    if not enhancing.any() or enhancing.sum() * float(np.prod(spacing)) / 1000.0 >= min_ml:
        return classes
    out = classes.copy()
    out[enhancing] = 1
    return out


def predict(path: str | Path | Sequence[str | Path], checkpoint: str | Path | None, out: str | Path, *,
            probabilities: bool = False, calibrated: bool = True,
            batch_size: int = 16, min_component_ml: float = 0.0,
            progress: Callable[[str], None] | None = None,
            say: Callable[[str], None] = lambda message: None) -> list[Prediction]:
    """Segment a volume, a case folder, a folder of cases, or a list of any of these (the model
    is restored and compiled once for all of them).

    A single case writes ``out`` (a ``.nii.gz`` path, or ``<out>/<case>.nii.gz`` when ``out`` is
    a folder); several cases write ``<out>/<case>.nii.gz`` each. ``probabilities`` also writes
    ``<name>_prob.nii.gz`` (X, Y, Z, K) float32. Labels follow the input's convention (0,1,2,4 for
    2017-2021 names, 0,1,2,3 for 2023+), or 0/1 for a whole-tumor model. ``min_component_ml`` > 0
    removes tumor components smaller than that (:func:`remove_small_components`).
    2D slices (``.mat``, ``.png``, ``.tif`` files or folders of them, or any input of a run trained
    on a 2D ``data.format``; :func:`jaxseg.data.formats.prediction_output`) go to
    :func:`jaxseg.infer.predict2d.predict_slices`: PNG masks.
    ``checkpoint``: a run or model folder, a bundled model's name, ``demo``, or None for the
    bundled model whose modalities every case has (:func:`jaxseg.model_store.resolve_checkpoint`;
    ``say`` hears which). Every case is checked for the model's modalities before any is written.
    ``calibrated``: apply the folder's calibration.json, if any (:class:`Predictor`).
    """
    paths = [Path(p) for p in ([path] if isinstance(path, (str, Path)) else path)]
    out = Path(out)
    for p in paths:
        if not p.exists():
            raise JaxsegError(f"{p}: no such file or folder")
    cases = None  # found once: choosing the default model needs them too
    if checkpoint is None:
        checkpoint, cases = _OUTPUTS[formats.prediction_output(paths)].default_checkpoint(paths, say)
    else:
        checkpoint = resolve_checkpoint(checkpoint)
    run_cfg = load_run_config(find_run(checkpoint))
    return _OUTPUTS[formats.prediction_output(paths, run_cfg)].write(
        paths, checkpoint, run_cfg, out, cases, probabilities=probabilities, calibrated=calibrated,
        batch_size=batch_size,
        min_component_ml=min_component_ml, progress=progress)


def _predict_volumes(paths: Sequence[Path], checkpoint: Path, run_cfg: Config, out: Path,
                     cases: list[brats.Case] | None, *, probabilities: bool, calibrated: bool, batch_size: int,
                     min_component_ml: float, progress: Callable[[str], None] | None) -> list[Prediction]:
    """:func:`predict` for BraTS volumes: a NIfTI label map per case in the input's geometry."""
    cases = cases or [case for p in paths for case in _cases_at(p)]
    if len(cases) > 1 and out.name.endswith((".nii", ".nii.gz")):
        raise JaxsegError(f"{out}: {', '.join(map(str, paths))} hold {len(cases)} cases; --out must be a folder")
    needed = config_lib.canonical_modalities(run_cfg)
    for case in cases:  # before any case is written
        missing = [m for m in needed if m not in case.images]
        if missing:
            raise JaxsegError(f"{case.expected_file(missing[0])}: missing: case {case.case_id} has no "
                              f"{', '.join(missing)} image; the model needs {', '.join(needed)}")
        checks.check_header_spacing(case.images[needed[0]])  # from the header: refused before any write
    predictor = Predictor(checkpoint, batch_size, calibrated=calibrated)
    results = []
    for case in cases:
        if progress is not None:
            progress(case.case_id)
        image, _, props = brats.load_case(case, predictor.modalities)
        # Refuses a spacing far from 1 mm; warns on stderr if the image is not skull-stripped.
        input_warnings = checks.check_model_input(
            image, [case.images[m] for m in predictor.modalities], props.spacing)
        probs, classes = predictor.predict_image(image)
        classes = remove_small_components(classes, props.spacing, min_component_ml)
        target = out if out.name.endswith((".nii", ".nii.gz")) else out / f"{case.case_id}.nii.gz"
        # A whole-tumor model's 0/1 map is written as is: internal 1 is file label 1 in both namings.
        labels = brats.from_internal(classes, case.naming)
        nifti.write_volume(labels.astype(np.uint8), props, target, dtype=np.uint8)
        prob_path = None
        if probabilities:
            stem = target.name[: -len(".nii.gz")] if target.name.endswith(".nii.gz") else target.stem
            prob_path = target.with_name(f"{stem}_prob.nii.gz")
            nifti.write_volume(probs, props, prob_path, dtype=np.float32)
        volumes = brats.tumor_volumes_ml(classes, props.spacing)
        volumes = {region: volumes[region] for region in predictor.target_kind.region_names}
        results.append(Prediction(case.case_id, target, prob_path, volumes, input_warnings))
    return results


def _predict_slices(paths: Sequence[Path], checkpoint: Path, run_cfg: Config, out: Path, cases: None, *,
                    probabilities: bool, calibrated: bool, batch_size: int, min_component_ml: float,
                    progress: Callable[[str], None] | None) -> list[Prediction]:
    """:func:`predict` for 2D slices: a PNG mask per slice in its own size."""
    if min_component_ml > 0:
        raise JaxsegError("--min-component-ml needs voxel sizes in mm; 2D slices have none")
    return predict2d.predict_slices(paths, Predictor(checkpoint, batch_size, calibrated=calibrated), out, probabilities=probabilities,
                                    progress=progress)


def _default_slice_checkpoint(paths: Sequence[Path], say: Callable[[str], None]) -> tuple[Path, None]:
    raise predict2d.no_bundled_model(paths[0])


def _default_checkpoint(paths: Sequence[Path], say: Callable[[str], None]) -> tuple[Path, list[brats.Case]]:
    """The bundled model for volumes given without ``--checkpoint`` (one whose modalities every
    case has; else the error of the first case that lacks them), and the cases found."""
    cases = [case for p in paths for case in _cases_at(p)]
    common = set.intersection(*(set(case.images) for case in cases))
    try:
        return resolve_checkpoint(None, modalities=common, say=say), cases
    except JaxsegError:
        for case in cases:
            resolve_checkpoint(None, modalities=case.images, input_name=f"case {case.case_id} ({case.folder})")
        raise


def _cases_at(path: Path) -> list[brats.Case]:
    """One case for a NIfTI file or a case folder; every case below a dataset folder."""
    if path.is_file():
        return [brats.case_from_path(path)]
    try:
        return [brats.case_from_path(path)]
    except JaxsegError:
        return brats.find_cases(path)


class _Output(NamedTuple):
    default_checkpoint: Callable[[Sequence[Path], Callable[[str], None]], tuple[Path, Any]]
    write: Callable[..., list[Prediction]]


# What prediction writes (formats.prediction_output): NIfTI volumes or 2D PNG masks.
_OUTPUTS = {"nifti": _Output(_default_checkpoint, _predict_volumes),
            "png": _Output(_default_slice_checkpoint, _predict_slices)}
