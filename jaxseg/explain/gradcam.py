"""Grad-CAM for every model that returns ``(logits, activations)`` and takes ``perturb``.

Grad-CAM (Selvaraju et al. 2017) explains a scalar score ``s`` with one activation ``A``
``(B, *spatial, C)``: channel weights ``w_c`` are ``ds/dA_c`` averaged over the spatial axes, the
map is ``ReLU(sum_c w_c A_c)``, brought to the input's size (bilinear in 2D, trilinear in 3D) and
divided by its maximum per sample. The gradient is ``jax.grad`` with respect to a zero
``perturb[layer]`` added to the named activation (CONTRIBUTING.md, habit 1), so there are no hooks and
the whole map is one pure, jitted function of ``(params, batch_stats, images)``.

Spatial rank is read off the arrays, so one code path serves 2D slices ``(B, H, W, C)`` and 3D
volumes ``(B, D, H, W, C)``.

**Targets.** :class:`Target` names the score, shared with :mod:`jaxseg.explain.faithfulness`:

- ``score='mean'``: the mean probability of ``channel`` over the whole image (the seed work's
  mean-score wrapper);
- ``score='predicted'``: the mean over the pixels the model puts in ``channel`` (probability >
  0.5 for sigmoid targets, argmax for softmax ones), so the map explains the segment it drew;
- ``score='mask'``: the mean over a user mask ``(B, *spatial)`` bool.

If the chosen pixel set of a sample is empty the score falls back to the image mean, so an
image without predicted tumor still gets an explanation (of "why no tumor here").

``channel`` is a region name or an output index; the model's target kind
(:class:`jaxseg.target.TargetKind`) says which regions it predicts and how: ``wt`` has WT only
(its sigmoid channel); ``regions`` has WT, TC, ET (its sigmoid channels); ``classes`` derives
them from the softmax (WT = 1 - p_bg, TC = p_NCR + p_ET, ET = p_ET). An integer ``k`` is the
model's output channel ``k`` itself (for ``classes``: the probability of internal class ``k``,
2 = edema). See :meth:`~jaxseg.target.TargetKind.probability_table`.

The target is traced, not static: switching region or score reuses the compiled program.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxseg import target as target_lib
from jaxseg.infer import chunks
from jaxseg.target import REGIONS, TargetKind

SCORES = ("mean", "predicted", "mask")


@dataclasses.dataclass(frozen=True)
class Target:
    """The scalar an explanation explains, per sample.

    Attributes:
      score: ``'mean'``, ``'predicted'`` or ``'mask'`` (see the module docstring).
      channel: a region name (``'WT'``, ``'TC'``, ``'ET'``) or an output channel index.
    """
    score: str = "mean"
    channel: int | str = "WT"

    def __post_init__(self):
        if self.score not in SCORES:
            raise ValueError(f"target score must be one of {SCORES}, got {self.score!r}")


def parse_target(spec: Target | str) -> Target:
    """A :class:`Target`, or a string ``'<score>'`` / ``'<score>:<channel>'`` such as
    ``'predicted:TC'`` or ``'mean:2'``; a bare region name (``'ET'``) means ``'mean:ET'``."""
    if isinstance(spec, Target):
        return spec
    score, _, channel = str(spec).partition(":")
    if not channel and score.upper() in REGIONS:
        return Target("mean", score.upper())
    if not channel:
        return Target(score)
    return Target(score, int(channel) if channel.lstrip("-").isdigit() else channel.upper())


def target_probability(logits: jax.Array, target_kind: str | TargetKind, index: jax.Array | int
                       ) -> tuple[jax.Array, jax.Array]:
    """Probability ``(B, *spatial)`` float32 and predicted mask ``(B, *spatial)`` bool of the
    :meth:`~jaxseg.target.TargetKind.probability_table` column ``index`` (a traced int is fine:
    see :meth:`~jaxseg.target.TargetKind.table_index`); ``target_kind`` a name or a kind."""
    probs, predicted = target_lib.target_kind(target_kind).probability_table(logits.astype(jnp.float32))
    index = jnp.asarray(index, jnp.int32)
    return (jnp.take(probs, index, axis=-1, mode="clip"),
            jnp.take(predicted, index, axis=-1, mode="clip"))


def masked_mean(values: jax.Array, pixels: jax.Array) -> jax.Array:
    """Per-sample mean of ``values (B, *spatial)`` over ``pixels (B, *spatial)`` bool -> ``(B,)``;
    a sample with no pixels gets its mean over the whole image."""
    axes = tuple(range(1, values.ndim))
    has_any = jnp.any(pixels, axis=axes, keepdims=True)
    pixels = jnp.where(has_any, pixels, True)
    weight = pixels.astype(values.dtype)
    return (values * weight).sum(axis=axes) / weight.sum(axis=axes)


def target_score(logits: jax.Array, target_kind: str | TargetKind, index: jax.Array | int,
                 use_prediction: jax.Array | bool, mask: jax.Array) -> jax.Array:
    """The per-sample score ``(B,)`` float32 of a target.

    Pixels are ``mask`` (and, if ``use_prediction``, the predicted mask of the channel); the
    predicted mask is a comparison, so no gradient flows through which pixels count.
    """
    prob, predicted = target_probability(logits, target_kind, index)
    pixels = mask & jnp.where(use_prediction, jax.lax.stop_gradient(predicted), True)
    return masked_mean(prob, pixels)


def resolve_target(target: Target | str, target_kind: TargetKind, mask: Any, spatial_shape: tuple[int, ...]
                   ) -> tuple[int, bool, jax.Array]:
    """``(index, use_prediction, mask (B, *spatial) bool)`` for the traced core functions."""
    target = parse_target(target)
    if (target.score == "mask") != (mask is not None):
        raise ValueError("a user mask goes with score='mask' and only with it "
                         f"(score={target.score!r}, mask given: {mask is not None})")
    if mask is None:
        mask = jnp.ones(spatial_shape, bool)
    else:
        mask = jnp.asarray(mask).astype(bool)
        if mask.shape != tuple(spatial_shape):
            raise ValueError(f"mask has shape {mask.shape}; the images need {tuple(spatial_shape)}")
    return target_kind.table_index(target.channel), target.score == "predicted", mask


def output_kind(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, images: Any) -> TargetKind:
    """The target kind from the model's logit channels (an abstract trace, no compute)."""
    def logits(params, batch_stats, x):
        return nnx.merge(graphdef, params, batch_stats)(x, train=False)[0]
    shape = jax.eval_shape(logits, params, batch_stats,
                           jax.ShapeDtypeStruct(np.shape(images), jnp.float32)).shape
    return target_lib.target_for_channels(shape[-1])


def resolve_kind(target_kind: str | TargetKind | None, graphdef: nnx.GraphDef, params: nnx.State,
                 batch_stats: nnx.State, images: Any) -> TargetKind:
    """The :class:`~jaxseg.target.TargetKind` named (or given) by ``target_kind``; None: the one
    the model's number of logit channels implies (:func:`output_kind`)."""
    if target_kind is None:
        return output_kind(graphdef, params, batch_stats, images)
    return target_lib.target_kind(target_kind)


# --------------------------------------------------------------------------------- Grad-CAM

@functools.partial(jax.jit, static_argnames=("graphdef", "layer", "target_kind", "normalise"))
def _gradcam(graphdef, params, batch_stats, images, index, use_prediction, mask, *, layer, target_kind,
             normalise=True):
    def forward(perturb):
        model = nnx.merge(graphdef, params, batch_stats)
        return model(images, train=False, perturb=perturb)

    shapes = jax.eval_shape(lambda: forward(None)[1])
    if layer not in shapes:
        raise ValueError(f"layer {layer!r} is not an activation of this model; known: {tuple(shapes)}")

    def score(delta):
        logits, activations = forward({layer: delta})
        # Samples are independent (batch norm in inference mode), so the gradient of the sum
        # is every sample's own gradient.
        return target_score(logits, target_kind, index, use_prediction, mask).sum(), activations[layer]

    zero = jnp.zeros(shapes[layer].shape, jnp.float32)
    grads, activation = jax.grad(score, has_aux=True)(zero)
    return cam_from_gradients(activation.astype(jnp.float32), grads, images.shape[1:-1], normalise=normalise)


def cam_from_gradients(activation: jax.Array, grads: jax.Array, size: tuple[int, ...], *,
                       normalise: bool = True) -> jax.Array:
    """The Grad-CAM map from an activation and the score's gradient with respect to it.

    Args:
      activation, grads: ``(B, *spatial, C)`` float32, any number of spatial axes.
      size: the input's spatial shape to resize to.
    Returns:
      ``(B, *size)`` float32 in [0, 1]: per sample divided by its maximum (an all-zero map stays
      zero). Dividing by the maximum, not min-max, keeps zero meaning "no evidence", so mass
      shares are comparable between maps. ``normalise=False``: the map before that division
      (for normalising over a whole volume, :func:`jaxseg.explain.layer_quality.normalise_map`).
    """
    axes = tuple(range(1, activation.ndim - 1))
    weights = grads.mean(axis=axes, keepdims=True)  # (B, 1, ..., 1, C)
    cam = jax.nn.relu((weights * activation).sum(axis=-1))
    # 'linear' is bilinear / trilinear with half-pixel centres (PyTorch's align_corners=False);
    # it only upsamples here, so antialiasing never applies.
    cam = jax.image.resize(cam, (cam.shape[0], *size), method="linear")
    if not normalise:
        return cam
    peak = cam.max(axis=tuple(range(1, cam.ndim)), keepdims=True)
    return jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1.0), 0.0)


def gradcam(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, images: Any,
            layer: str, target: Target | str = "mean", *, mask: Any = None,
            target_kind: str | TargetKind | None = None, normalise: bool = True) -> jax.Array:
    """Grad-CAM maps of a batch.

    Args:
      graphdef, params, batch_stats: the model (``nnx.split(model, nnx.Param, nnx.BatchStat)``,
        or a :class:`~jaxseg.infer.predict.Predictor`'s attributes).
      images: ``(B, *spatial, C)`` float32 (numpy or jax), as the model takes them.
      layer: the activation to explain, e.g. ``'enc2'`` or ``'dec0'`` (``model.activation_names``).
      target: a :class:`Target` or its string form (``'mean'``, ``'predicted:TC'``, ``'mask:ET'``).
      mask: ``(B, *spatial)`` bool, only with ``score='mask'``.
      target_kind: a ``data.target`` name or :class:`~jaxseg.target.TargetKind`; None infers it
        from the number of logit channels (1, 3, 4).
      normalise: divide each sample by its maximum; False = the raw map (>= 0).
    Returns:
      ``(B, *spatial)`` float32 in [0, 1], each sample's maximum 1 (or all zero).
    """
    images = jnp.asarray(images, jnp.float32)
    kind = resolve_kind(target_kind, graphdef, params, batch_stats, images)
    index, use_prediction, mask = resolve_target(target, kind, mask, images.shape[:-1])
    return _gradcam(graphdef, params, batch_stats, images, jnp.int32(index), jnp.bool_(use_prediction),
                    mask, layer=layer, target_kind=kind, normalise=bool(normalise))


def gradcam_times_mask(cam: Any, mask: Any) -> jax.Array:
    """Grad-CAM x ground truth: ``cam (B, *spatial)`` times ``mask (B, *spatial)`` (bool or 0/1)
    as float32; not renormalised, so its mass over the cam's mass is the share inside the mask."""
    return jnp.asarray(cam, jnp.float32) * jnp.asarray(mask).astype(jnp.float32)


def mass_fraction(cam: Any, mask: Any) -> np.ndarray:
    """Share of each map's mass inside ``mask``: ``(B,)`` float64 (0 for an all-zero map)."""
    cam = np.asarray(cam, np.float64)
    axes = tuple(range(1, cam.ndim))
    total = cam.sum(axis=axes)
    inside = (cam * np.asarray(mask, bool)).sum(axis=axes)
    return np.where(total > 0, inside / np.where(total > 0, total, 1.0), 0.0)


def gradcam_volume(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, slices: Any,
                   layer: str, target: Target | str = "mean", *, mask: Any = None,
                   target_kind: str | TargetKind | None = None, batch_size: int = 16,
                   normalise: bool = True) -> np.ndarray:
    """Grad-CAM of every slice of a volume, ``batch_size`` slices at a time.

    Args:
      slices: ``(Z, S, S, C)`` float32 preprocessed slices (``PreparedVolume.slices``).
      mask: ``(Z, S, S)`` bool, only with ``score='mask'``.
      Others as :func:`gradcam`.
    Returns:
      ``(Z, S, S)`` float32 numpy, each slice normalised on its own (``normalise=False``: raw,
      for a per-volume normalisation).

    The last chunk is zero-padded to ``batch_size`` so the whole volume runs one compiled
    program; padded rows are dropped. If the parameters live on a mesh with a ``'data'`` axis
    (a :class:`~jaxseg.infer.predict.Predictor`'s do) and ``batch_size`` divides over it, each
    chunk is split over the devices, as prediction does.
    """
    slices = np.asarray(slices, np.float32)
    sharding = _batch_sharding(params, batch_size)
    target_kind = resolve_kind(target_kind, graphdef, params, batch_stats, slices[:1])
    if mask is not None:
        mask = np.asarray(mask, bool)
    return chunks.map_chunks(
        lambda _, chunk, chunk_mask: gradcam(graphdef, params, batch_stats, chunk, layer, target,
                                             mask=chunk_mask, target_kind=target_kind, normalise=normalise),
        slices, mask, batch_size=batch_size, sharding=sharding,
        empty=np.zeros((0, *slices.shape[1:-1]), np.float32))


def _batch_sharding(params: nnx.State, batch_size: int) -> NamedSharding | None:
    """Batches split on ``'data'`` of the mesh the parameters live on, if that divides them."""
    leaves = jax.tree.leaves(params)
    sharding = getattr(leaves[0], "sharding", None) if leaves else None
    if not isinstance(sharding, NamedSharding) or "data" not in sharding.mesh.axis_names:
        return None
    if batch_size % sharding.mesh.shape["data"]:
        return None
    return NamedSharding(sharding.mesh, P("data"))
