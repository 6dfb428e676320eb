"""The 2D U-Net train step, jaxseg against PyTorch on the same machine (issue 6).

    python benchmarks/train_step.py            # 256 px, batch 4, fp32, default U-Net (7.76 M)
    python benchmarks/train_step.py --quick    # 64 px, small U-Net: checks the script in seconds

One step = forward, BCE+Dice, backward, Adam, for:

- ``jax xla-conv``: jaxseg's jitted train step (``jaxseg.train.step.make_train_step``, state
  donated) with XLA's own convolution gradients (``JAXSEG_CONV=xla``);
- ``jax``: the same with ``JAXSEG_CONV=auto``, the default, which on CPU takes the CPU forms
  of ``jaxseg/models/conv.py`` (matrix-product upsampling; tap-product weight gradients below
  16 input channels);
- ``--jax-variant "NAME:K=V;K=V"``: more jaxseg columns with other environment variables, e.g.
  ``"jax jaxlib-flags:JAXSEG_XLA_DEFAULTS=0"`` without jaxseg's default XLA flags
  (``jaxseg.xla_flags.CPU_XLA_FLAGS``, which every other jax column has);
- ``jax bf16`` (``--bf16``): the default path computing in bfloat16 (parameters float32);
- ``torch eager`` (the reference), ``torch eager CL`` (channels_last memory format) and
  ``torch.compile`` (skipped with ``--no-compile``, reported if it does not finish in time):
  the same U-Net and loss in torch (``benchmarks/torch_unet.py``), ``torch.optim.Adam``.

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


def _data(batch: int, size: int, cin: int, seed: int = 0):
    import numpy as np
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((batch, size, size, cin), dtype=np.float32)
    # A blob per image so the Dice term is not degenerate.
    yy, xx = np.mgrid[:size, :size]
    target = ((yy - size / 2) ** 2 + (xx - size / 3) ** 2 < (size / 6) ** 2).astype(np.float32)
    target = np.broadcast_to(target[None, :, :, None], (batch, size, size, 1)).copy()
    return image, target


def jax_setup(batch: int, size: int, cin: int, features: tuple, bf16: bool):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jaxseg import config as config_lib
    from jaxseg.data import pipeline
    from jaxseg.train.state import create_state, graphdef_of, make_optimizer
    from jaxseg.train.step import make_train_step
    base = proc_status_mb("VmRSS")
    cfg = config_lib.load_from_dict({
        "model": {"features": list(features)}, "data": {"target": "wt", "modalities": ["flair", "t1", "t1ce", "t2"][:cin]},
        "train": {"batch_size": batch, "loss": "bce_dice", "bf16": bf16}})
    mesh = pipeline.make_mesh()
    tx = make_optimizer(cfg, 1000)
    state = create_state(cfg, tx, mesh)
    step = make_train_step(graphdef_of(cfg), tx, "bce_dice", "wt")
    image, target = _data(batch, size, cin)
    batch_arrays = {"image": jnp.asarray(image), "target": jnp.asarray(target),
                    "classes": jnp.asarray(target[..., 0].astype(np.uint8))}
    holder = {"state": state}

    def run():
        holder["state"], sums = step(holder["state"], batch_arrays)
        jax.block_until_ready(sums["loss_sum"])

    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    from jaxseg.models import conv
    return run, {"params": params, "_base_rss_mb": base, "conv": conv.default_mode(),
                 "device": jax.devices()[0].platform}


def torch_setup(batch: int, size: int, cin: int, features: tuple, channels_last: bool, compile: bool):
    import torch
    from torch_unet import UNet, bce_dice, n_params
    torch.set_num_threads(os.cpu_count())
    base = proc_status_mb("VmRSS")
    torch.manual_seed(0)
    model = UNet(cin, 1, features)
    image, target = _data(batch, size, cin)
    x = torch.from_numpy(image).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(target).permute(0, 3, 1, 2).contiguous()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x, y = x.to(memory_format=torch.channels_last), y.to(memory_format=torch.channels_last)
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
    ap.add_argument("--quick", action="store_true", help="64 px, features 8..64, 3 repetitions")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--in-channels", type=int, default=4, help="MRI modalities (jaxseg's default: 4)")
    ap.add_argument("--features", default="32,64,128,256,512")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="also time jaxseg in bfloat16")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--compile-timeout", type=float, default=900.0, help="seconds torch.compile may take")
    ap.add_argument("--only", default="", help="comma-separated variant names to run (default all)")
    add_variant_option(ap)
    args = ap.parse_args()
    if args.quick:
        args.size, args.features, args.reps, args.warmup = 64, "8,16,32,64", 3, 1
    features = tuple(int(f) for f in args.features.split(","))
    common = dict(batch=args.batch, size=args.size, cin=args.in_channels, features=features)
    variants = [
        Variant("jax xla-conv", jax_setup, dict(common, bf16=False), env={"JAXSEG_CONV": "xla"}),
        Variant("jax", jax_setup, dict(common, bf16=False), env={"JAXSEG_CONV": "auto"}),
    ]
    variants += env_variants(args.jax_variant, jax_setup, dict(common, bf16=False))
    if args.bf16:
        variants.append(Variant("jax bf16", jax_setup, dict(common, bf16=True), env={"JAXSEG_CONV": "auto"}))
    variants += [
        Variant("torch eager", torch_setup, dict(common, channels_last=False, compile=False)),
        Variant("torch eager CL", torch_setup, dict(common, channels_last=True, compile=False)),
    ]
    if not args.no_compile:
        variants.append(Variant("torch.compile", torch_setup, dict(common, channels_last=False, compile=True),
                                setup_timeout=args.compile_timeout))
    if args.only:
        keep = {s.strip() for s in args.only.split(",")}
        variants = [v for v in variants if v.name in keep]
    print(f"train step: U-Net {features}, {args.in_channels} -> 1 channels, batch {args.batch}, "
          f"{args.size}x{args.size}, BCE+Dice, Adam", flush=True)
    t0 = time.time()
    results = run_side_by_side(variants, args.reps, args.warmup)
    print_table(f"Train step, 2D U-Net {args.size} px, batch {args.batch} ({time.time() - t0:.0f} s wall)",
                results, reference="torch eager", extra=("params",))


if __name__ == "__main__":
    main()
