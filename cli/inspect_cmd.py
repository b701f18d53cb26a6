"""`crossmodal inspect FILE`: what a prepared file holds, and optionally a contact sheet of it."""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

SHOWN_CLASSES = 8  # class names listed before "... (+N more)"
SHOWN_COUNTS = 10  # label counts listed one by one up to this many classes
PROVENANCE_WIDTH = 100  # characters of one provenance value before it is cut


def _class_line(class_names: list[str]) -> str:
    """'14: a, b, ... (+6 more)'."""
    if not class_names:
        return "none"
    shown = ", ".join(class_names[:SHOWN_CLASSES])
    more = len(class_names) - SHOWN_CLASSES
    return f"{len(class_names)}: {shown}" + (f", ... (+{more} more)" if more > 0 else "")


def label_summary(labels: np.ndarray, class_names: list[str]) -> str:
    """One line describing a split's image labels: per-class counts, or a min/max summary for many classes."""
    unlabeled = int((labels < 0).sum())
    if unlabeled == len(labels):
        return "none (all -1)"
    counts = np.bincount(labels[labels >= 0], minlength=len(class_names))

    def name(k: int) -> str:
        return class_names[k] if k < len(class_names) else str(k)

    present = np.flatnonzero(counts)
    if len(counts) <= SHOWN_COUNTS:
        text = ", ".join(f"{name(k)} {counts[k]}" for k in range(len(counts)))
    else:
        lo, hi = int(counts.argmin()), int(counts.argmax())
        text = f"{len(present)} of {len(counts)} classes present, min {counts[lo]} ({name(lo)}), max {counts[hi]} ({name(hi)})"
    return text + (f"; {unlabeled} unlabeled (-1)" if unlabeled else "")


def _dataset_order(name: str) -> tuple[int, str]:
    """Sort key: modalities in crossmodal.modalities order, then segmentation, depth_valid, the rest."""
    from crossmodal.modalities import MODALITIES

    known = list(MODALITIES) + ["segmentation", "depth_valid"]
    return (known.index(name) if name in known else len(known), name)


def _short(value) -> str:
    """A provenance value on one line, cut to PROVENANCE_WIDTH characters."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= PROVENANCE_WIDTH else text[: PROVENANCE_WIDTH - 3] + "..."


def _encoded_line(group, name: str, codec: str) -> str:
    """'jpeg, 224x224 every image, 11.7 kB per image' or 'jpeg, 160x120 to 500x500, ...' for an encoded dataset."""
    sizes = group[name + "_size"][()]  # (N, 2) H, W
    if len(sizes) == 0:
        return f"{codec}, no images"
    low, high = sizes.min(axis=0), sizes.max(axis=0)
    same = (low == high).all()
    extent = f"{low[1]}x{low[0]} every image" if same else f"{low[1]}..{high[1]} wide, {low[0]}..{high[0]} high"
    return f"{codec}, {extent}, {_mean_encoded_bytes(group[name]) / 1e3:.1f} kB per image (mean)"


def _mean_encoded_bytes(ds, sample: int = 256) -> float:
    """Mean encoded size of up to `sample` rows spread over the dataset."""
    rows = np.unique(np.linspace(0, ds.shape[0] - 1, min(sample, ds.shape[0])).round().astype(np.int64))
    return float(np.mean([len(x) for x in ds[rows]]))


def describe(path: Path) -> list[str]:
    """The lines `crossmodal inspect` prints for a prepared file (raises DataError for a bad file)."""
    from crossmodal.data.schema import open_prepared

    f, summary = open_prepared(path)
    with f:
        class_names = summary["class_names"]
        lines = [
            f"file        {path} ({path.stat().st_size / 1e6:.1f} MB)",
            f"source      {summary['source']}  (schema {f.attrs['schema_version']}, crossmodal {f.attrs['crossmodal_version']})",
            f"classes     {_class_line(class_names)}",
            "splits",
        ]
        for split in sorted(summary["splits"], key=lambda s: (s != "train", s != "test", s)):
            group = f[split]
            info = summary["splits"][split]
            encoding, derived = info.get("encoding", {}), info.get("derived", {})
            lines.append(f"  {split:<10}{info['n']} samples")
            for name in sorted(list(group) + list(derived), key=_dataset_order):
                if name in encoding:
                    lines.append(f"    {name:<14}{_encoded_line(group, name, encoding[name])}")
                elif name in derived:
                    lines.append(f"    {name:<14}{str(info['modalities'][name]):<18}derived from {derived[name]} by "
                                 f"the loader (float16 values, as if stored)")
                elif name != "label" and name[:-len("_size")] not in encoding:
                    ds = group[name]
                    lines.append(f"    {name:<14}{str(tuple(ds.shape[1:])):<18}{ds.dtype}")
            lines.append(f"    {'label':<14}{label_summary(group['label'][()], class_names)}")
    lines.append("stats (float units, before normalisation)")
    for name, stat in summary["stats"].items():
        mean = ", ".join(f"{v:.4g}" for v in stat.get("mean", []))
        std = ", ".join(f"{v:.4g}" for v in stat.get("std", []))
        lines.append(f"  {name:<8}mean [{mean}]  std [{std}]")
    lines.append("provenance")
    provenance = summary["provenance"]
    for key, value in (provenance.items() if isinstance(provenance, dict) else [("value", provenance)]):
        lines.append(f"  {key}: {_short(value)}")
    return lines


@click.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path), help="Write a contact sheet PNG here.")
@click.option("--n", "n", type=click.IntRange(1, 64), default=8, show_default=True, help="Samples (columns) on the sheet.")
@click.option("--split", default=None, help="Split shown on the sheet  [default: test, else the first split]")
@click.option("--force", is_flag=True, help="Replace --sheet if it exists.")
def inspect(file: Path, sheet: Path | None, n: int, split: str | None, force: bool):
    """Show what a prepared HDF5 file holds: splits, modalities, shapes, classes, labels, stats, provenance."""
    if sheet is not None and sheet.exists() and not force:
        from crossmodal.errors import DataError

        raise DataError(f"{sheet} already exists; pass --force to replace it")
    for line in describe(file):
        click.echo(line)
    if sheet is not None:
        from crossmodal.data.sheet import write_sheet

        out = write_sheet(file, sheet, split=split, n=n)
        click.echo(f"contact sheet -> {out}")
