"""The `jaxseg` command line: each command parses its arguments and makes one library call.

Exit status, for every command: 0 done; 2 a user error (bad arguments, a bad file or setting: a
:class:`jaxseg.errors.JaxsegError`, printed as one line, never a traceback; also `data inspect`
finding problems in a dataset); 130 interrupted (Ctrl-C). Heavy imports (jax) happen inside the
commands so that ``jaxseg --help`` and ``jaxseg --version`` are instant, and so that :func:`main`
sets the process up (jaxseg's CPU XLA flags, :mod:`jaxseg.xla_flags`; the compilation cache)
before jax starts.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

from jaxseg.cli_help import App

app = App(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
          help="Explainable brain-tumor MRI segmentation in pure JAX.")
data_app = App(no_args_is_help=True, help="Look at datasets.")
app.add_typer(data_app, name="data")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _print_version(value: bool) -> None:
    if value:
        from importlib import metadata
        import platform
        from jaxseg import __version__

        def version(dist: str) -> str:
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                return "not installed"
        typer.echo(f"jaxseg {__version__} (jax {version('jax')}, jaxlib {version('jaxlib')}, "
                   f"flax {version('flax')}, Python {platform.python_version()})")
        raise typer.Exit()


def _print_devices(value: bool) -> None:
    if value:
        import jax
        from jaxseg import xla_flags
        from jaxseg.models import conv
        backend = jax.default_backend()
        typer.echo(f"backend: {backend}; {jax.process_count()} process(es), {jax.device_count()} device(s): "
                   + ", ".join(str(d) for d in jax.devices()))
        if backend == "cpu":
            typer.echo("CPU convolutions: " + ("XLA's own (jaxseg's default flag)" if xla_flags.xla_cpu_convolutions()
                                               else "YNNPACK's (jaxlib's default)")
                       + f"; convolution path: {conv.default_mode()} (auto = the CPU-fast forms on CPU)")
        else:
            typer.echo(f"convolution path: {conv.default_mode()} (auto = XLA's convolutions on {backend})")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the versions of jaxseg, jax, jaxlib, flax and Python, and exit."),
          devices: bool = typer.Option(False, "--devices", callback=_print_devices, is_eager=True,
                                       help="Print the backend and devices jax will use (cpu, gpu, tpu), and exit."),
          ) -> None:
    """Explainable brain-tumor MRI segmentation in pure JAX."""


CHECKPOINT_HELP = ("a run folder of `jaxseg train`, a model folder, a bundled model's name, or `demo` "
                   "(the model of `jaxseg demo`); default: the bundled model for the input's modalities "
                   "(`jaxseg models` lists them)")


def _user_errors(fn: Callable) -> Callable:
    """Turn user errors into one line on stderr and exit status 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from jaxseg.errors import JaxsegError
        try:
            return fn(*args, **kwargs)
        except JaxsegError as e:
            typer.secho(f"error: {e}", err=True, fg="red")
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            typer.secho("interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except OSError as e:  # the system's word on a path: permission denied, disk full, ...
            where = f"{e.filename}: " if e.filename else ""
            typer.secho(f"error: {where}{e.strerror or e}", err=True, fg="red")
            raise typer.Exit(EXIT_USER_ERROR) from None
    return wrapper


def _say(message: str) -> None:
    typer.echo(message, err=True)


@app.command()
@_user_errors
def train(
    config: str = typer.Option(..., "--config", "-c", metavar="NAME|FILE",
                               help="a shipped config by name (demo, brats2021_3d, ...) or a TOML file"),
    workdir: Path = typer.Option(Path("runs/latest"), "--workdir", "-w",
                                 help="run folder: checkpoints, metrics, resolved config; resumes if present"),
    set_: List[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="override a setting, e.g. --set train.epochs=3 (repeatable)"),
    distributed: bool = typer.Option(False, "--distributed",
                                     help="multi-host: call jax.distributed.initialize (also JAXSEG_DISTRIBUTED=1)"),
    coordinator: Optional[str] = typer.Option(None, help="multi-host coordinator host:port"),
    num_processes: Optional[int] = typer.Option(None, help="multi-host process count"),
    process_id: Optional[int] = typer.Option(None, help="this process's index"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    smoke: bool = typer.Option(False, "--smoke", help="the config at its smoke size (toy model and data)"),
) -> None:
    """Train a model; resumes from the newest checkpoint in --workdir."""
    from jaxseg import config as config_lib
    cfg = config_lib.load(config, set_)
    if smoke:
        cfg = config_lib.smoke(cfg)
    from jaxseg.train import loop
    if distributed or os.environ.get("JAXSEG_DISTRIBUTED") == "1":
        loop.initialize_distributed(coordinator, num_processes, process_id)
    result = loop.train(cfg, workdir, quiet=quiet)
    _say(f"trained {result.steps} steps; best validation Dice {result.best_dice:.4f}; run in {result.workdir}")
    if cfg.train.calibrate:  # here, not in train/: the Predictor it needs sits above train/
        from jaxseg.explain.calibrate import calibrate_after_training
        _say(calibrate_after_training(result.workdir, progress=lambda case: _say(f"calibrating on {case}")))


@app.command()
@_user_errors
def predict(
    path: Path = typer.Argument(..., help="a NIfTI volume, a case folder, a folder of cases, or 2D slices "
                                          "(.mat, .png, .tif files or folders)"),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", metavar="NAME|demo|PATH", help=CHECKPOINT_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="seg.nii.gz for one case, or a folder"),
    probabilities: bool = typer.Option(False, "--probabilities",
                                       help="also write <name>_prob.nii.gz (float32, one channel per region)"),
    calibration: bool = typer.Option(True, "--calibration/--no-calibration",
                                     help="apply the model's calibration.json (per-region temperatures), if any"),
    batch_size: int = typer.Option(16, help="slices per forward pass"),
    min_component_ml: float = typer.Option(0.0, min=0.0, help="remove tumor components smaller than this (mL)"),
) -> None:
    """Segment volumes; write labels in each input's own geometry and label convention."""
    from jaxseg.infer.predict import predict as run
    for p in run(path, checkpoint, out, probabilities=probabilities, calibrated=calibration, batch_size=batch_size,
                 min_component_ml=min_component_ml,
                 progress=lambda case: _say(f"predicting {case}"), say=_say):
        volumes = ", ".join(f"{k} {v:.1f} mL" for k, v in p.volumes_ml.items())
        typer.echo(f"{p.case_id}: {p.segmentation}" + (f"  ({volumes})" if volumes else ""))


@app.command()
@_user_errors
def evaluate(
    pred: Path = typer.Option(..., "--pred", help="folder of predicted label maps (<case>.nii.gz)"),
    ref: Path = typer.Option(..., "--ref", help="folder (searched recursively) with <case>_seg.nii.gz"),
    out: Path = typer.Option(Path("evaluation"), "--out", "-o", help="folder for per_case.csv, summary.csv"),
    figures: bool = typer.Option(True, "--figures/--no-figures",
                                 help="also write gallery.png (best/worst slices) and panels/<case>.png"),
) -> None:
    """Compare predictions with reference segmentations: Dice, IoU, HD95, lesion-wise scores."""
    from rich.console import Console
    from jaxseg.eval.run import evaluate_folders
    summary = evaluate_folders(pred, ref, out, figures=figures)
    Console().print(summary.render())
    _say(f"per-case results in {summary.per_case_csv}, summary in {summary.summary_csv}"
         + (f", figures in {out / 'gallery.png'} and {out / 'panels'}" if figures and (out / "gallery.png").exists() else "")
         + (f"; calibration of the probability maps in {out / 'calibration.json'}"
            if any(r["metric"].startswith("ece_") for r in summary.summary) else ""))


@app.command()
@_user_errors
def explain(
    path: Path = typer.Argument(..., help="a NIfTI volume or a case folder; or one 2D slice (.mat, .png, .tif) "
                                          "with the --checkpoint of a run trained on 2D slices"),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", metavar="NAME|demo|PATH", help=CHECKPOINT_HELP),
    out: Path = typer.Option(Path("report.html"), "--out", "-o",
                             help="report.html, or a folder for every map, the JSON summary and the report"),
    layer: Optional[str] = typer.Option(None, help="Grad-CAM layer: enc0..encN, decN..dec0 (default dec0)"),
    target: str = typer.Option("mean", help="Grad-CAM score: mean, predicted, or REGION / predicted:REGION"),
    mc_samples: int = typer.Option(20, help="MC-dropout passes (1: none)"),
    attribution_steps: int = typer.Option(8, help="integrated-gradient steps of the modality attribution (0: skip)"),
    normalise: str = typer.Option("volume", metavar="volume|slice",
                                  help="Grad-CAM divided by its maximum over the volume (default) or each slice"),
    compare_layers: Optional[str] = typer.Option(
        None, metavar="LAYER,LAYER|none", help="Grad-CAM layers the report also offers (default: bottleneck, dec2, dec0)"),
    faithfulness_slices: int = typer.Option(
        0, help="deletion/insertion on every tumor slice (0) or on the N with the largest tumor"),
    faithfulness_steps: int = typer.Option(11, help="fractions of each deletion/insertion curve, ends included"),
    faithfulness_spacing: str = typer.Option(
        "geometric", metavar="geometric|linear",
        help="curve fractions: 0 then 0.1%..100% at a constant ratio (default), or evenly from 0 to 1"),
    seed: int = typer.Option(0, help="the key of MC dropout and the random baseline"),
    calibration: bool = typer.Option(True, "--calibration/--no-calibration",
                                     help="apply the model's calibration.json (per-region temperatures), if any"),
) -> None:
    """Segmentation, Grad-CAM, MC-dropout uncertainty, faithfulness curves and captions in one report."""
    from jaxseg.explain.run import ExplainSettings, explain as run
    result = run(path, checkpoint, out, ExplainSettings(layer=layer, target=target, mc_samples=mc_samples,
                                                        attribution_steps=attribution_steps, normalise=normalise,
                                                        compare_layers=_layer_list(compare_layers),
                                                        faithfulness_slices=faithfulness_slices,
                                                        faithfulness_steps=faithfulness_steps,
                                                        faithfulness_spacing=faithfulness_spacing, seed=seed,
                                                        calibrated=calibration),
                 say=_say)
    typer.echo(result.summary["caption"])
    typer.echo(f"report: {result.report}")


def _layer_list(text: Optional[str]) -> Optional[tuple[str, ...]]:
    """``--compare-layers``: None (the default set), ``none`` (no others) or comma-separated names."""
    if text is None:
        return None
    return () if text.strip().lower() == "none" else tuple(n.strip() for n in text.split(",") if n.strip())


@app.command()
@_user_errors
def calibrate(
    checkpoint: str = typer.Option(..., "--checkpoint", metavar="NAME|demo|PATH", help=CHECKPOINT_HELP),
    data: Optional[Path] = typer.Option(None, "--data", help="dataset folder holding the run's validation cases "
                                                             "(default: the config's data.root)"),
    cases: List[Path] = typer.Option([], "--cases", help="labelled case folders to fit on instead (repeatable)"),
    mc_samples: int = typer.Option(20, "--mc-samples", help="MC-dropout passes; 0 = the plain prediction"),
    seed: int = typer.Option(0, help="the key of MC dropout"),
) -> None:
    """Fit one temperature per region on labelled cases; write calibration.json into the run or model folder."""
    from jaxseg.explain.calibrate import calibrate as run
    from jaxseg.model_store import find_run, resolve_checkpoint
    folder = find_run(resolve_checkpoint(checkpoint))
    result = run(folder, data=data, cases=cases, mc_samples=mc_samples, seed=seed,
                 progress=lambda case: _say(f"passes over {case}"))
    for region, t in result["temperature"].items():
        before, after = result["ece_before"][region], result["ece_after"][region]
        typer.echo(f"{region}: T = {t:.3f}; relevant-voxel ECE {_ece(before['relevant'])} -> "
                   f"{_ece(after['relevant'])}, all-brain {_ece(before['all_brain'])} -> {_ece(after['all_brain'])}")
    typer.echo(f"calibration.json written into {folder} (fitted on {len(result['fitted_on'])} cases, in-sample ECE)")


def _ece(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@app.command()
@_user_errors
def models(
    runs: List[Path] = typer.Argument(None, help="run folders of `jaxseg train` or model folders to list too"),
) -> None:
    """List the models jaxseg can use: bundled ones, the demo model and the given run folders."""
    from rich.console import Console
    from jaxseg.model_export import render_models
    from jaxseg.model_store import BUNDLED_DIR, list_models
    entries = list_models(runs or ())
    console = Console(width=200)
    if not entries:
        typer.echo(f"no models: none bundled ({BUNDLED_DIR}), no demo model yet (`jaxseg demo` makes one); "
                   "give run folders to list them")
        return
    render_models(entries, console)


@app.command("export-model")
@_user_errors
def export_model(
    run: Path = typer.Argument(..., help="a run folder of `jaxseg train` (its best model) or a model folder"),
    out: Path = typer.Option(..., "--out", "-o", help="the model folder to write (config.toml, model.safetensors, card.json)"),
    name: str = typer.Option(..., "--name", help="the model's name (the name --checkpoint uses once bundled)"),
    dtype: str = typer.Option("float16", "--dtype", metavar="float16|float32",
                              help="storage: float16 (half the size, checked) or float32"),
    card: Optional[Path] = typer.Option(None, "--card", help="a JSON file of model card fields to add or replace"),
    check_input: Optional[Path] = typer.Option(None, "--check-input", metavar="CASE",
                                               help="the case the float16 check runs on (default: a phantom)"),
) -> None:
    """Package a run's model as a model folder that --checkpoint, `jaxseg models` and serve use."""
    from jaxseg.model_export import read_card_file
    from jaxseg.model_export import export_model as run_export
    fields = read_card_file(card) if card is not None else {}
    folder = run_export(run, out, name=name, dtype=dtype, card=fields, check_input=check_input, say=_say)
    typer.echo(f"exported {run} as model {name} into {folder}; use --checkpoint {folder}")


@app.command("import-weights")
@_user_errors
def import_weights(
    weights: Path = typer.Argument(..., help="a PyTorch state dict: model.pth or model.safetensors"),
    out: Path = typer.Option(..., "--out", "-o", help="the run folder to write (config.toml + best/)"),
    arch: str = typer.Option("resunet34", "--arch", help="the architecture of the weights"),
    config: Optional[str] = typer.Option(None, "--config", "-c",
                                         help="data and model settings; default: read off the weights"),
    set_: List[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="override a setting, e.g. --set data.target=regions (repeatable)"),
) -> None:
    """Convert PyTorch weights (smp Unet, or a torchvision ResNet encoder) into a run folder."""
    from jaxseg.train.pretrained import import_weights as run
    result = run(weights, out, arch=arch, config=config, overrides=set_)
    _say(result.config_note)
    part = "the whole model" if result.layout == "smp" else "the encoder (decoder and head initialised fresh)"
    typer.echo(f"imported {part} from {weights} ({result.layout} layout) into {result.run}; use "
               f"--checkpoint {out} or --set model.pretrained={out}")


@app.command()
@_user_errors
def phantom(
    out: Path = typer.Option(..., "--out", "-o", help="folder to write cases into"),
    cases: int = typer.Option(8, "--cases", "-n", min=1, help="how many cases"),
    seed: int = typer.Option(0, "--seed", help="same seed, same phantoms"),
    shape: tuple[int, int, int] = typer.Option((96, 96, 64), "--shape", metavar="X Y Z", help="voxels X Y Z"),
) -> None:
    """Write synthetic BraTS-2021-named cases with ground truth."""
    from jaxseg.data.phantom import write_phantoms
    written = write_phantoms(out, cases, seed, tuple(shape))
    typer.echo(f"wrote {len(written)} cases to {out}")


@app.command()
@_user_errors
def serve(
    checkpoint: List[Path] = typer.Option([], "--checkpoint",
                                          help="a run folder or a folder of runs (repeatable); default: the bundled and demo models"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (any other than 127.0.0.1 exposes the app to the network)"),
    port: int = typer.Option(7860, min=0, max=65535, help="port (0: any free port)"),
    data: Optional[Path] = typer.Option(None, "--data", help="a dataset folder whose cases the page lists"),
    workdir: Optional[Path] = typer.Option(None, "--workdir",
                                           help="uploads and results, kept over restarts (default: a temporary folder removed at exit)"),
    max_upload_mb: float = typer.Option(512.0, min=1.0, help="largest accepted upload, in MB"),
    max_sessions: int = typer.Option(100, min=1, help="live sessions at once (a session starts with a first upload or job)"),
    session_ttl: float = typer.Option(240.0, min=0.01, help="minutes without a request before a session and its files are removed"),
    max_queue: int = typer.Option(8, min=1, help="jobs waiting for the model, all sessions together (more: 429)"),
    max_jobs_per_session: int = typer.Option(1, min=1, help="queued or running jobs of one session (more: 429)"),
    max_connections: int = typer.Option(500, min=1, help="open connections and requests at once (more: 503)"),
    keep_alive: float = typer.Option(5.0, min=0.1, help="seconds an idle connection stays open"),
    body_timeout: float = typer.Option(30.0, min=0.1, help="seconds a request body may stall before it is dropped"),
    allowed_host: List[str] = typer.Option([], "--allowed-host",
                                           help="another Host name to answer, e.g. a reverse proxy's public name (repeatable)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log every request"),
) -> None:
    """A local web app: upload a case or pick one of --data, segment and explain it, browse the report."""
    from jaxseg.serve.app import ServeSettings
    from jaxseg.serve.server import serve as run
    run(ServeSettings(host=host, port=port, checkpoints=tuple(checkpoint), data=data, workdir=workdir,
                      max_upload_mb=max_upload_mb, max_sessions=max_sessions, session_ttl=session_ttl * 60,
                      max_queue=max_queue, max_jobs_per_session=max_jobs_per_session,
                      max_connections=max_connections, keep_alive=keep_alive, body_timeout=body_timeout,
                      allowed_hosts=tuple(h.lower() for h in allowed_host), verbose=verbose), say=_say)


@data_app.command("inspect")
@_user_errors
def data_inspect(
    root: Path = typer.Argument(..., help="a dataset folder"),
    format: str = typer.Option("auto", "--format", help="auto | brats | figshare_mat | image_folder"),
    mask_suffix: str = typer.Option("_mask", help="image_folder: the mask of x.png is x<suffix>.png"),
) -> None:
    """Table of the cases (BraTS) or patients (2D slices) in a folder: geometry, labels, problems."""
    from rich.console import Console
    from jaxseg.data.formats import inspect_folder
    table, problems = inspect_folder(root, format, mask_suffix)
    Console(width=200).print(table)
    if problems:  # the table names each problem; a dataset with problems is a user error
        typer.secho(f"error: {root}: the dataset has problems (the table names them)", err=True, fg="red")
        raise typer.Exit(EXIT_USER_ERROR)


@app.command()
@_user_errors
def demo(
    out: Path = typer.Option(Path("demo_output"), "--out", "-o", help="where everything goes"),
    smoke: bool = typer.Option(False, "--smoke", help="a tiny run that only checks the plumbing"),
) -> None:
    """All of it on built-in synthetic data: phantoms, training, prediction, evaluation."""
    from jaxseg.demo import run_demo
    run_demo(out, smoke=smoke, say=_say)


def _compilation_cache() -> None:
    """Keep XLA's compiled programs between runs (a CPU compile of a U-Net step takes seconds), in
    the per-user folder (:func:`jaxseg.home.compilation_cache_dir`, never the current folder).
    JAX_COMPILATION_CACHE_DIR chooses another folder; JAXSEG_NO_COMPILATION_CACHE=1 turns it off."""
    if os.environ.get("JAXSEG_NO_COMPILATION_CACHE") == "1":
        return
    from jaxseg.home import compilation_cache_dir
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(compilation_cache_dir()))  # read when jax is imported
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def main() -> None:
    # Before any command imports jax: XLA reads XLA_FLAGS once, when jax starts its backend.
    from jaxseg import xla_flags
    xla_flags.apply()
    _compilation_cache()
    app()


if __name__ == "__main__":
    sys.exit(main())
