"""Target kinds: what a model's output channels mean, in one place (CONTRIBUTING.md, habit 13).

A *target kind* (``data.target``) decides the number of output channels, their activation, the
training target made from a label map, how outputs become label maps and BraTS regions, and which
regions are scored. Every consumer asks the :class:`TargetKind` of its config
(:func:`target_for`) instead of comparing names.

Label conventions (docs/architecture.md): *internal classes* are 0 background, 1 NCR, 2 ED,
3 ET (uint8; file labels are converted in :mod:`jaxseg.data.brats`); the BraTS regions are
WT = {1, 2, 3}, TC = {1, 3}, ET = {3} (:data:`REGION_CLASSES`, broad to narrow).

The kinds (:data:`TARGET_KINDS`):

- ``wt``: 1 sigmoid channel, the whole tumor; scored on WT;
- ``regions``: 3 sigmoid channels WT, TC, ET (overlapping); scored on WT, TC, ET;
- ``classes``: 4 softmax channels background, NCR, ED, ET; scored on WT, TC, ET derived from them
  (WT = 1 - p_background, TC = p_NCR + p_ET, ET = p_ET).

Array functions take numpy arrays (host side) or jax arrays (inside jitted functions) and
answer in kind. Adding a kind: one more :class:`SigmoidRegions` or :class:`SoftmaxClasses` in
:data:`TARGET_KINDS` (and a test in tests/test_target.py); config choices, channel counts, losses,
metrics, explanations and written maps follow from it.

This module imports nothing of jaxseg but errors: every layer (data included) may use it.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from jaxseg.errors import JaxsegError

CLASS_NAMES = ("background", "NCR", "ED", "ET")  # internal classes 0, 1, 2, 3
# Each BraTS region as the internal classes it holds, broad to narrow.
REGION_CLASSES: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
REGIONS = tuple(REGION_CLASSES)  # ("WT", "TC", "ET")


def divide_by_temperature(logits, temperature):
    """``logits (..., K) / temperature``, a calibration (docs/calibration.md): ``temperature`` a
    scalar or ``(K,)`` (one per channel, broadcast over the last axis), numpy or jax (also traced);
    None leaves the logits as they are. T > 0 keeps every logit's sign, so 0.5 thresholds stay."""
    if temperature is None:
        return logits
    xp = _xp(logits)
    t = xp.asarray(temperature, logits.dtype)
    return logits / xp.reshape(t, (1,) * (logits.ndim - 1) + (-1,))


def _xp(x):
    """numpy for numpy inputs (host-side evaluation), jax.numpy otherwise (jitted steps)."""
    return np if isinstance(x, (np.ndarray, np.generic)) else jnp


def _in_classes(classes, members: tuple[int, ...]):
    """bool ``(...)``: where ``classes (...)`` is one of ``members``."""
    mask = classes == members[0]
    for c in members[1:]:
        mask = mask | (classes == c)
    return mask


def region_masks(classes) -> Any:
    """Internal classes ``(...)`` (0-3) -> bool ``(..., 3)`` masks of WT, TC, ET (numpy or jax)."""
    xp = _xp(classes)
    return xp.stack([_in_classes(classes, REGION_CLASSES[r]) for r in REGIONS], axis=-1)


@dataclasses.dataclass(frozen=True)
class TargetKind:
    """What a model's K output channels mean. Subclasses implement the array functions.

    Attributes:
      name: the ``data.target`` value.
      description: one line for help texts and errors.
      channel_names: the K output channels.
      region_names: the BraTS regions it is scored on (WT first), R of them.
      activation: ``'sigmoid'`` (independent channels) or ``'softmax'`` (exclusive classes).
      default_loss: the ``train.loss`` a run of this kind uses unless told otherwise.
    """
    name: str
    description: str
    channel_names: tuple[str, ...]
    region_names: tuple[str, ...]
    activation: str
    default_loss: str

    @property
    def channels(self) -> int:
        """K, the number of output channels."""
        return len(self.channel_names)

    @property
    def whole_tumor_only(self) -> bool:
        """True if the kind knows the whole tumor only (fits binary tumor masks, e.g. 2D slices)."""
        return self.region_names == ("WT",)

    @property
    def table_names(self) -> tuple[str, ...]:
        """The columns of :meth:`probability_table`: the regions, then (for softmax kinds, whose
        outputs are not regions) the output channels."""
        return self.region_names if self.channel_names == self.region_names else self.region_names + self.channel_names

    def accepts_loss(self, loss: str) -> bool:
        """Whether ``train.loss = loss`` fits the activation (``ce_dice`` is the softmax loss)."""
        return (loss == "ce_dice") == (self.activation == "softmax")

    # -- model output -> probabilities, predictions, regions
    def probabilities(self, logits):
        """Logits ``(..., K)`` -> probabilities ``(..., K)`` float (sigmoid or softmax)."""
        raise NotImplementedError

    def predictions_from_logits(self, logits):
        """Binary predictions ``bool (..., K)`` from logits ``(..., K)``."""
        raise NotImplementedError

    def region_masks_from_prediction(self, pred):
        """BraTS regions ``bool (..., R)`` from a prediction ``bool (..., K)``."""
        raise NotImplementedError

    def region_masks_from_logits(self, logits):
        """``region_masks_from_prediction(predictions_from_logits(logits))``: bool ``(..., R)``."""
        return self.region_masks_from_prediction(self.predictions_from_logits(logits))

    def region_probabilities(self, probs):
        """Probabilities ``(..., K)`` -> region probabilities ``(..., R)`` float."""
        raise NotImplementedError

    def whole_tumor_probability(self, probs):
        """Probabilities ``(..., K)`` -> the whole tumor's probability ``(...)`` float."""
        return self.region_probabilities(probs)[..., 0]

    def probability_table(self, logits) -> tuple[Any, Any]:
        """Every column an explanation can select (:attr:`table_names`) from logits ``(..., K)``:
        ``(probs, predicted)``, float32 and bool ``(..., T)``."""
        raise NotImplementedError

    def table_index(self, channel: int | str) -> int:
        """The :meth:`probability_table` column of a region name (``'TC'``) or an output channel
        index (``2``: for ``classes`` the probability of internal class 2, edema)."""
        if isinstance(channel, str):
            if channel.upper() not in self.region_names:
                raise ValueError(f"region {channel!r} is not predicted by a {self.name!r} model "
                                 f"(has {self.region_names})")
            return self.region_names.index(channel.upper())
        if not 0 <= int(channel) < self.channels:
            raise ValueError(f"channel {channel} out of range for a {self.name!r} model ({self.channels} outputs)")
        # The output channels are the last K columns (for sigmoid kinds: all of them).
        return len(self.table_names) - self.channels + int(channel)

    # -- label maps
    def region_masks_from_classes(self, classes):
        """The scored regions ``bool (..., R)`` of internal classes ``(...)`` uint8 (0-3)."""
        xp = _xp(classes)
        return xp.stack([_in_classes(classes, REGION_CLASSES[r]) for r in self.region_names], axis=-1)

    def encode(self, classes: np.ndarray) -> np.ndarray:
        """Internal classes ``(...)`` uint8 -> the training target, float32 ``(..., K)``."""
        raise NotImplementedError

    def classes_from_output(self, output: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """A model output (probabilities or 0/1 masks; logits too for softmax) ``(..., K)`` ->
        internal classes ``(...)`` uint8, for writing and scoring."""
        raise NotImplementedError

    def _check_channels(self, output) -> None:
        if np.ndim(output) == 0 or output.shape[-1] != self.channels:
            raise ValueError(f"target {self.name!r} needs a last axis of {self.channels} channels, "
                             f"got shape {np.shape(output)}")


@dataclasses.dataclass(frozen=True)
class SigmoidRegions(TargetKind):
    """Each output channel is one BraTS region (sigmoid, independent, may overlap).

    Attributes:
      fill_labels: the internal class written where a region is predicted and no narrower one
        is (for WT/TC/ET: ED in WT, NCR in TC, ET in ET, the standard BraTS nesting; for ``wt``:
        1, since a whole-tumor model cannot tell NCR, ED and ET apart and writes 0/1 masks).
    """
    fill_labels: tuple[int, ...] = ()

    def probabilities(self, logits):
        return special.expit(logits) if _xp(logits) is np else jax.nn.sigmoid(logits)

    def predictions_from_logits(self, logits):
        return logits > 0  # sigmoid > 0.5, exactly and without overflow

    def region_masks_from_prediction(self, pred):
        return pred

    def region_probabilities(self, probs):
        return probs

    def probability_table(self, logits):
        logits = logits.astype(jnp.float32) if _xp(logits) is jnp else logits.astype(np.float32)
        return self.probabilities(logits), logits > 0

    def encode(self, classes):
        return self.region_masks_from_classes(np.asarray(classes)).astype(np.float32)

    def classes_from_output(self, output, threshold=0.5):
        output = np.asarray(output)
        self._check_channels(output)
        inside = output > threshold
        classes = np.zeros(output.shape[:-1], np.uint8)
        for k, label in enumerate(self.fill_labels):  # broad to narrow: the narrowest region wins
            classes[inside[..., k]] = label
        return classes


@dataclasses.dataclass(frozen=True)
class SoftmaxClasses(TargetKind):
    """The output channels are the internal classes (softmax, exclusive); regions are unions."""

    def probabilities(self, logits):
        return special.softmax(logits, axis=-1) if _xp(logits) is np else jax.nn.softmax(logits, axis=-1)

    def predictions_from_logits(self, logits):
        xp = _xp(logits)
        winner = xp.argmax(logits, axis=-1)[..., None]
        return winner == xp.arange(self.channels).reshape((1,) * (logits.ndim - 1) + (self.channels,))

    def region_masks_from_prediction(self, pred):
        xp = _xp(pred)
        return xp.stack([_union(pred, REGION_CLASSES[r]) for r in self.region_names], axis=-1)

    def region_probabilities(self, probs):
        xp = _xp(probs)
        return xp.stack([self._region_probability(probs, REGION_CLASSES[r]) for r in self.region_names], axis=-1)

    def _region_probability(self, probs, members: tuple[int, ...]):
        # The shorter sum has less rounding: WT is 1 - p_background rather than p_NCR + p_ED + p_ET.
        others = tuple(c for c in range(self.channels) if c not in members)
        if len(others) < len(members):
            return 1.0 - _channel_sum(probs, others)
        return _channel_sum(probs, members)

    def probability_table(self, logits):
        xp = _xp(logits)
        logits = logits.astype(np.float32 if xp is np else jnp.float32)
        probs = self.probabilities(logits)
        onehot = self.predictions_from_logits(logits)
        return (xp.concatenate([self.region_probabilities(probs), probs], axis=-1),
                xp.concatenate([self.region_masks_from_prediction(onehot), onehot], axis=-1))

    def encode(self, classes):
        return np.eye(self.channels, dtype=np.float32)[np.asarray(classes).astype(np.intp, copy=False)]

    def classes_from_output(self, output, threshold=0.5):
        output = np.asarray(output)
        self._check_channels(output)
        return np.argmax(output, axis=-1).astype(np.uint8)


def _channel_sum(values, channels: tuple[int, ...]):
    total = values[..., channels[0]]
    for c in channels[1:]:
        total = total + values[..., c]
    return total


def _union(pred, channels: tuple[int, ...]):
    mask = pred[..., channels[0]]
    for c in channels[1:]:
        mask = mask | pred[..., c]
    return mask


TARGET_KINDS: dict[str, TargetKind] = {kind.name: kind for kind in (
    SigmoidRegions("wt", "binary whole tumor", ("WT",), ("WT",), "sigmoid", "bce_dice", fill_labels=(1,)),
    SigmoidRegions("regions", "WT/TC/ET", REGIONS, REGIONS, "sigmoid", "bce_dice", fill_labels=(2, 1, 3)),
    SoftmaxClasses("classes", "bg/NCR/ED/ET", CLASS_NAMES, REGIONS, "softmax", "ce_dice"),
)}


def target_kind(name: str | TargetKind) -> TargetKind:
    """The :class:`TargetKind` called ``name`` (a kind passes through); an unknown name is a user
    error (``data.target``)."""
    if isinstance(name, TargetKind):
        return name
    try:
        return TARGET_KINDS[name]
    except (KeyError, TypeError):
        raise JaxsegError(f"data.target: must be one of {', '.join(TARGET_KINDS)}; got {name!r}") from None


def target_for(cfg: Any) -> TargetKind:
    """The :class:`TargetKind` of a config (anything with ``.data.target``)."""
    return target_kind(cfg.data.target)


def target_for_channels(channels: int) -> TargetKind:
    """The one kind with ``channels`` outputs (1 wt, 3 regions, 4 classes), for checkpoints that
    do not name their target. ValueError if no kind or several have that many."""
    found = [kind for kind in TARGET_KINDS.values() if kind.channels == int(channels)]
    if len(found) != 1:
        raise ValueError(f"cannot tell the target kind of a model with {channels} output channels; "
                         "pass target_kind")
    return found[0]
