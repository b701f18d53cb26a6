"""`crossmodal probe linear|finetune|dense [CONFIG]` and `crossmodal probe compare`: score what a checkpoint learned."""
from __future__ import annotations

import functools

import click

from cli.options import FLAG_KEYS as RUN_FLAG_KEYS
from cli.options import apply_options, configure_logging, key_flag_options, split_flags

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# flag (python name) -> the config key it overrides (crossmodal.tasks.probe.ProbeConfig)
FLAG_KEYS = {
    "checkpoint": "checkpoint",
    "data": "data.path",
    "modality": "modality",
    "stage": "stage",
    "random_init": "random_init",
    "input_size": "input_size",
    "stats": "stats",
    "report": "report",
    "cache_dir": "cache_dir",
    "train_split": "data.train_split",
    "test_split": "data.test_split",
    **RUN_FLAG_KEYS,  # name, out_dir, device, epochs, batch_size, lr, workers, seed
}


def _int_or_text(value: str | None):
    """'3' or '-1' -> int, anything else unchanged (stage and input_size take a number or a word)."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return value


def probe_options(fn):
    """CONFIG (optional), --set, and one flag per ProbeConfig key; the command gets (config, overrides, **rest)."""
    options = [
        click.argument("config", required=False, type=click.Path(dir_okay=False)),
        click.option("--checkpoint", metavar="PATH", help="Checkpoint to probe (key: checkpoint)."),
        click.option("--data", metavar="FILE.h5", help="Prepared file to probe on (key: data.path)."),
        click.option("--modality", help="Modality fed to the network; default the checkpoint's (key: modality)."),
        click.option("--stage", help="linear: 'embedding' (default) or a stage index, pooled (key: stage)."),
        click.option("--random-init/--no-random-init", default=None,
                     help="Also probe a randomly initialised network of the same architecture (key: random_init)."),
        click.option("--input-size", help="Resize the shorter side to N, or 'checkpoint' for its training size "
                                          "(key: input_size). Default: the data's own size."),
        click.option("--stats", type=click.Choice(["data", "checkpoint"]),
                     help="Channel stats normalising the inputs: the probe data's (default) or the checkpoint's "
                          "(key: stats)."),
        click.option("--report", metavar="DIR",
                     help="Also write DIR/report.md with the table and plots (key: report)."),
        click.option("--cache-dir", metavar="DIR",
                     help="Feature cache (key: cache_dir). Default <out_dir>/feature_cache."),
        click.option("--train-split", help="Split the probe trains on (key: data.train_split)."),
        click.option("--test-split", help="Split the probe is scored on (key: data.test_split)."),
        click.option("--set", "set_", multiple=True, metavar="KEY=VALUE",
                     help="Override any config key, e.g. --set dense.folds=4 (VALUE parsed as YAML). Repeatable."),
        *key_flag_options({
            "name": "Probe name (key: name); writes <out_dir>/<name>/. Default: CONFIG's name, else "
                    "<checkpoint folder>_<method>.",
            "out_dir": "Folder holding the probe folders (key: out_dir). Default: runs/probe.",
            "device": "auto, cpu, cuda, cuda:N or mps (key: engine.device).",
            "epochs": "Epochs of the probe head / finetuning (key: optim.epochs).",
            "batch_size": "Batch size (key: optim.batch_size).",
            "lr": "Learning rate (key: optim.lr).",
            "workers": "DataLoader worker processes (key: data.workers).",
            "seed": "Seed of heads, sample order and random init (key: seed).",
        }),
    ]

    @functools.wraps(fn)
    def wrapper(config, set_, **flags):
        flags["stage"] = _int_or_text(flags.get("stage"))
        flags["input_size"] = _int_or_text(flags.get("input_size"))
        overrides, rest = split_flags(set_, flags, FLAG_KEYS)
        configure_logging()
        return fn(config=config, overrides=overrides, **rest)

    return apply_options(options, wrapper)


FORCE = click.option("--force", is_flag=True,
                     help="Replace the results.json (and --report's report.md) of an earlier probe of this name.")


def _run(method: str, config, overrides, resume: bool = False, force: bool = False) -> None:
    from crossmodal.probe.report import format_table
    from crossmodal.tasks.probe import load_probe_config, probe_outputs, refuse_overwrite, run_probe

    cfg = load_probe_config(config, overrides, method=method)
    refuse_overwrite(probe_outputs(cfg), force)  # before any work: an earlier probe's results stay as they are
    results = run_probe(cfg, resume=resume)
    click.echo(format_table(results["rows"]))
    for note in results["notes"]:
        click.echo(f"  - {note}")
    click.echo(f"results: {results['run_dir']}/results.json" +
               (f", report: {results['report']}" if results.get("report") else ""))


@click.group(context_settings=CONTEXT)
def probe():
    """Score a checkpoint: linear probe, finetuning, dense (segmentation) probe, transfer; compare with a teacher.

    Each method takes a CONFIG (YAML, see configs/probe/) and/or flags; every flag sets one
    config key. Results go to <out_dir>/<name>/results.json and are printed as a table.
    Transfer = probing on another prepared file than the checkpoint was trained on
    (--input-size checkpoint resizes to the training size).
    """


@probe.command(context_settings=CONTEXT)
@probe_options
@FORCE
def linear(config, overrides, force):
    """Linear classifier on frozen, cached features (top-1 / top-5 on the test split).

    \b
    Examples:
      crossmodal probe linear --checkpoint runs/ab_student/best.pt --data data/imagenette.h5 --random-init
      crossmodal probe linear configs/probe/imagenette_ab_linear.yaml --stage 3 --report reports/ab
    """
    _run("linear", config, overrides, force=force)


@probe.command(context_settings=CONTEXT)
@probe_options
@click.option("--resume", is_flag=True, help="Continue <out_dir>/<name>/last.pt.")
@FORCE
def finetune(config, overrides, resume, force):
    """Train the whole network from the checkpoint (new head if the classes differ) with the engine.

    \b
    Example:
      crossmodal probe finetune --checkpoint runs/s/best.pt --data data/imagenette.h5 --epochs 30 --lr 0.01
    """
    _run("finetune", config, overrides, resume=resume, force=force)


@probe.command(context_settings=CONTEXT)
@probe_options
@FORCE
def dense(config, overrides, force):
    """Segmentation head on frozen stage maps (pixel accuracy and mIoU; label 0 ignored).

    With --train-split equal to --test-split the labelled frames are k-folded by index (dense.folds).

    \b
    Example:
      crossmodal probe dense configs/probe/nyu_depth_dense.yaml --checkpoint runs/rgb_to_depth_crd/best.pt
    """
    _run("dense", config, overrides, force=force)


@probe.command(context_settings=CONTEXT)
@click.option("--teacher", required=True, metavar="PATH", help="Teacher checkpoint.")
@click.option("--student", required=True, metavar="PATH", help="Student checkpoint (same classes).")
@click.option("--data", required=True, metavar="FILE.h5", help="Prepared file holding both networks' modalities.")
@click.option("--split", default="test", show_default=True, help="Split the networks are compared on.")
@click.option("--out-dir", metavar="DIR", help="Output folder. Default: runs/compare/<student folder>.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--workers", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace an earlier comparison in --out-dir.")
def compare(teacher, student, data, split, out_dir, device, batch_size, workers, force):
    """Teacher vs student: logit-correlation difference (CRD Fig. 2, heatmap) and linear CKA of embeddings.

    Writes compare.json, correlation_difference.png and report.md to --out-dir.
    """
    from pathlib import Path

    from crossmodal.tasks.probe import compare_outputs, refuse_overwrite, run_compare

    configure_logging()
    out_dir = out_dir or str(Path("runs") / "compare" / (Path(student).parent.name or Path(student).stem))
    refuse_overwrite(compare_outputs(out_dir), force)
    result = run_compare(teacher, student, data, out_dir, split=split, device=device, batch_size=batch_size,
                         workers=workers)
    click.echo(f"mean |corr_teacher - corr_student| {result['mean_abs_correlation_difference']:.4f}  "
               f"CKA(embedding) {result['cka_embedding']:.4f}  CKA(logits) {result['cka_logits']:.4f}  "
               f"({result['samples']} samples of {split!r})")
    click.echo(f"report: {result['report']}")
