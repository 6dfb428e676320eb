"""Side-by-side timing of JAX and PyTorch variants, one worker process per variant.

Each variant runs in its own spawned process, so its peak memory is its own and JAX and torch
never share a thread pool. The parent builds the workers one after the other (compiling while
the others are idle), then asks them in turn for one timed repetition each, ``reps`` rounds,
rotating the order every round: a slow phase of a shared machine hits every variant alike, and
the ratios of the medians stay fair even when the absolute times are noisy.

Memory: ``VmHWM`` (peak resident set) of the worker from ``/proc/self/status``, read at the end;
it includes the framework's own footprint (imports, compiled code), so the table also gives
``VmRSS`` right after the variant's imports (``base``) and the difference (``peak - base``).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable


def proc_status_mb(key: str) -> float:
    """``VmHWM`` / ``VmRSS`` of this process in MB (0 where /proc is absent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Variant:
    """One column of a table: ``setup(**kwargs)`` runs in the worker and returns
    ``(run, info)``: ``run()`` does one repetition and blocks until its results exist; ``info``
    is a dict of facts to print (parameter count, ...). ``env`` is set before ``setup`` runs
    (``XLA_FLAGS``, ``JAXSEG_CONV``, thread counts)."""
    name: str
    setup: Callable[..., tuple[Callable[[], Any], dict]]
    kwargs: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    setup_timeout: float = 1800.0


def add_variant_option(ap) -> None:
    """``--jax-variant NAME:K=V[;K=V]`` (repeatable): one more jaxseg column run with these
    environment variables, e.g. ``--jax-variant "jaxlib flags:JAXSEG_XLA_DEFAULTS=0"``."""
    ap.add_argument("--jax-variant", action="append", default=[], metavar="NAME:K=V[;K=V]",
                    help="an extra jaxseg variant run with these environment variables "
                         "(XLA_FLAGS, JAXSEG_CONV, ...); repeatable")


def env_variants(specs: list[str], setup, kwargs: dict) -> list[Variant]:
    """The ``--jax-variant`` columns: ``setup(**kwargs)`` under each spec's environment."""
    out = []
    for spec in specs:
        name, _, env = spec.partition(":")
        out.append(Variant(name.strip(), setup, dict(kwargs),
                           env=dict(kv.split("=", 1) for kv in env.split(";") if kv)))
    return out


def _worker(variant: Variant, warmup: int, conn) -> None:
    try:
        os.environ.update(variant.env)
        # jaxseg's CPU flags, as the jaxseg command sets them (a variant's own XLA_FLAGS or
        # JAXSEG_XLA_DEFAULTS=0 win); only environment, so the torch columns are unaffected.
        from jaxseg import xla_flags
        xla_flags.apply()
        t0 = time.perf_counter()
        run, info = variant.setup(**variant.kwargs)
        base = info.pop("_base_rss_mb", proc_status_mb("VmRSS"))
        t1 = time.perf_counter()
        run()
        first = time.perf_counter() - t1
        for _ in range(max(warmup - 1, 0)):
            run()
        if "jax" in sys.modules:  # the flags XLA read in this worker (with jaxseg's, added above)
            info["xla_flags"] = os.environ.get("XLA_FLAGS", "")
        conn.send(("ready", {"setup_s": t1 - t0, "first_s": first, "base_mb": base, **info}))
        while True:
            cmd = conn.recv()
            if cmd == "stop":
                conn.send(("done", {"peak_mb": proc_status_mb("VmHWM")}))
                return
            t = time.perf_counter()
            run()
            conn.send(("time", time.perf_counter() - t))
    except BaseException as e:  # report, do not hang the parent
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"))


@dataclass
class Result:
    name: str
    times: list[float] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")


def run_side_by_side(variants: list[Variant], reps: int, warmup: int = 2) -> list[Result]:
    """Start every variant's worker, then time ``reps`` interleaved rounds; see module docstring."""
    ctx = mp.get_context("spawn")
    results, live = [], []
    for v in variants:
        res = Result(v.name)
        results.append(res)
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(v, warmup, child), daemon=True)
        proc.start()
        if not parent.poll(v.setup_timeout):
            proc.kill()
            res.error = f"setup did not finish within {v.setup_timeout:.0f} s"
            print(f"  {v.name}: {res.error}", flush=True)
            continue
        kind, payload = parent.recv()
        if kind == "error":
            res.error = payload.strip().splitlines()[0]
            print(f"  {v.name}: failed: {payload}", flush=True)
            proc.join(5)
            continue
        res.info.update(payload)
        print(f"  {v.name}: ready (setup {payload['setup_s']:.1f} s, first call {payload['first_s']:.2f} s)",
              flush=True)
        live.append((res, parent, proc))
    for r in range(reps):
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for res, conn, _ in order:
            conn.send("run")
            kind, payload = conn.recv()
            if kind == "error":
                res.error = payload.strip().splitlines()[0]
                print(f"  {res.name}: failed: {payload}", flush=True)
                continue
            res.times.append(payload)
        print(f"  round {r + 1}/{reps}: " + "  ".join(f"{res.name} {res.times[-1]:.3f}s"
                                                       for res, _, _ in live if res.times), flush=True)
    for res, conn, proc in live:
        conn.send("stop")
        kind, payload = conn.recv()
        if kind == "done":
            res.info.update(payload)
        proc.join(30)
    return results


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (f"machine: {cpu}, {os.cpu_count()} logical cores, load average {load[0]:.2f}; "
            f"python {platform.python_version()}")


def print_table(title: str, results: list[Result], reference: str, unit: str = "s",
                extra: tuple[str, ...] = ()) -> None:
    """Median, min and max time, ``reference / this`` speed ratio, memory, and ``extra`` info."""
    ref = next((r.median for r in results if r.name == reference and r.times), float("nan"))
    print(f"\n{title}")
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(machine_line())
    header = (f"{'variant':<22}{'median ' + unit:>11}{'min':>9}{'max':>9}{'speed vs ' + reference:>22}"
              f"{'peak MB':>10}{'base MB':>9}{'peak-base':>11}{'first call s':>14}")
    print(header + "".join(f"{e:>14}" for e in extra))
    print("-" * (len(header) + 14 * len(extra)))
    for r in results:
        if r.error or not r.times:
            print(f"{r.name:<22}  not measured: {r.error}")
            continue
        peak, base = r.info.get("peak_mb", 0.0), r.info.get("base_mb", 0.0)
        speed = f"{ref / r.median:>21.2f}x" if ref == ref else f"{'-':>22}"  # "-": the reference was not run
        print(f"{r.name:<22}{r.median:>11.3f}{min(r.times):>9.3f}{max(r.times):>9.3f}"
              f"{speed}{peak:>10.0f}{base:>9.0f}{peak - base:>11.0f}"
              f"{r.info.get('first_s', float('nan')):>14.2f}"
              + "".join(f"{str(r.info.get(e, '')):>14}" for e in extra))
    for r in results:
        if "xla_flags" in r.info:
            print(f"XLA_FLAGS of {r.name}: {r.info['xla_flags']!r}")
    print(f"(speed vs {reference} = its median / this median; > 1 is faster. {len(results[0].times) if results else 0} "
          f"interleaved repetitions after warm-up. Memory: worker VmHWM (peak), VmRSS after imports (base).)",
          flush=True)
    print_against_fastest(results)


def fastest(results: list[Result], prefix: str = "torch") -> Result | None:
    """The measured variant named ``prefix...`` with the smallest median (None if none was measured)."""
    measured = [r for r in results if r.name.startswith(prefix) and r.times and not r.error]
    return min(measured, key=lambda r: r.median) if measured else None


def print_against_fastest(results: list[Result], prefix: str = "torch") -> None:
    """One line per other variant: its speed against the fastest ``prefix`` variant (the number
    the speed goals are stated in, docs/speed.md) and its memory above base against that
    variant's and against ``torch eager``'s. Prints nothing without a measured ``prefix`` variant."""
    best = fastest(results, prefix)
    if best is None:
        return
    growth = {r.name: r.info.get("peak_mb", 0.0) - r.info.get("base_mb", 0.0) for r in results if r.times}
    eager = growth.get(f"{prefix} eager")
    print(f"against the fastest {prefix} variant, {best.name} ({best.median:.3f} s, "
          f"peak-base {growth[best.name]:.0f} MB):")
    for r in results:
        if r.name.startswith(prefix):
            continue
        if not r.times:
            print(f"  {r.name:<22} not measured")
            continue
        memory = f"peak-base {growth[r.name]:.0f} MB"
        if eager:
            memory += f" ({growth[r.name] / eager:.2f}x {prefix} eager's)"
        print(f"  {r.name:<22} {best.median / r.median:5.2f}x faster  {memory}", flush=True)
