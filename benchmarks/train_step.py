"""The U-Net train step, jaxseg against PyTorch on the same machine (issues 6 and 16).

    python benchmarks/train_step.py            # 2D: 256 px, batch 4, fp32, default U-Net (7.76 M)
    python benchmarks/train_step.py --3d       # 3D: the 3D U-Net of configs/brats2021_3d.toml, 96^3, batch 2
    python benchmarks/train_step.py --quick    # small sizes (also with --3d): checks the script in seconds

One step = forward, BCE+Dice, backward, Adam, for:

- ``jax``: jaxseg's jitted train step (``jaxseg.train.step.make_train_step``, state donated)
  with ``JAXSEG_CONV=auto``, the default, which on CPU takes the CPU forms of
  ``jaxseg/models/conv.py`` (matrix-product upsampling; tap-product weight gradients below 16
  input channels; in 3D, 3D convolutions as 2D ones);
- ``jax xla-conv`` (2D; in 3D ``--jax-variant "jax xla-conv:JAXSEG_CONV=xla"``): the same with
  XLA's own convolutions and their gradients (``JAXSEG_CONV=xla``);
- ``--jax-variant "NAME:K=V;K=V"``: more jaxseg columns with other environment variables, e.g.
  ``"jax jaxlib-flags:JAXSEG_XLA_DEFAULTS=0"`` without jaxseg's default XLA flags
  (``jaxseg.xla_flags.CPU_XLA_FLAGS``, which every other jax column has);
- ``jax bf16`` (``--bf16``): the default path with ``train.precision = "bfloat16"`` (computing
  in bfloat16; parameters, Adam's state and the loss float32);
- ``torch eager`` (the reference), ``torch eager CL`` (channels_last / channels_last_3d memory
  format) and ``torch.compile`` (2D; skipped with ``--no-compile``, reported if it does not
  finish in time; ``--compile`` adds it in 3D): the same U-Net and loss in torch
  (``benchmarks/torch_unet.py``), ``torch.optim.Adam``.

``--3d``: the 3D U-Net exactly as ``configs/brats2021_3d.toml`` builds it (its features
16..256, its dropout 0.1, its three sigmoid regions WT/TC/ET), on patches of 96^3 (the config
trains on 128^3: ``--size 128`` for that, 2.4x the work a step; 96^3 keeps the benchmark
within 6 minutes on 2 cores), batch 2 as the config. The loss is BCE+Dice and the optimizer plain Adam on both sides
(the config's Dice+focal and AdamW schedule are jaxseg-only code, not what is compared). A
separate script would repeat this one's variants, loss, optimizer and table: the dimension is
the only difference, so it is a mode.

The table ends with every jax variant against the fastest torch variant and its memory above
base against torch eager's, the measures of the goals in docs/speed.md.

Every variant runs in its own process (benchmarks/harness.py): interleaved repetitions, medians,
peak memory per variant. Threads: torch uses ``torch.set_num_threads(os.cpu_count())``; XLA uses
every core by default.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from harness import Variant, add_variant_option, env_variants, print_table, proc_status_mb, run_side_by_side  # noqa: E402


def _data(batch: int, spatial: tuple[int, ...], cin: int, channels: int, seed: int = 0):
    """``image (B, *spatial, cin)`` float32 noise, ``target (B, *spatial, channels)`` float32 and
    ``classes (B, *spatial)`` uint8: nested blobs (internal classes 2 edema, 1 necrosis, 3
    enhancing) so no Dice term is degenerate; ``channels`` 1 is WT, 3 is WT/TC/ET."""
    import numpy as np
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((batch, *spatial, cin), dtype=np.float32)
    grid = np.meshgrid(*(np.arange(n) / n for n in spatial), indexing="ij")
    radius = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, (1 / 2, 1 / 3, 1 / 2))))
    classes = np.select([radius < 1 / 12, radius < 1 / 9, radius < 1 / 6], [1, 3, 2], 0).astype(np.uint8)
    regions = [classes > 0, (classes == 1) | (classes == 3), classes == 3][:channels]  # WT, TC, ET
    target = np.stack(regions, axis=-1).astype(np.float32)
    tile = (batch,) + (1,) * (len(spatial) + 1)
    return image, np.tile(target[None], tile), np.tile(classes[None], tile[:-1])


def jax_setup(nd: int, batch: int, size: int, cin: int, features: tuple, dropout: float, bf16: bool):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jaxseg import config as config_lib
    from jaxseg.data import pipeline
    from jaxseg.train.state import create_state, graphdef_of, make_optimizer
    from jaxseg.train.step import make_train_step
    base = proc_status_mb("VmRSS")
    target_kind = "wt" if nd == 2 else "regions"
    cfg = config_lib.load_from_dict({
        "model": {"name": "unet" if nd == 2 else "unet3d", "features": list(features), "dropout": dropout},
        "data": {"target": target_kind, "modalities": ["flair", "t1", "t1ce", "t2"][:cin],
                 **({"patch_size": size} if nd == 3 else {})},
        "train": {"batch_size": batch, "loss": "bce_dice", "optimizer": "adam",
                  "precision": "bfloat16" if bf16 else "float32"}})
    mesh = pipeline.make_mesh()
    tx = make_optimizer(cfg, 1000)
    state = create_state(cfg, tx, mesh)
    step = make_train_step(graphdef_of(cfg), tx, "bce_dice", target_kind)
    image, target, classes = _data(batch, (size,) * nd, cin, cfg.out_channels)
    batch_arrays = {"image": jnp.asarray(image), "target": jnp.asarray(target), "classes": jnp.asarray(classes)}
    holder = {"state": state}

    def run():
        holder["state"], sums = step(holder["state"], batch_arrays)
        jax.block_until_ready(sums["loss_sum"])

    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    from jaxseg.models import conv
    return run, {"params": params, "_base_rss_mb": base, "conv": conv.default_mode(),
                 "device": jax.devices()[0].platform}


def torch_setup(nd: int, batch: int, size: int, cin: int, features: tuple, dropout: float, channels_last: bool,
                compile: bool):
    import torch
    from torch_unet import UNet, bce_dice, n_params
    torch.set_num_threads(os.cpu_count())
    base = proc_status_mb("VmRSS")
    torch.manual_seed(0)
    channels = 1 if nd == 2 else 3  # as jax_setup's target: WT, or WT/TC/ET
    model = UNet(cin, channels, features, dropout=dropout, nd=nd)
    image, target, _ = _data(batch, (size,) * nd, cin, channels)
    x = torch.from_numpy(image).movedim(-1, 1).contiguous()
    y = torch.from_numpy(target).movedim(-1, 1).contiguous()
    if channels_last:
        fmt = torch.channels_last if nd == 2 else torch.channels_last_3d
        model = model.to(memory_format=fmt)
        x, y = x.to(memory_format=fmt), y.to(memory_format=fmt)
    params = n_params(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    forward = torch.compile(model) if compile else model

    def run():
        opt.zero_grad(set_to_none=True)
        logits, _ = forward(x)
        loss = bce_dice(logits, y)
        loss.backward()
        opt.step()
        float(loss.detach())  # synchronous anyway on CPU; keeps the step honest

    return run, {"params": params, "_base_rss_mb": base, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--3d", dest="three_d", action="store_true",
                    help="the 3D U-Net of configs/brats2021_3d.toml on cubic patches")
    ap.add_argument("--quick", action="store_true",
                    help="small sizes, 3 repetitions (2D: 64 px, features 8..64; 3D: 32^3, features 4..16)")
    ap.add_argument("--size", type=int, default=0, help="slice / patch edge (default 256 in 2D, 96 in 3D)")
    ap.add_argument("--batch", type=int, default=0, help="default 4 in 2D, 2 in 3D")
    ap.add_argument("--in-channels", type=int, default=4, help="MRI modalities (jaxseg's default: 4)")
    ap.add_argument("--features", default="", help="default 32..512 in 2D, the 3D config's in 3D")
    ap.add_argument("--reps", type=int, default=0, help="default 10 in 2D, 3 in 3D")
    ap.add_argument("--warmup", type=int, default=0, help="default 2 in 2D, 1 in 3D")
    ap.add_argument("--bf16", action="store_true", help="also time jaxseg in bfloat16")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (2D)")
    ap.add_argument("--compile", action="store_true", help="add torch.compile in 3D")
    ap.add_argument("--compile-timeout", type=float, default=900.0, help="seconds torch.compile may take")
    ap.add_argument("--only", default="", help="comma-separated variant names to run (default all)")
    add_variant_option(ap)
    args = ap.parse_args()
    nd = 3 if args.three_d else 2
    dropout = 0.0
    if nd == 2:
        defaults = dict(size=256, batch=4, features="32,64,128,256,512", reps=10, warmup=2)
    else:  # the shipped 3D model: its features and dropout (read here; no jax in this process)
        from jaxseg import config as config_lib
        model_cfg = config_lib.load("brats2021_3d").model
        dropout = model_cfg.dropout
        defaults = dict(size=96, batch=2, features=",".join(map(str, model_cfg.features)), reps=3, warmup=1)
    if args.quick:
        defaults.update(size=64 if nd == 2 else 32, features="8,16,32,64" if nd == 2 else "4,8,16",
                        reps=3, warmup=1)
    for key, value in defaults.items():
        if not getattr(args, key):
            setattr(args, key, value)
    features = tuple(int(f) for f in args.features.split(","))
    common = dict(nd=nd, batch=args.batch, size=args.size, cin=args.in_channels, features=features, dropout=dropout)
    with_compile = args.compile if nd == 3 else not args.no_compile
    variants = [Variant("jax", jax_setup, dict(common, bf16=False), env={"JAXSEG_CONV": "auto"})]
    if nd == 2:  # 3D: XLA's own 3D convolutions are the slow path; --jax-variant "jax xla-conv:JAXSEG_CONV=xla"
        variants.insert(0, Variant("jax xla-conv", jax_setup, dict(common, bf16=False), env={"JAXSEG_CONV": "xla"}))
    variants += env_variants(args.jax_variant, jax_setup, dict(common, bf16=False))
    if args.bf16:
        variants.append(Variant("jax bf16", jax_setup, dict(common, bf16=True), env={"JAXSEG_CONV": "auto"}))
    variants += [
        Variant("torch eager", torch_setup, dict(common, channels_last=False, compile=False)),
        Variant("torch eager CL", torch_setup, dict(common, channels_last=True, compile=False)),
    ]
    if with_compile:
        variants.append(Variant("torch.compile", torch_setup, dict(common, channels_last=False, compile=True),
                                setup_timeout=args.compile_timeout))
    if args.only:
        keep = {s.strip() for s in args.only.split(",")}
        variants = [v for v in variants if v.name in keep]
    what = (f"{nd}D U-Net {features}, dropout {dropout}, {args.in_channels} -> {1 if nd == 2 else 3} channels, "
            f"batch {args.batch} x {'x'.join([str(args.size)] * nd)}, BCE+Dice, Adam")
    print(f"train step: {what}", flush=True)
    t0 = time.time()
    results = run_side_by_side(variants, args.reps, args.warmup)
    print_table(f"Train step, {what} ({time.time() - t0:.0f} s wall)", results, reference="torch eager",
                extra=("params",))


if __name__ == "__main__":
    main()
