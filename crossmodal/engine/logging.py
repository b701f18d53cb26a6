"""What a run writes besides checkpoints: metrics.csv, TensorBoard events, curves.png, summary.json.

metrics.csv has one row per epoch; its columns are `epoch`, `lr` (of the epoch's first step),
`train_loss`, one `train_<term>` per named loss term of the task, `train_top1`, `test_loss`,
`test_top1`, `test_top5` (empty in epochs without evaluation), `images_per_s` (training only,
all processes together) and `epoch_time_s`. It is rewritten whole (atomically) each epoch from
the rows held in the checkpoint, so a resumed run's file never holds rows twice. TensorBoard
scalars use the global iteration as step; a resumed run purges the events written after its
checkpoint. curves.png is redrawn at most once a minute and after the last epoch.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import time
from pathlib import Path

from crossmodal.tempfiles import atomic_write, atomic_write_text


def get_logger() -> logging.Logger:
    """The 'crossmodal' logger; prints INFO lines to stderr unless the application configured handlers."""
    logger = logging.getLogger("crossmodal")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def metrics_to_csv(rows: list[dict]) -> str:
    """CSV text of per-epoch rows; columns in first-seen order, missing values empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(rows), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.csv as dicts of floats (None for empty cells)."""
    with open(path, newline="") as f:
        return [{k: (float(v) if v != "" else None) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_curves(rows: list[dict], path: Path) -> None:
    """Losses, accuracies and lr against epoch in one PNG (Agg canvas, no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(13, 3.8))
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.14, top=0.92, wspace=0.25)
    FigureCanvasAgg(fig)
    panels = [
        ("loss", [k for k in _columns(rows) if k.endswith("_loss") or (k.startswith("train_") and k != "train_top1")]),
        ("accuracy (%)", ["train_top1", "test_top1", "test_top5"]),
        ("learning rate", ["lr"]),
    ]
    for i, (title, keys) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        for key in keys:
            points = [(e, r[key]) for e, r in zip(epochs, rows) if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), label=key, marker="." if len(points) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if title == "learning rate":
            ax.set_yscale("log")
        elif ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90)


def _columns(rows: list[dict]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    return columns


class RunLogger:
    """Writes a run's logs on the main process (every method is a no-op when `enabled` is False)."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, purge_step: int | None = None,
                 plot_every_s: float = 60.0):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.plot_every_s = plot_every_s
        self._last_plot = time.monotonic()
        self.writer = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency, but a broken install must not stop training
                get_logger().warning("tensorboard is not importable; no TensorBoard events will be written")
            else:
                self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge_step)

    def rewrite(self, rows: list[dict]) -> None:
        """Make metrics.csv hold exactly `rows` (after a resume it may hold rows past the checkpoint)."""
        if self.enabled and rows:
            atomic_write_text(self.run_dir / "metrics.csv", metrics_to_csv(rows))

    def log_step(self, global_step: int, scalars: dict[str, float]) -> None:
        """Per-iteration scalars (TensorBoard only)."""
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, global_step)

    def log_epoch(self, row: dict, global_step: int, all_rows: list[dict], final: bool = False) -> None:
        """Record one epoch: TensorBoard scalars, metrics.csv rewritten from `all_rows`, and curves.png
        (redrawn at most every `plot_every_s` seconds, since drawing costs about a second, and when `final`)."""
        if not self.enabled:
            return
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch":  # train_top1 -> train/top1, lr -> run/lr
                    tag = key.replace("_", "/", 1) if key.startswith(("train_", "test_")) else f"run/{key}"
                    self.writer.add_scalar(tag, value, global_step)
            self.writer.flush()
        atomic_write_text(self.run_dir / "metrics.csv", metrics_to_csv(all_rows))
        if final or time.monotonic() - self._last_plot >= self.plot_every_s:
            plot_curves(all_rows, self.run_dir / "curves.png")
            self._last_plot = time.monotonic()

    def write_summary(self, summary: dict) -> None:
        """summary.json, atomically."""
        if self.enabled:
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
