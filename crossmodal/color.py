"""sRGB <-> CIE Lab (D65), the conversion behind the L and ab modalities.

OpenCV's float path (`cv2.COLOR_RGB2Lab` on float32 in [0, 1]) is used because it is fast on
whole batches. It tabulates the sRGB gamma and the Lab cube root, so it differs from the exact
formula (and from `kornia.color.rgb_to_lab`, which evaluates it) by at most 0.19 in L* and
0.47 in a*/b* over all 2^24 8-bit colours (measured; tests/test_color.py holds the bound).
That is a fifth of a just-noticeable colour difference (Delta E ~ 2.3).

Batches are converted in one OpenCV call by viewing (N, H, W, 3) as one (N*H, W, 3) image: the
conversion is per pixel, so the result is the same and the per-call overhead is paid once.
"""
from __future__ import annotations

import cv2
import numpy as np


def _as_one_image(array: np.ndarray, what: str) -> np.ndarray:
    """View (..., W, 3) as a single (rows, W, 3) image, which is what cv2.cvtColor accepts."""
    if array.ndim < 3 or array.shape[-1] != 3:
        raise ValueError(f"{what} must have shape (H, W, 3) or (N, H, W, 3), got {array.shape}")
    return array.reshape(-1, array.shape[-2], 3)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) or (N, H, W, 3) -> float32 Lab of the same shape: L in [0, 100], a/b about [-128, 127]."""
    if rgb.dtype != np.uint8:
        raise ValueError(f"rgb_to_lab expects uint8 RGB, got {rgb.dtype}")
    image = _as_one_image(rgb, "rgb")
    unit = np.multiply(image, np.float32(1.0 / 255.0), dtype=np.float32)  # (rows, W, 3) in [0, 1]
    return cv2.cvtColor(unit, cv2.COLOR_RGB2Lab).reshape(rgb.shape)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """Lab (H, W, 3) or (N, H, W, 3), any float dtype -> uint8 RGB (rounded, out-of-gamut values clipped)."""
    image = _as_one_image(np.asarray(lab, dtype=np.float32), "lab")
    unit = cv2.cvtColor(image, cv2.COLOR_Lab2RGB)  # (rows, W, 3) float32, about [0, 1]
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8).reshape(lab.shape)
