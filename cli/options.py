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


def run_options(fn):
    """Add CONFIG, --set, --resume and the per-key flags; the command receives (config, overrides, resume)."""
    options = [
        click.argument("config", type=click.Path(dir_okay=False)),
        click.option("--set", "set_", multiple=True, metavar="KEY=VALUE",
                     help="Override any config key, e.g. --set optim.lr=0.1 --set data.augment.hflip=false "
                          "(VALUE is parsed as YAML). Repeatable."),
        click.option("--resume", is_flag=True,
                     help="Continue the run from <out_dir>/<name>/last.pt (same weights as an uninterrupted run)."),
        click.option("--name", help="Run name (key: name); the run writes to <out_dir>/<name>/. "
                                    "Default: the config file's name."),
        click.option("--out-dir", help="Folder holding the run folders (key: out_dir). Default: runs."),
        click.option("--device", help="auto, cpu, cuda, cuda:N or mps (key: engine.device)."),
        click.option("--epochs", type=int, help="Number of epochs (key: optim.epochs)."),
        click.option("--batch-size", type=int, help="Global batch size over all processes (key: optim.batch_size)."),
        click.option("--lr", type=float, help="Base learning rate for the global batch (key: optim.lr)."),
        click.option("--workers", type=int, help="DataLoader worker processes (key: data.workers)."),
        click.option("--seed", type=int, help="Seed of the initialisation, sample order and augmentation (key: seed)."),
    ]

    @functools.wraps(fn)
    def wrapper(config, set_, resume, **flags):
        overrides = list(set_) + [(FLAG_KEYS[flag], value) for flag, value in flags.items()
                                  if flag in FLAG_KEYS and value is not None]
        rest = {k: v for k, v in flags.items() if k not in FLAG_KEYS}
        configure_logging()
        return fn(config=config, overrides=overrides, resume=resume, **rest)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def configure_logging() -> None:
    """Send the library's 'crossmodal' log lines (one per epoch) to stderr."""
    from crossmodal.engine.logging import get_logger

    get_logger().setLevel(logging.INFO)


def summary_line(name: str, summary: dict) -> str:
    """The one line a finished run prints: best test top-1 (when there is a test split) and where it wrote."""
    if summary["best_test_top1"] is None:
        return f"{name}: trained {summary['epochs']} epochs (no labeled test split), checkpoints in {summary['run_dir']}"
    return (f"{name}: best test top-1 {summary['best_test_top1']:.2f}% (epoch {summary['best_epoch']}), "
            f"checkpoints in {summary['run_dir']}")
