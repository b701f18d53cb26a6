"""Click options shared by `teach`, `distill` and `probe`: one flag name per config key, everywhere.

    @click.command()
    @run_options
    def teach(config, overrides, resume):
        cfg = load_config(config, TeachConfig, overrides)

Each convenience flag is an override of exactly one key (FLAG_KEYS); `--set KEY=VALUE`
overrides any key. Flags are applied after `--set`, so `--lr 0.1` wins over `--set optim.lr=0.2`.
"""
from __future__ import annotations

import functools
import logging

import click

# flag (python name) -> config key it overrides
FLAG_KEYS = {
    "name": "name",
    "out_dir": "out_dir",
    "device": "engine.device",
    "epochs": "optim.epochs",
    "batch_size": "optim.batch_size",
    "lr": "optim.lr",
    "workers": "data.workers",
    "seed": "seed",
}


# Type of each FLAG_KEYS flag (None: text).
FLAG_TYPES = {"name": None, "out_dir": None, "device": None, "epochs": int, "batch_size": int, "lr": float,
              "workers": int, "seed": int}


def key_flag_options(helps: dict[str, str]) -> list:
    """One click option per FLAG_KEYS flag (--name ... --seed, in that order), with the command's help texts."""
    return [click.option("--" + flag.replace("_", "-"), type=FLAG_TYPES[flag], help=helps[flag]) for flag in FLAG_KEYS]


def split_flags(set_, flags: dict, flag_keys: dict) -> tuple[list, dict]:
    """(the --set overrides followed by (key, value) for every given flag of `flag_keys`, the other arguments)."""
    overrides = list(set_) + [(flag_keys[flag], value) for flag, value in flags.items()
                              if flag in flag_keys and value is not None]
    return overrides, {k: v for k, v in flags.items() if k not in flag_keys}


def apply_options(options: list, fn):
    """`fn` decorated by `options`, the first listed shown first in --help."""
    for option in reversed(options):
        fn = option(fn)
    return fn


def run_options(fn):
    """Add CONFIG, --set, --resume and the per-key flags; the command receives (config, overrides, resume)."""
    options = [
        click.argument("config", type=click.Path(dir_okay=False)),
        click.option("--set", "set_", multiple=True, metavar="KEY=VALUE",
                     help="Override any config key, e.g. --set optim.lr=0.1 --set data.augment.hflip=false "
                          "(VALUE is parsed as YAML). Repeatable."),
        click.option("--resume", is_flag=True,
                     help="Continue the run from <out_dir>/<name>/last.pt (same weights as an uninterrupted run). "
                          "Refused when the config, data file or teachers changed; only --epochs may grow."),
        *key_flag_options({
            "name": "Run name (key: name); the run writes to <out_dir>/<name>/. Default: the config file's name.",
            "out_dir": "Folder holding the run folders (key: out_dir). Default: runs.",
            "device": "auto, cpu, cuda, cuda:N or mps (key: engine.device).",
            "epochs": "Number of epochs (key: optim.epochs).",
            "batch_size": "Global batch size over all processes (key: optim.batch_size).",
            "lr": "Base learning rate for the global batch (key: optim.lr).",
            "workers": "DataLoader worker processes (key: data.workers).",
            "seed": "Seed of the initialisation, sample order and augmentation (key: seed).",
        }),
    ]

    @functools.wraps(fn)
    def wrapper(config, set_, resume, **flags):
        overrides, rest = split_flags(set_, flags, FLAG_KEYS)
        configure_logging()
        return fn(config=config, overrides=overrides, resume=resume, **rest)

    return apply_options(options, wrapper)


def configure_logging() -> None:
    """Send the library's 'crossmodal' log lines (one per epoch) to stderr."""
    from crossmodal.engine.logging import get_logger

    get_logger().setLevel(logging.INFO)


def run_config(config, overrides, resume, schema, run) -> None:
    """Load CONFIG into `schema`, `run` it (the task joins and leaves a torchrun job itself), print one summary line.

    Under torchrun only rank 0 prints, so a job prints one line however many processes it has."""
    from crossmodal.config import load_config
    from crossmodal.engine.distributed import launch_rank

    cfg = load_config(config, schema, overrides)
    summary = run(cfg, resume=resume)
    if launch_rank() == 0:
        click.echo(summary_line(cfg.name, summary))


def summary_line(name: str, summary: dict) -> str:
    """The one line a finished run prints: best test top-1 (when there is a test split) and where it wrote."""
    if summary["best_test_top1"] is None:
        return f"{name}: trained {summary['epochs']} epochs (no labeled test split), checkpoints in {summary['run_dir']}"
    return (f"{name}: best test top-1 {summary['best_test_top1']:.2f}% (epoch {summary['best_epoch']}), "
            f"checkpoints in {summary['run_dir']}")
