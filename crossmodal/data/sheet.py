"""Contact sheets of a prepared file: one row per modality, one column per sample, as a PNG.

What each row shows (stored values, before normalisation):
    rgb, hha       as colour images
    L              as grey (L* 0..100 -> 0..255)
    ab             back in colour at constant lightness L* = 70, so only the chrominance varies
    depth          TURBO colour map over the shown samples' 2nd..98th percentile, missing depth black
    seg            segmentation over the rgb image in a fixed palette (unlabeled pixels left as they are)
Encoded files: rgb is decoded and L/ab derived from it as the loader does; images of other sizes
than the first column's are fitted inside their tile.
The header above each column gives the sample's row in the split and its class when it has one.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import h5py
import numpy as np

from crossmodal.color import lab_to_rgb, rgb_to_lab
from crossmodal.data.codec import decode
from crossmodal.data.schema import open_prepared, read_json_attr
from crossmodal.errors import DataError

ROW_ORDER = ("rgb", "L", "ab", "depth", "hha")  # then "seg" when the split has a segmentation
TILE = 128  # longer side of one tile in pixels
LABEL_WIDTH = 48  # left column holding the row names
HEADER_HEIGHT = 16  # top strip holding the sample captions
GAP = 2  # background pixels between tiles
AB_LIGHTNESS = 70.0
BACKGROUND = 32  # dark grey, so black (missing depth) tiles stay visible


def segmentation_palette(n: int) -> np.ndarray:
    """(n, 3) uint8 BGR colours, the same for every file: 0 is black, 1.. step hue by the golden ratio."""
    values = np.arange(n)
    hsv = np.empty((n, 1, 3), np.uint8)
    hsv[:, 0, 0] = ((values * 0.618034) % 1.0 * 180).astype(np.uint8)  # OpenCV hue is 0..179
    hsv[:, 0, 1] = np.where(values % 2, 230, 160)
    hsv[:, 0, 2] = np.where(values % 3 == 2, 190, 255)
    palette = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[:, 0]
    palette[0] = 0
    return palette


def _tile_shape(h: int, w: int) -> tuple[int, int]:
    """(height, width) of a tile for (h, w) images: longer side TILE, aspect kept."""
    scale = TILE / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _rgb_tiles(chw: np.ndarray) -> list[np.ndarray]:
    """(B, 3, H, W) uint8 RGB -> list of (H, W, 3) BGR."""
    return [np.ascontiguousarray(x.transpose(1, 2, 0)[:, :, ::-1]) for x in chw]


def _l_tiles(l_star: np.ndarray) -> list[np.ndarray]:
    """(B, 1, H, W) L* -> grey BGR tiles."""
    grey = np.clip(l_star[:, 0].astype(np.float32) * 2.55, 0, 255).astype(np.uint8)  # (B, H, W)
    return [cv2.cvtColor(g, cv2.COLOR_GRAY2BGR) for g in grey]


def _ab_tiles(ab: np.ndarray) -> list[np.ndarray]:
    """(B, 2, H, W) a*b* -> colour tiles at constant L*, through the same Lab conversion that made the file."""
    b, _, h, w = ab.shape
    lab = np.empty((b, h, w, 3), np.float32)
    lab[..., 0] = AB_LIGHTNESS
    lab[..., 1:] = ab.transpose(0, 2, 3, 1)
    return [np.ascontiguousarray(rgb[:, :, ::-1]) for rgb in lab_to_rgb(lab)]  # out-of-gamut colours clipped


def _depth_tiles(depth: np.ndarray, valid: np.ndarray | None) -> list[np.ndarray]:
    """(B, 1, H, W) metres -> TURBO tiles sharing one range so columns compare; missing depth black."""
    d = depth[:, 0].astype(np.float32)  # (B, H, W)
    ok = d > 0 if valid is None else (valid[:, 0] > 0) & (d > 0)
    if not ok.any():
        return [np.zeros(x.shape + (3,), np.uint8) for x in d]
    lo, hi = np.percentile(d[ok], [2, 98])
    scaled = np.clip((d - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    tiles = []
    for x, m in zip(scaled.astype(np.uint8), ok):
        colour = cv2.applyColorMap(x, cv2.COLORMAP_TURBO)
        colour[~m] = 0
        tiles.append(colour)
    return tiles


def _seg_tiles(segmentation: np.ndarray, base: list[np.ndarray] | None) -> list[np.ndarray]:
    """(B, H, W) class values -> palette colours blended half over the rgb tiles (or black)."""
    palette = segmentation_palette(int(segmentation.max()) + 1)
    tiles = []
    for i, seg in enumerate(segmentation.astype(np.int64)):
        image = base[i] if base is not None else np.zeros(seg.shape + (3,), np.uint8)
        blended = (0.5 * image + 0.5 * palette[seg]).astype(np.uint8)
        tiles.append(np.where((seg > 0)[..., None], blended, image))
    return tiles


def sample_rows(n_split: int, n: int) -> np.ndarray:
    """Up to n rows spread evenly over a split of n_split samples (first and last included)."""
    return np.unique(np.linspace(0, n_split - 1, min(n, n_split)).round().astype(np.int64))


def render_sheet(f: h5py.File, split: str, n: int = 8, class_names: list[str] | None = None) -> np.ndarray:
    """Draw the contact sheet of `split` in an open prepared file; returns (H, W, 3) uint8 BGR."""
    if split not in f:
        raise DataError(f"{f.filename}: no split {split!r}; splits: {', '.join(f.keys())}")
    group = f[split]
    if group["label"].shape[0] == 0:
        raise DataError(f"{f.filename}: split {split!r} is empty; choose another with --split")
    rows = sample_rows(group["label"].shape[0], n)
    rendered: dict[str, list[np.ndarray]] = {}
    encoding = read_json_attr(f, "encoding", f.filename) if "encoding" in f.attrs else {}
    derived = read_json_attr(f, "derived", f.filename) if "derived" in f.attrs else {}
    decoded = {name: _decoded_images(group[name], rows, f"{f.filename}: {split}/{name}")
               for name in encoding if name in group}
    for name in ROW_ORDER:
        if name in decoded:
            rendered[name] = [np.ascontiguousarray(image[:, :, ::-1]) for image in decoded[name]]
            continue
        if derived.get(name) in decoded:  # L, ab computed from the decoded rgb, as the loader does
            labs = [rgb_to_lab(image) for image in decoded[derived[name]]]
            if name == "L":
                rendered[name] = [_l_tiles(lab[None, None, :, :, 0])[0] for lab in labs]
            else:
                rendered[name] = [_ab_tiles(lab[None, :, :, 1:].transpose(0, 3, 1, 2))[0] for lab in labs]
            continue
        if name not in group:
            continue
        data = group[name][rows]  # (B, C, H, W)
        if name in ("rgb", "hha"):
            rendered[name] = _rgb_tiles(data)
        elif name == "L":
            rendered[name] = _l_tiles(data)
        elif name == "ab":
            rendered[name] = _ab_tiles(data)
        else:
            valid = group["depth_valid"][rows] if "depth_valid" in group else None
            rendered[name] = _depth_tiles(data, valid)
    if "segmentation" in group:
        rendered["seg"] = _seg_tiles(group["segmentation"][rows], rendered.get("rgb"))

    first = next(iter(rendered.values()))[0]
    th, tw = _tile_shape(*first.shape[:2])
    interpolation = cv2.INTER_NEAREST if th >= first.shape[0] else cv2.INTER_AREA
    height = HEADER_HEIGHT + len(rendered) * (th + GAP)
    width = LABEL_WIDTH + len(rows) * (tw + GAP)
    sheet = np.full((height, width, 3), BACKGROUND, np.uint8)
    font, white = cv2.FONT_HERSHEY_SIMPLEX, (255, 255, 255)

    labels = group["label"][rows]
    for col, (row, label) in enumerate(zip(rows, labels)):
        caption = f"{row}" + (f" {class_names[label]}" if label >= 0 and class_names and label < len(class_names) else "")
        x = LABEL_WIDTH + col * (tw + GAP)
        cv2.putText(sheet, caption[: max(1, tw // 6)], (x + 1, HEADER_HEIGHT - 4), font, 0.35, white, 1, cv2.LINE_AA)
    for r, (name, tiles) in enumerate(rendered.items()):
        y = HEADER_HEIGHT + r * (th + GAP)
        cv2.putText(sheet, name, (3, y + th // 2 + 4), font, 0.4, white, 1, cv2.LINE_AA)
        for col, tile in enumerate(tiles):
            x = LABEL_WIDTH + col * (tw + GAP)
            if tile.shape[:2] == first.shape[:2]:
                sheet[y : y + th, x : x + tw] = cv2.resize(tile, (tw, th), interpolation=interpolation)
            else:  # images of another size (encoded files): fitted inside the tile, aspect kept
                fh, fw = _fit(tile.shape[:2], th, tw)
                top, left = y + (th - fh) // 2, x + (tw - fw) // 2
                sheet[top : top + fh, left : left + fw] = cv2.resize(tile, (fw, fh), interpolation=cv2.INTER_AREA)
    return sheet


def _fit(shape: tuple[int, int], th: int, tw: int) -> tuple[int, int]:
    """(height, width) of an image of `shape` scaled to fit th x tw with its aspect ratio."""
    scale = min(th / shape[0], tw / shape[1])
    return max(1, min(th, round(shape[0] * scale))), max(1, min(tw, round(shape[1] * scale)))


def _decoded_images(ds: h5py.Dataset, rows: np.ndarray, where: str) -> list[np.ndarray]:
    """The encoded images of `rows` as (H, W, 3) uint8 RGB; DataError naming the first that will not decode."""
    images = []
    for row, data in zip(rows, ds[rows]):
        image = decode(data)
        if image is None:
            raise DataError(f"{where} row {int(row)}: the stored image cannot be decoded; re-run `crossmodal prepare`")
        images.append(image)
    return images


def write_sheet(path: str | Path, out: str | Path, split: str | None = None, n: int = 8) -> Path:
    """Render a contact sheet of a prepared file's `split` (default: test, else the first) to the PNG `out`."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise DataError(f"{out}: contact sheets are PNG files; give a name ending in .png")
    f, summary = open_prepared(path)
    with f:
        split = split or ("test" if "test" in summary["splits"] else next(iter(summary["splits"])))
        sheet = render_sheet(f, split, n, summary["class_names"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.png")  # same folder, so os.replace is atomic
    try:
        if not cv2.imwrite(str(tmp), sheet):
            raise DataError(f"{out}: could not write the PNG; check the folder is writable")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
