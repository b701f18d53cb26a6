"""Reader for paired RGB-D folders (the layout of ../shared/data/nyu18 and most RGB-D exports).

Layout read by `read_rgbd(root)`::

    root/rgb/<frame>.png|jpg      colour image
    root/depth/<frame>.png        16-bit PNG, millimetres, 0 = missing   -> float32 metres
    root/hha/<frame>.png          optional HHA encoding (3 x uint8)
    root/label*/<frame>.png       optional segmentation, 8/16-bit, 0 = unlabeled pixel
    root/classes*.txt             optional segmentation class names, "<value> <name>" lines
    root/split.txt                optional "<frame> <split>" lines; without it every frame is "train"

Frames are matched by file stem across folders. Decisions a user should know:
- RGB-D frames carry no image-level class, so every record's `label` is -1; `class_names`
  names the *segmentation* values: class_names[v] is the class of pixel value v (0 = "unlabeled").
- When a label folder exists, every record carries a segmentation (the writer needs the same keys
  for every record); a frame without a label PNG gets an all-zero map (all pixels unlabeled).
  Provenance counts the frames that really had a label PNG per split (nyu18: train 0, test 8).
- An unreadable PNG, an RGB/depth size mismatch or a depth PNG that is not 16-bit stops the run
  with a DataError naming the file: a silently dropped frame would break the RGB-depth pairing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from crossmodal.errors import DataError
from data_prep.images import read_text
from data_prep.source import Source, SplitSource

RGB_SUFFIXES = (".png", ".jpg", ".jpeg")
PNG_SUFFIXES = (".png",)
MAX_NAMED = 5  # frames named in one error message before "... and N more"


@dataclass(frozen=True)
class RgbdFrame:
    """Paths of one frame's files (a cheap handle the writer passes back to `decode_frame`)."""

    name: str
    rgb: Path
    depth: Path
    hha: Optional[Path] = None
    label: Optional[Path] = None


def _name_some(names) -> str:
    """'a, b, c ... and 7 more' for error messages."""
    names = sorted(names)
    shown = ", ".join(names[:MAX_NAMED])
    return shown + (f" ... and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else "")


def _frames_in(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Map frame stem -> file for the image files in `folder`."""
    frames: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes:
            if path.stem in frames:
                raise DataError(f"{folder}: frame {path.stem!r} exists twice ({frames[path.stem].name}, {path.name})")
            frames[path.stem] = path
    return frames


def _check_same_frames(root: Path, rgb: dict, other: dict, other_name: str) -> None:
    """Raise a DataError naming the frames present on one side only."""
    only_rgb, only_other = set(rgb) - set(other), set(other) - set(rgb)
    if only_rgb or only_other:
        parts = []
        if only_rgb:
            parts.append(f"missing in {other_name}/: {_name_some(only_rgb)}")
        if only_other:
            parts.append(f"missing in rgb/: {_name_some(only_other)}")
        raise DataError(f"{root}: rgb/ has {len(rgb)} frames, {other_name}/ has {len(other)}; " + "; ".join(parts))


def _find_label_folder(root: Path, label_dir: str | None) -> Path | None:
    """The label folder: the one asked for, else the single root/label* folder, else None."""
    if label_dir is not None:
        folder = Path(label_dir) if Path(label_dir).is_absolute() else root / label_dir
        if not folder.is_dir():
            raise DataError(f"{folder}: label folder not found; pass an existing folder to --labels")
        return folder
    candidates = sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower().startswith("label"))
    if len(candidates) > 1:
        raise DataError(f"{root}: several label folders ({', '.join(p.name for p in candidates)}); choose one with --labels")
    return candidates[0] if candidates else None


def _find_classes_file(root: Path, label_folder: Path | None) -> Path | None:
    """root/classes*.txt: the one whose suffix matches the label folder's (label13 -> classes13.txt), else the only one."""
    candidates = sorted(root.glob("classes*.txt"))
    if label_folder is not None:
        suffix = label_folder.name[len("label"):]
        matching = [p for p in candidates if p.stem[len("classes"):] == suffix]
        if len(matching) == 1:
            return matching[0]
    if len(candidates) > 1:
        raise DataError(f"{root}: several classes*.txt files ({', '.join(p.name for p in candidates)}) and none matches the label folder")
    return candidates[0] if candidates else None


def read_class_names(path: Path) -> list[str]:
    """Segmentation class names indexed by pixel value, from '<value> <name>' lines (values 0, 1, ... or 1, 2, ...)."""
    names: list[str] = []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(None, 1)
        if len(fields) != 2 or not fields[0].isdigit():
            raise DataError(f"{path}:{lineno}: expected '<value> <name>', got {line!r}")
        value, name = int(fields[0]), fields[1].strip()
        if not names and value == 1:
            names.append("unlabeled")  # the file lists real classes only; pixel value 0 stays unlabeled
        if value != len(names):
            raise DataError(f"{path}:{lineno}: value {value} out of order, expected {len(names)}; list consecutive values")
        names.append(name)
    return names


def read_split_file(path: Path) -> dict[str, str]:
    """Parse '<frame> <split>' lines (blank lines and # comments skipped) into {frame: split}."""
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    assignment: dict[str, str] = {}
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise DataError(f"{path}:{lineno}: expected '<frame> <split>', got {line!r}")
        frame, split = fields
        if frame in assignment and assignment[frame] != split:
            raise DataError(f"{path}:{lineno}: frame {frame!r} is in both {assignment[frame]!r} and {split!r}")
        assignment[frame] = split
    if not assignment:
        raise DataError(f"{path}: split file lists no frames")
    return assignment


def _imread(path: Path, flags: int) -> np.ndarray:
    """cv2.imread that raises a DataError naming the file instead of returning None."""
    image = cv2.imread(str(path), flags)
    if image is None:
        raise DataError(f"{path}: unreadable image file; replace or remove this frame")
    return image


def _check_size(frame: RgbdFrame, rgb_hw: tuple[int, int], path: Path, hw: tuple[int, int]) -> None:
    """Raise when a frame's companion image does not have the RGB image's size."""
    if hw != rgb_hw:
        raise DataError(
            f"{path}: {hw[1]}x{hw[0]} but {frame.rgb.name} in rgb/ is {rgb_hw[1]}x{rgb_hw[0]}; "
            "RGB and depth must be registered at the same size"
        )


def decode_frame(frame: RgbdFrame, with_segmentation: bool) -> dict:
    """Read one frame's files into a record (see data_prep/source.py); raise DataError naming a bad file."""
    # An EXIF rotation would unregister the colour image from its depth map, so it is ignored.
    rgb = _imread(frame.rgb, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    rgb = cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB)  # (H, W, 3) uint8
    hw = rgb.shape[:2]
    depth_mm = _imread(frame.depth, cv2.IMREAD_UNCHANGED)
    if depth_mm.dtype != np.uint16 or depth_mm.ndim != 2:
        kind = f"{depth_mm.dtype}" + (f" with {depth_mm.shape[2]} channels" if depth_mm.ndim == 3 else "")
        raise DataError(f"{frame.depth}: depth PNG is {kind}; expected one 16-bit channel in millimetres")
    _check_size(frame, hw, frame.depth, depth_mm.shape)
    record = {"rgb": rgb, "depth": depth_mm.astype(np.float32) / np.float32(1000.0), "label": -1}
    if frame.hha is not None:
        hha = cv2.cvtColor(_imread(frame.hha, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION), cv2.COLOR_BGR2RGB)
        _check_size(frame, hw, frame.hha, hha.shape[:2])
        record["hha"] = hha
    if with_segmentation:
        record["segmentation"] = _read_segmentation(frame, hw)
    return record


def _read_segmentation(frame: RgbdFrame, hw: tuple[int, int]) -> np.ndarray:
    """The frame's (H, W) int16 label map, all zeros (unlabeled) when the frame has no label PNG."""
    if frame.label is None:
        return np.zeros(hw, np.int16)
    label = _imread(frame.label, cv2.IMREAD_UNCHANGED)
    if label.ndim != 2 or label.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{frame.label}: label PNG must be one 8- or 16-bit channel of class values, got {label.dtype} {label.shape}")
    _check_size(frame, hw, frame.label, label.shape)
    if label.max() > np.iinfo(np.int16).max:
        raise DataError(f"{frame.label}: class value {label.max()} does not fit int16")
    return label.astype(np.int16)


def read_rgbd(root: Path, split_file: Path | None = None, label_dir: str | None = None) -> Source:
    """Index an RGB-D folder (rgb/, depth/, optional hha/, label*/, split.txt) as a Source; decoding happens later."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; give the folder that holds rgb/ and depth/")
    for needed in ("rgb", "depth"):
        if not (root / needed).is_dir():
            raise DataError(f"{root}: no {needed}/ folder; an RGB-D folder needs rgb/ and depth/ with one image per frame")
    rgb = _frames_in(root / "rgb", RGB_SUFFIXES)
    if not rgb:
        raise DataError(f"{root / 'rgb'}: no .png/.jpg images")
    depth = _frames_in(root / "depth", PNG_SUFFIXES)
    _check_same_frames(root, rgb, depth, "depth")
    hha = _frames_in(root / "hha", RGB_SUFFIXES) if (root / "hha").is_dir() else None
    if hha is not None:
        _check_same_frames(root, rgb, hha, "hha")

    label_folder = _find_label_folder(root, label_dir)
    labels = _frames_in(label_folder, PNG_SUFFIXES) if label_folder else {}
    if set(labels) - set(rgb):
        raise DataError(f"{label_folder}: label PNGs without an rgb/ frame: {_name_some(set(labels) - set(rgb))}")
    classes_file = _find_classes_file(root, label_folder)

    if split_file is None and (root / "split.txt").is_file():
        split_file = root / "split.txt"
    if split_file is not None:
        assignment = read_split_file(Path(split_file))
        if set(assignment) - set(rgb):
            raise DataError(f"{split_file}: frames not in rgb/: {_name_some(set(assignment) - set(rgb))}")
        if set(rgb) - set(assignment):
            raise DataError(f"{split_file}: frames in rgb/ but not in the split file: {_name_some(set(rgb) - set(assignment))}; list every frame")
    else:
        assignment = {name: "train" for name in rgb}

    with_segmentation = label_folder is not None
    frames_by_split: dict[str, list[RgbdFrame]] = {}
    for name in sorted(rgb):
        frame = RgbdFrame(name, rgb[name], depth[name], hha[name] if hha else None, labels.get(name))
        frames_by_split.setdefault(assignment[name], []).append(frame)

    def decode(frame: RgbdFrame) -> dict:
        return decode_frame(frame, with_segmentation)

    order = sorted(frames_by_split, key=lambda s: (s != "train", s != "test", s))  # train, test, then the rest
    splits = [SplitSource(s, frames_by_split[s], decode, len(frames_by_split[s])) for s in order]
    raw = {"rgb", "depth"} | ({"hha"} if hha else set()) | ({"segmentation"} if with_segmentation else set())
    provenance = {
        "root": str(root.resolve()),
        "split_file": str(split_file) if split_file else None,
        "frames": {s.name: s.count for s in splits},
        "depth": "16-bit PNG millimetres -> float32 metres; 0 = missing",
        "image_labels": "none: RGB-D frames have no image-level class, every label is -1",
    }
    if with_segmentation:
        provenance.update({
            "label_dir": str(label_folder),
            "classes_file": str(classes_file) if classes_file else None,
            "labeled_frames": {s: sum(f.label is not None for f in fs) for s, fs in frames_by_split.items()},
            "segmentation": "class_names[v] names pixel value v, 0 = unlabeled; frames without a label PNG are all 0",
        })
    class_names = read_class_names(classes_file) if classes_file else []
    return Source("rgbd", splits, class_names, raw, provenance)
