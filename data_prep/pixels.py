"""Pixels of one record and statistics of stored values: what the raw writer (writer.py) and the encoded writer
(encoded.py) both use, so that an encoded file's decoded pixels and its stats match a raw file's."""
from __future__ import annotations

import cv2
import numpy as np

IMAGE_KEYS = ("rgb", "hha")  # uint8 (H, W, 3) record entries


def fit_record(record: dict, size: int) -> dict:
    """Resize so the shorter side is `size`, then centre-crop size x size, with one geometry for every key.

    Images: INTER_AREA when shrinking, INTER_LINEAR when enlarging. Segmentation: nearest.
    Depth: valid-aware, i.e. each output pixel averages the valid (> 0) depths under it and is
    valid when at least one of them is; holes never blur into measured depth.
    """
    h, w = next(v.shape[:2] for k, v in record.items() if k != "label")
    if (h, w) == (size, size):
        return record
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    smooth = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR

    def resize(a: np.ndarray, interpolation: int) -> np.ndarray:
        out = cv2.resize(a, (new_w, new_h), interpolation=interpolation)
        return out[top:top + size, left:left + size]

    fitted = {"label": record["label"]}
    for key, value in record.items():
        if key in IMAGE_KEYS:
            fitted[key] = resize(value, smooth)
        elif key == "segmentation":
            fitted[key] = resize(value, cv2.INTER_NEAREST)
        elif key == "depth":
            valid = (value > 0).astype(np.float32)
            weight = resize(valid, smooth)
            total = resize(value * valid, smooth)
            fitted[key] = np.where(weight > 0, total / np.maximum(weight, 1e-12), 0).astype(np.float32)
    return fitted


def to_float16(plane: np.ndarray) -> np.ndarray:
    """float32 (rows, W) -> float16, rounded to nearest even exactly like numpy's astype.

    OpenCV's SIMD conversion is ~10x faster than numpy's float16 cast, which has no vector path.
    """
    return cv2.multiply(plane, 1.0, dtype=cv2.CV_16F)


class ChannelStats:
    """Exact per-channel mean/std of stored values, accumulated block by block and mergeable."""

    def __init__(self, dtype: str, channels: int):
        self.dtype, self.channels = dtype, channels
        self.bins = {"uint8": 256, "float16": 65536}.get(dtype)
        if self.bins:
            self.counts = np.zeros((channels, self.bins), np.int64)
        else:  # float32: Chan et al.'s parallel mean/M2 in float64
            self.n, self.mean, self.m2 = np.zeros(channels), np.zeros(channels), np.zeros(channels)

    def update(self, block: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add a (B, C, H, W) block of stored values; `valid` (B, 1, H, W) masks depth holes."""
        for c in range(self.channels):
            values = block[:, c]
            if self.bins:
                plane = np.ascontiguousarray(values).reshape(-1, block.shape[-1])  # (B*H, W)
                codes = plane.view(np.uint16) if self.bins == 65536 else plane
                # cv2.calcHist is ~4x faster than np.bincount; its float32 counts are exact below 2**24
                step = max(1, (1 << 24) // codes.shape[1])
                for r in range(0, codes.shape[0], step):
                    hist = cv2.calcHist([codes[r:r + step]], [0], None, [self.bins], [0, self.bins])
                    self.counts[c] += hist.ravel().astype(np.int64)
                continue
            values = values[valid[:, 0] > 0] if valid is not None else values.ravel()
            if values.size:
                mean = values.mean(dtype=np.float64)
                self._merge(c, values.size, mean, np.square(values - mean).sum())

    def _merge(self, c: int, n: int, mean: float, m2: float) -> None:
        if n == 0:
            return
        total = self.n[c] + n
        delta = mean - self.mean[c]
        self.m2[c] += m2 + delta * delta * self.n[c] * n / total
        self.mean[c] += delta * n / total
        self.n[c] = total

    def merge(self, other: "ChannelStats") -> None:
        """Fold another accumulator of the same modality into this one."""
        if self.bins:
            self.counts += other.counts
        else:
            for c in range(self.channels):
                self._merge(c, other.n[c], other.mean[c], other.m2[c])

    def result(self, scale: float) -> dict:
        """{"mean": [...], "std": [...]} per channel in float units (stored value * scale), population std."""
        if self.bins:
            values = np.arange(self.bins, dtype=np.uint16 if self.bins == 65536 else np.uint8)
            values = (values.view(np.float16) if self.bins == 65536 else values).astype(np.float64)
            finite = np.isfinite(values)
            counts, values = self.counts[:, finite], values[finite]
            n = counts.sum(axis=1)
            mean = counts @ values / np.maximum(n, 1)
            var = (counts * np.square(values[None, :] - mean[:, None])).sum(axis=1) / np.maximum(n, 1)
        else:
            mean, var = self.mean, self.m2 / np.maximum(self.n, 1)
        return {"mean": (mean * scale).tolist(), "std": (np.sqrt(var) * scale).tolist()}
