"""The prepared-file schema, shared by the writer and every reader (`docs/ARCHITECTURE.md`, "Prepared data").

Layout of one prepared HDF5 file::

    /                       attrs: schema_version (int), crossmodal_version (str), source (str),
                                   provenance (JSON str: arguments, counts, skipped images, ...),
                                   class_names (JSON list of str), stats (JSON, see below)
    /<split>/               one group per split: "train", "test", "unlabeled", ...
                            (an image folder's "val" split is stored as "test"; provenance says so)
    /<split>/<modality>     (N, C, H, W), dtype per crossmodal.modalities, chunks (1, C, H, W)
    /<split>/label          (N,) int64, -1 = no label
    /<split>/segmentation   optional (N, H, W) int16, 0 = unlabeled pixel
    /<split>/depth_valid    optional (N, 1, H, W) uint8, 1 where depth was measured

Encoded storage (schema 2, `prepare --encoding jpeg|png`): the root attribute `encoding` (JSON
{modality: "jpeg" | "png"}) names the modalities stored as encoded images, and `derived` (JSON
{modality: source modality}) the ones a reader computes from them after decoding (L and ab
from rgb); a derived modality has no dataset, only its stats::

    /<split>/<modality>        (N,) variable-length uint8: one encoded image per row
    /<split>/<modality>_size   (N, 2) int32: (H, W) of each decoded image

Schema 1 files (raw arrays only, no `encoding` attribute) are read as before.

`stats` is {modality: {"mean": [per channel], "std": [per channel]}} in the modality's float
units (crossmodal.modalities.to_float), computed by `prepare` over the train split (or the
first split when there is no train split), depth over valid pixels only.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py

from crossmodal.errors import DataError, require_file
from crossmodal.modalities import MODALITIES

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
REQUIRED_ATTRS = ("schema_version", "crossmodal_version", "source", "provenance", "class_names", "stats")
EXTRA_DATASETS = ("label", "segmentation", "depth_valid")
ENCODINGS = ("jpeg", "png")  # codecs an encoded modality may use
SIZE_SUFFIX = "_size"  # /<split>/<modality>_size holds the (H, W) of each encoded image


def read_json_attr(f: h5py.File, key: str, path: str):
    """Decode a JSON string attribute, naming the file and key when it is not valid JSON."""
    raw = f.attrs[key]
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        return json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        raise DataError(f"{path}: attribute {key!r} is not valid JSON") from None


def validate(f: h5py.File, path: str | Path) -> dict:
    """Check an open prepared file against the schema; return a summary or raise DataError naming what is wrong.

    The summary is {"class_names", "stats", "provenance", "source",
    "splits": {split: {"n": N, "modalities": {name: shape}, "has_segmentation": bool}}}.
    """
    path = str(path)
    for key in REQUIRED_ATTRS:
        if key not in f.attrs:
            raise DataError(f"{path}: not a crossmodal prepared file (attribute {key!r} missing); run `crossmodal prepare`")
    version = int(f.attrs["schema_version"])
    if version not in READABLE_VERSIONS:
        raise DataError(f"{path}: schema_version {version}, this crossmodal reads {SCHEMA_VERSION} and older; "
                        f"re-run `crossmodal prepare`")
    class_names = read_json_attr(f, "class_names", path)
    if not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names):
        raise DataError(f"{path}: attribute 'class_names' must be a JSON list of strings")
    stats = read_json_attr(f, "stats", path)
    if not isinstance(stats, dict):
        raise DataError(f"{path}: attribute 'stats' must be a JSON mapping of modality to mean/std")
    encoding, derived = _encoding_attrs(f, path, stats)
    splits = {}
    for split, group in f.items():
        if not isinstance(group, h5py.Group):
            raise DataError(f"{path}: top-level {split!r} is not a split group")
        if "label" not in group:
            raise DataError(f"{path}: split {split!r} has no 'label' dataset")
        _check_labels(group["label"], len(class_names), f"{path}: {split}/label")  # before .shape: it may be a group
        n = group["label"].shape[0]
        mods = {}
        for name, ds in group.items():
            if name in encoding:
                mods[name] = _check_encoded(group, name, n, f"{path}: {split}/{name}")
                continue
            if name.endswith(SIZE_SUFFIX) and name[:-len(SIZE_SUFFIX)] in encoding:
                continue  # checked with its modality
            if name in EXTRA_DATASETS:
                if ds.shape[0] != n:
                    raise DataError(f"{path}: {split}/{name} has {ds.shape[0]} rows, label has {n}")
                continue
            if name not in MODALITIES:
                raise DataError(f"{path}: {split}/{name} is not a known modality ({', '.join(MODALITIES)})")
            m = MODALITIES[name]
            if ds.ndim != 4 or ds.shape[1] != m.channels:
                raise DataError(f"{path}: {split}/{name} has shape {ds.shape}, expected (N, {m.channels}, H, W)")
            if ds.shape[0] != n:
                raise DataError(f"{path}: {split}/{name} has {ds.shape[0]} rows, label has {n}")
            if str(ds.dtype) != m.dtype:
                raise DataError(f"{path}: {split}/{name} has dtype {ds.dtype}, expected {m.dtype}")
            if name not in stats:
                raise DataError(f"{path}: attribute 'stats' has no entry for modality {name!r}")
            mods[name] = tuple(ds.shape[1:])
        for name, source in derived.items():
            if source not in mods or source not in encoding:
                raise DataError(f"{path}: {name!r} is derived from {source!r}, which split {split!r} does not store "
                                f"encoded")
            mods[name] = (MODALITIES[name].channels,) + mods[source][1:]
        if not mods:
            raise DataError(f"{path}: split {split!r} holds no modality")
        splits[split] = {"n": n, "modalities": mods, "has_segmentation": "segmentation" in group}
        if encoding:  # encoded files only: {modality: codec} and {derived modality: its source}
            splits[split].update(encoding={m: encoding[m] for m in mods if m in encoding},
                                 derived={m: derived[m] for m in mods if m in derived})
    if not splits:
        raise DataError(f"{path}: file holds no split")
    return {
        "class_names": class_names,
        "stats": stats,
        "provenance": read_json_attr(f, "provenance", path),
        "source": str(f.attrs["source"]),
        "splits": splits,
    }


def _encoding_attrs(f: h5py.File, path: str, stats: dict) -> tuple[dict, dict]:
    """The `encoding` and `derived` attributes ({} when absent), checked: known codecs and modalities, stats present."""
    maps = []
    for key in ("encoding", "derived"):
        value = read_json_attr(f, key, path) if key in f.attrs else {}
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise DataError(f"{path}: attribute {key!r} must be a JSON mapping of modality names to strings")
        maps.append(value)
    encoding, derived = maps
    for name, codec in encoding.items():
        if name not in MODALITIES or MODALITIES[name].dtype != "uint8" or MODALITIES[name].channels != 3:
            raise DataError(f"{path}: attribute 'encoding' names {name!r}, not an 8-bit 3-channel modality")
        if codec not in ENCODINGS:
            raise DataError(f"{path}: attribute 'encoding' gives {name!r} codec {codec!r} (known: {', '.join(ENCODINGS)})")
    for name, source in derived.items():
        if name not in MODALITIES or source not in encoding:
            raise DataError(f"{path}: attribute 'derived' maps {name!r} to {source!r}; expected a modality derived "
                            f"from an encoded one ({', '.join(encoding) or 'none is encoded'})")
    for name in list(encoding) + list(derived):
        if name not in stats:
            raise DataError(f"{path}: attribute 'stats' has no entry for modality {name!r}")
    return encoding, derived


def _check_encoded(group: h5py.Group, name: str, n: int, where: str) -> tuple:
    """Check an encoded modality and its sizes; return its (C, H, W), H and W None when the images differ in size."""
    ds = group[name]
    base = h5py.check_vlen_dtype(ds.dtype) if isinstance(ds, h5py.Dataset) else None
    if base is None or base != h5py.check_vlen_dtype(h5py.vlen_dtype("uint8")) or ds.ndim != 1:
        raise DataError(f"{where}: an encoded modality must be a 1-D variable-length uint8 dataset, got "
                        f"{getattr(ds, 'shape', None)} {getattr(ds, 'dtype', type(ds).__name__)}")
    if ds.shape[0] != n:
        raise DataError(f"{where}: {ds.shape[0]} rows, label has {n}")
    size_name = name + SIZE_SUFFIX
    sizes = group.get(size_name)
    if not isinstance(sizes, h5py.Dataset) or sizes.shape != (n, 2) or sizes.dtype.kind not in "iu":
        raise DataError(f"{where}{SIZE_SUFFIX}: expected (N, 2) integer (H, W) sizes with N = {n}, got "
                        f"{getattr(sizes, 'shape', 'nothing')}")
    hw = sizes[()]
    if n and hw.min() < 1:
        raise DataError(f"{where}{SIZE_SUFFIX}: sizes must be positive, found {int(hw.min())}")
    channels = MODALITIES[name].channels
    if n and (hw == hw[0]).all():
        return (channels, int(hw[0, 0]), int(hw[0, 1]))
    return (channels, None, None)


def is_encoded(summary: dict, split: str, modality: str) -> bool:
    """True when `modality` of `split` is stored encoded or derived from an encoded one (decoded by the reader)."""
    info = summary["splits"][split]
    return modality in info.get("encoding", {}) or modality in info.get("derived", {})


LABEL_BLOCK = 1 << 20  # labels checked this many at a time (8 MiB)


def _check_labels(ds, num_classes: int, where: str) -> None:
    """DataError unless the labels are 1-D integers in -1..num_classes-1 (-1 = none)."""
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or ds.dtype.kind not in "iu":
        raise DataError(f"{where}: must be a 1-D integer dataset, got {getattr(ds, 'dtype', type(ds).__name__)}")
    for start in range(0, ds.shape[0], LABEL_BLOCK):
        block = ds[start:start + LABEL_BLOCK]
        if block.size and (block.min() < -1 or block.max() >= num_classes):
            bad = block[(block < -1) | (block >= num_classes)][0]
            raise DataError(f"{where}: label {int(bad)} is outside -1..{num_classes - 1} (the file names "
                            f"{num_classes} classes); re-run `crossmodal prepare`")


def open_prepared(path: str | Path) -> tuple[h5py.File, dict]:
    """Open a prepared file read-only and validate it; raise DataError with the path on any problem."""
    path = Path(path)
    require_file(path, DataError, "no such file", "expected a prepared .h5 file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({e})") from None
    try:
        return f, validate(f, path)
    except DataError:
        f.close()
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError) as e:  # h5py on a damaged file
        f.close()
        raise DataError(f"{path}: damaged or not a prepared file ({type(e).__name__}: {e})") from None
    except BaseException:
        f.close()
        raise
