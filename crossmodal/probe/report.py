"""Probe output: the printed table, results.json, report.md and its plots (all written atomically)."""
from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path
from typing import Optional, Sequence

from crossmodal.tempfiles import atomic_write, atomic_write_text

# (row key, column header); metric columns appear only when some row has them.
ID_COLUMNS = (("method", "method"), ("checkpoint", "checkpoint"), ("arch", "arch"), ("modality", "modality"),
              ("stage", "stage"))
METRIC_COLUMNS = (("top1", "top-1"), ("top5", "top-5"), ("pixel_acc", "pixel acc"), ("miou", "mIoU"))


def _columns(rows: Sequence[dict]) -> list[tuple[str, str]]:
    metrics = [c for c in METRIC_COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    return list(ID_COLUMNS) + metrics


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def format_table(rows: Sequence[dict]) -> str:
    """Fixed-width text table of result rows (method, checkpoint, arch, modality, stage, metrics in %)."""
    columns = _columns(rows)
    cells = [[header for _, header in columns]] + [[_cell(r.get(key)) for key, _ in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(text.ljust(w) for text, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: Sequence[dict]) -> str:
    """The same table in Markdown."""
    columns = _columns(rows)
    lines = ["| " + " | ".join(header for _, header in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(key)).replace("|", "\\|") for key, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path: str | Path, payload: dict) -> Path:
    """Write `payload` as indented JSON atomically (NaN written as null)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(_nan_to_none(payload), indent=2) + "\n")
    return path


def _nan_to_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def save_figure(fig, path: str | Path) -> Path:
    """Render a matplotlib Figure (Agg canvas) to PNG at `path`, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    path = Path(path)
    with atomic_write(path, "wb") as f:
        f.write(buffer.getvalue())
    return path


def plot_histories(histories: dict[str, list[dict]], path: str | Path, title: str) -> Path:
    """Training loss per epoch of each probed network (one line each) as a PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    for label, rows in histories.items():
        ax.plot([r["epoch"] for r in rows], [r["train_loss"] for r in rows], label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss of the probe")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_class_iou(class_iou: dict[str, dict[str, Optional[float]]], path: str | Path) -> Path:
    """Grouped bars of per-class IoU (%) for each probed network; classes absent from the ground truth are skipped."""
    from matplotlib.figure import Figure

    names = [c for c in next(iter(class_iou.values())) if any(v.get(c) is not None for v in class_iou.values())]
    fig = Figure(figsize=(max(5.0, 0.6 * len(names) + 2), 3.8))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(class_iou))
    for k, (label, ious) in enumerate(class_iou.items()):
        ax.bar([i + k * width for i in range(len(names))], [ious.get(c) or 0.0 for c in names], width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], labels=names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def write_report(report_dir: str | Path, title: str, rows: Sequence[dict], notes: Sequence[str] = (),
                 images: Sequence[str | Path] = (), extra_sections: Sequence[tuple[str, str]] = ()) -> Path:
    """Write <report_dir>/report.md: title, notes, the results table, extra sections, then the images (copied in)."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", ""]
    parts += [f"- {note}" for note in notes]
    parts.append("")
    if rows:
        parts += ["## Results", "", markdown_table(rows), ""]
    for heading, body in extra_sections:
        parts += [f"## {heading}", "", body, ""]
    if images:
        parts += ["## Plots", ""]
    for image in images:
        image = Path(image)
        target = report_dir / image.name
        if image.resolve() != target.resolve():
            with atomic_write(target, "wb") as f, open(image, "rb") as src:
                shutil.copyfileobj(src, f)
        parts += [f"![{image.stem}]({image.name})", ""]
    path = report_dir / "report.md"
    atomic_write_text(path, "\n".join(parts))
    return path
