"""The pure, jitted train and eval steps (CONTRIBUTING.md, habit 2).

Both take the whole :class:`TrainState` and a batch of global arrays sharded on the mesh's
``'data'`` axis; parameters are replicated. XLA inserts the cross-device reductions (batch-norm
statistics, the gradient mean), so one device, emulated CPU devices, GPUs and TPU slices all run
this same code, and a sharded step equals the single-device step.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxseg import overlap
from jaxseg.target import TargetKind, target_kind as kind_of
from jaxseg.train.losses import deep_supervision_loss, loss_fn
from jaxseg.train.state import TrainState

Batch = dict[str, jax.Array]


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_name: str,
                    target_kind: str | TargetKind) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """``train_step(state, batch) -> (state, metrics)``, jitted with the state donated.

    ``batch``: ``image`` (B, H, W, C) float32, ``target`` (B, H, W, K) float32, ``classes``
    (B, H, W) uint8, optional ``valid`` (B,) bool. The dropout key of step ``s`` is
    ``fold_in(state.key, s)``, so a resumed run draws the same masks as an uninterrupted one.
    Returned metrics are sums (loss sum, sample count, confusion sums per region), see
    :func:`eval_sums`. ``target_kind`` (a name or a :class:`~jaxseg.target.TargetKind`) decides
    the regions scored. A model with deep supervision (``model.auxiliary_logits``) is trained on
    :func:`~jaxseg.train.losses.deep_supervision_loss`; the reported loss is the main output's,
    the one the eval step reports.
    """
    loss, kind = loss_fn(loss_name), kind_of(target_kind)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        dropout_key = jax.random.fold_in(state.key, state.step)
        model = nnx.merge(graphdef, state.params, state.batch_stats)
        valid = batch.get("valid")

        def objective(model):
            logits, activations = model(batch["image"], train=True, dropout_key=dropout_key)
            logits = logits.astype(jnp.float32)
            auxiliary = model.auxiliary_logits(activations) if getattr(model, "deep_supervision", 0) else []
            total, main = deep_supervision_loss(loss, logits, auxiliary, batch["target"], valid)
            return total, (main, logits)

        (_, (value, logits)), grads = nnx.value_and_grad(objective, has_aux=True)(model)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: u * state.lr_scale, updates)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=nnx.state(model, nnx.BatchStat),
            opt_state=opt_state,
        )
        sums = _sums(jax.lax.stop_gradient(logits), batch, kind, value)
        sums["grad_norm"] = optax.tree.norm(grads)
        return new_state, sums

    return jax.jit(train_step, donate_argnums=0)


def make_eval_step(graphdef: nnx.GraphDef, loss_name: str, target_kind: str | TargetKind
                   ) -> Callable[[TrainState, Batch], dict]:
    """``eval_step(state, batch) -> sums``: batch norm in inference mode, no dropout."""
    loss, kind = loss_fn(loss_name), kind_of(target_kind)

    def eval_step(state: TrainState, batch: Batch) -> dict:
        model = nnx.merge(graphdef, state.params, state.batch_stats)
        logits, _ = model(batch["image"], train=False)
        logits = logits.astype(jnp.float32)
        return _sums(logits, batch, kind, loss(logits, batch["target"], batch.get("valid")))

    return jax.jit(eval_step)


def _sums(logits: jax.Array, batch: Batch, kind: TargetKind, mean_loss: jax.Array) -> dict:
    """Sums that reduce exactly over batches, devices and hosts (CONTRIBUTING.md, habit 6)."""
    valid = batch.get("valid")
    count = jnp.asarray(logits.shape[0], jnp.float32) if valid is None else valid.sum().astype(jnp.float32)
    pred = kind.region_masks_from_logits(logits)
    ref = kind.region_masks_from_classes(batch["classes"])
    sums = overlap.confusion_sums(pred, ref, valid)
    return {"loss_sum": mean_loss * count, "count": count, **sums}


def add_sums(total: dict | None, sums: dict) -> dict:
    """Accumulate step sums on the host (``grad_norm`` is summed too; divide by steps)."""
    sums = jax.device_get(sums)
    if total is None:
        return dict(sums)
    return {k: total[k] + sums[k] for k in total}
