"""Reader for the official NYU-Depth-V2 labeled set, `nyu_depth_v2_labeled.mat` (Silberman et al. 2012).

The file is MATLAB v7.3, i.e. HDF5, read with h5py. MATLAB stores arrays column-major, so h5py
shows every axis reversed. The layout assumed (N = 1449, W = 640, H = 480 in the real file)::

    images  (N, 3, W, H) uint8     -> record "rgb" (H, W, 3), transposed
    depths  (N, W, H)    float32   -> record "depth" (H, W), metres (in-painted, so no holes)
    labels  (N, W, H)    uint16    -> record "segmentation" (H, W) int16, 894 classes, 0 = unlabeled
    names   optional (1, C) references to uint16 character arrays: the raw class names

Frames are numbered 1..N as in the dataset (nyu18's 0001.png is frame 1). Records carry label -1:
NYU frames have no image-level class; `class_names[v]` names segmentation value v (0 = "unlabeled").

Splits (`splits_mat`): the official `splits.mat` with `trainNdxs`, `testNdxs` (1-based frame
numbers), read with scipy when it is MATLAB v5 (scipy is optional: without it, save the file as
v7.3, which h5py reads, or give a text file of "<frame> <split>" lines like nyu18/split.txt).
Without `splits_mat`, a `splits.mat` beside the .mat file is used; failing that every frame is
"train" and provenance says so. Frames in no split are left out and counted in provenance.

Class mapping (`class_mapping`): a .mat with `mapClass` (raw class k -> mapClass[k-1], 0 stays
unlabeled) and `className`, e.g. classMapping40.mat (Gupta et al. 2013) or an 894 -> 13
classMapping13.mat (the 13 classes of Couprie et al. 2013). Without it the raw 894-class labels
are stored and provenance says so. (A 40 -> 13 table such as class13Mapping.mat must first be
composed with the 894 -> 40 one.)
"""
from __future__ import annotations

import threading
from pathlib import Path

import h5py
import numpy as np

from crossmodal.errors import DataError
from data_prep.rgbd import read_split_file
from data_prep.source import Source, SplitSource

REQUIRED_KEYS = ("images", "depths", "labels")


def _matlab_strings(value, f: h5py.File | None) -> list[str]:
    """Decode a MATLAB cell array of strings, from h5py (object references) or scipy (object array)."""
    out = []
    for item in np.asarray(value).ravel():
        if isinstance(item, h5py.Reference):
            item = f[item][()]
        arr = np.asarray(item).ravel()
        if arr.dtype.kind in "ui":  # v7.3 stores characters as uint16 code points
            out.append("".join(chr(int(c)) for c in arr))
        else:  # scipy: a 1-element array holding the str
            out.append("".join(str(c) for c in arr))
    return out


def _open_h5(path: Path) -> h5py.File:
    """h5py.File(path, "r"), or a DataError naming the file when HDF5 cannot open it (truncated, damaged)."""
    try:
        return h5py.File(path, "r")
    except OSError as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: not a readable MATLAB v7.3 (HDF5) file ({reason}); download it again") from None


def load_mat(path: Path, keys: tuple[str, ...], strings: tuple[str, ...] = ()) -> dict:
    """Read `keys` (numeric arrays, squeezed) and optional `strings` (cell arrays) from a MATLAB v5 or v7.3 file."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if h5py.is_hdf5(path):
        with _open_h5(path) as f:
            _require(path, f.keys(), keys)
            out = {k: np.asarray(f[k][()]).squeeze() for k in keys}
            out.update({k: _matlab_strings(f[k][()], f) for k in strings if k in f})
            return out
    try:
        import scipy.io
    except ImportError:
        raise DataError(f"{path}: MATLAB v5 file and scipy is not installed; `pip install scipy`, or save it as v7.3") from None
    try:
        variables = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several types for non-MATLAB input
        raise DataError(f"{path}: not a readable MATLAB file ({e})") from None
    _require(path, variables.keys(), keys)
    out = {k: np.asarray(variables[k]).squeeze() for k in keys}
    out.update({k: _matlab_strings(variables[k], None) for k in strings if k in variables})
    return out


def _require(path: Path, found, keys) -> None:
    """Raise DataError naming the file and the first wanted key it lacks."""
    found = [k for k in found if not k.startswith(("_", "#"))]  # skip MATLAB/scipy bookkeeping entries
    for key in keys:
        if key not in found:
            raise DataError(f"{path}: key {key!r} missing; found {', '.join(found) or 'nothing'}")


def _read_splits(splits_path: Path, n: int) -> dict[int, str]:
    """{0-based row: split} from splits.mat (trainNdxs/testNdxs) or a text '<frame> <split>' file."""
    if splits_path.suffix.lower() == ".txt":
        by_frame = read_split_file(splits_path)
        numbered = {}
        for frame, split in by_frame.items():
            if not frame.isdigit():
                raise DataError(f"{splits_path}: frame {frame!r} is not a frame number (1..{n})")
            numbered[int(frame)] = split
    else:
        ndxs = load_mat(splits_path, ("trainNdxs", "testNdxs"))
        numbered = {}
        for split, key in (("train", "trainNdxs"), ("test", "testNdxs")):
            for frame in np.atleast_1d(ndxs[key]).astype(np.int64).tolist():
                if numbered.get(frame, split) != split:
                    raise DataError(f"{splits_path}: frame {frame} is in both trainNdxs and testNdxs")
                numbered[frame] = split
    bad = sorted(k for k in numbered if not 1 <= k <= n)
    if bad:
        raise DataError(f"{splits_path}: frame numbers {bad[:5]} outside 1..{n} (the .mat file has {n} frames)")
    return {frame - 1: split for frame, split in numbered.items()}


class _MatFrames:
    """Reads frames from the .mat file; one h5py handle opened on first use and shared by the writer's threads."""

    def __init__(self, path: Path, lookup: np.ndarray | None):
        self.path = path
        self.lookup = lookup  # raw class -> mapped class, or None to keep raw labels
        self._file: h5py.File | None = None
        self._lock = threading.Lock()

    def _handle(self) -> h5py.File:
        with self._lock:
            if self._file is None:
                self._file = h5py.File(self.path, "r")
            return self._file

    def decode(self, row: int) -> dict:
        """Frame at 0-based `row` -> record (see data_prep/source.py)."""
        f = self._handle()
        try:
            image, depth, labels = f["images"][row], f["depths"][row], f["labels"][row]  # (3, W, H), (W, H), (W, H)
        except OSError as e:
            raise DataError(f"{self.path}: frame {row + 1} unreadable ({e}); the file may be truncated, re-download it") from None
        segmentation = labels.T.astype(np.int64)  # (H, W)
        if self.lookup is not None:
            if segmentation.max() >= len(self.lookup):
                raise DataError(f"{self.path}: frame {row + 1} has class {segmentation.max()}, the class mapping covers 1..{len(self.lookup) - 1}")
            segmentation = self.lookup[segmentation]
        return {
            "rgb": np.ascontiguousarray(image.transpose(2, 1, 0)),  # (H, W, 3) uint8
            "depth": np.ascontiguousarray(depth.T, dtype=np.float32),  # (H, W) metres
            "segmentation": segmentation.astype(np.int16),
            "label": -1,
        }


def _check_layout(path: Path) -> tuple[int, list[str]]:
    """Validate keys and shapes of the labeled .mat; return (frame count, raw class names)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise DataError(f"{path}: not a MATLAB v7.3 (HDF5) file; expected nyu_depth_v2_labeled.mat")
    with _open_h5(path) as f:
        for key in REQUIRED_KEYS:
            if key not in f:
                raise DataError(f"{path}: key {key!r} missing; expected {', '.join(REQUIRED_KEYS)} (nyu_depth_v2_labeled.mat)")
        images, depths, labels = (f[k] for k in REQUIRED_KEYS)
        if images.ndim != 4 or images.shape[1] != 3:
            raise DataError(f"{path}: 'images' has shape {images.shape}, expected (N, 3, W, H)")
        n, _, w, h = images.shape
        for key, ds in (("depths", depths), ("labels", labels)):
            if ds.shape != (n, w, h):
                raise DataError(f"{path}: {key!r} has shape {ds.shape}, expected {(n, w, h)} to match 'images'")
        names = _matlab_strings(f["names"][()], f) if "names" in f else []
    return n, names


def read_nyu_mat(mat: Path, splits_mat: Path | None = None, class_mapping: Path | None = None) -> Source:
    """Index nyu_depth_v2_labeled.mat (+ optional splits and class mapping) as a Source of rgb, depth, segmentation."""
    mat = Path(mat)
    n, raw_names = _check_layout(mat)
    provenance: dict = {"mat": str(mat.resolve()), "frames_in_file": n}

    if splits_mat is None and (mat.parent / "splits.mat").is_file():
        splits_mat = mat.parent / "splits.mat"
    if splits_mat is not None:
        row_split = _read_splits(Path(splits_mat), n)
        provenance["splits_file"] = str(splits_mat)
        provenance["frames_in_no_split"] = n - len(row_split)
    else:
        row_split = {row: "train" for row in range(n)}
        provenance["splits_file"] = None
        provenance["splits_note"] = "no splits file given or found beside the .mat: every frame is 'train'"

    if class_mapping is not None:
        mapping = load_mat(Path(class_mapping), ("mapClass",), strings=("className",))
        table = np.atleast_1d(mapping["mapClass"]).astype(np.int64)
        if raw_names and len(table) != len(raw_names):
            raise DataError(f"{class_mapping}: 'mapClass' has {len(table)} entries, {mat} has {len(raw_names)} classes")
        lookup = np.concatenate([[0], table])  # raw value 0 (unlabeled) stays 0
        target_names = mapping.get("className") or [f"class{k}" for k in range(1, int(table.max()) + 1)]
        if table.min() < 0 or table.max() > len(target_names):
            raise DataError(f"{class_mapping}: 'mapClass' values span {table.min()}..{table.max()}, "
                            f"expected 0..{len(target_names)} (one per 'className' entry)")
        class_names = ["unlabeled"] + target_names
        provenance["labels"] = f"raw classes mapped to {len(target_names)} with {class_mapping}"
    else:
        lookup = None
        class_names = ["unlabeled"] + raw_names if raw_names else []
        provenance["labels"] = (
            f"raw NYU-Depth-V2 classes ({len(raw_names) or 'names absent'}), 0 = unlabeled: no class mapping given"
        )
    provenance["segmentation"] = "class_names[v] names pixel value v, 0 = unlabeled"
    provenance["image_labels"] = "none: NYU frames have no image-level class, every label is -1"

    frames = _MatFrames(mat, lookup)
    by_split: dict[str, list[int]] = {}
    for row in sorted(row_split):
        by_split.setdefault(row_split[row], []).append(row)
    order = sorted(by_split, key=lambda s: (s != "train", s != "test", s))
    splits = [SplitSource(s, by_split[s], frames.decode, len(by_split[s])) for s in order]
    provenance["frames"] = {s.name: s.count for s in splits}
    return Source("nyu", splits, class_names, {"rgb", "depth", "segmentation"}, provenance)
