"""Paired augmentations: one random geometry applied identically to every modality of a sample.

Cross-modal distillation needs the RGB crop and the depth crop of a sample to show the same pixels,
so the geometry (a crop box, an output size, a flip) is drawn once per sample and then applied to
each array. The randomness is a pure function of (seed, epoch, index): a resumed run, a run with any
number of DataLoader workers, and a re-run all see the same augmentations.

Arrays are channels-first (..., H, W) in float units (crossmodal.modalities.to_float), before
normalisation, so zero padding is black for rgb/L, neutral for ab and "missing" for depth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Collection, NamedTuple

import cv2
import numpy as np

from crossmodal.errors import ConfigError

# Arrays resized with nearest neighbour: values that must not be blended (metres next to a hole
# would turn into fake depth; class ids are not numbers).
NEAREST_KEYS = frozenset({"depth", "depth_valid", "segmentation"})

_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    """The splitmix64 finaliser (Steele et al. 2014): a 64-bit integer hash with good avalanche."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class SampleRandom:
    """Uniform numbers that are a pure function of an integer key such as (seed, epoch, index).

    A counter-based stream (splitmix64 of key + counter). Used instead of a numpy Generator because
    constructing one per sample costs ~40 us, more than the whole crop-and-flip it would drive.
    """

    __slots__ = ("_state", "_counter")

    def __init__(self, *key: int):
        state = 0
        for part in key:
            state = _splitmix64(state ^ (int(part) & _MASK64))
        self._state = state
        self._counter = 0

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        """A float in [low, high)."""
        self._counter += 1
        bits = _splitmix64((self._state + self._counter) & _MASK64) >> 11  # 53 random bits
        return low + (high - low) * (bits * (1.0 / (1 << 53)))

    def integer(self, low: int, high: int) -> int:
        """An int in [low, high)."""
        return min(low + int(self.uniform() * (high - low)), high - 1)


class Geometry(NamedTuple):
    """One sample's augmentation: a box (may reach outside the image: zero fill), its output size, a flip."""

    top: int
    left: int
    height: int
    width: int
    out_height: int
    out_width: int
    flip: bool


@dataclass(frozen=True)
class PairedAugment:
    """Random crop with zero padding (CIFAR) or random resized crop (STL/ImageNet), plus horizontal flip.

    crop: output side of a random crop from the image padded by `padding` zeros on each side.
    random_resized_crop: output side of a crop covering `scale` of the area with aspect ratio in
        `ratio` (log-uniform), resized; 10 tries, then the largest centred box within `ratio`.
    hflip: flip left-right with probability 1/2.
    """

    crop: int | None = None
    padding: int = 0
    hflip: bool = False
    random_resized_crop: int | None = None
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)

    @classmethod
    def from_config(cls, augment) -> "PairedAugment":
        """The augmentation a config's `data.augment` section (crossmodal.config.AugmentConfig) describes."""
        return cls(crop=augment.crop, padding=augment.padding, hflip=augment.hflip,
                   random_resized_crop=augment.random_resized_crop, scale=tuple(augment.scale))

    def __post_init__(self):
        # YAML gives lists; keep tuples so the object stays hashable and prints the same either way.
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "ratio", tuple(float(v) for v in self.ratio))
        if self.crop is not None and self.random_resized_crop is not None:
            raise ConfigError("augment: set either crop or random_resized_crop, not both")
        for key in ("crop", "random_resized_crop"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ConfigError(f"augment: {key} must be a positive int, got {value!r}")
        if not isinstance(self.padding, int) or self.padding < 0:
            raise ConfigError(f"augment: padding must be an int >= 0, got {self.padding!r}")
        if self.padding and self.crop is None:
            raise ConfigError("augment: padding needs crop (padding only applies to the random crop)")
        if len(self.scale) != 2 or not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ConfigError(f"augment: scale must be (low, high) with 0 < low <= high <= 1, got {self.scale}")
        if len(self.ratio) != 2 or not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ConfigError(f"augment: ratio must be (low, high) with 0 < low <= high, got {self.ratio}")

    def check_size(self, height: int, width: int, where: str = "data") -> None:
        """Raise ConfigError if a `crop` does not fit the (padded) images of size height x width."""
        if self.crop is not None and (self.crop > height + 2 * self.padding or self.crop > width + 2 * self.padding):
            raise ConfigError(
                f"augment: crop {self.crop} with padding {self.padding} does not fit {where} images of "
                f"{height}x{width}; lower crop or raise padding"
            )

    def sample_geometry(self, rng: SampleRandom, height: int, width: int) -> Geometry:
        """Draw one sample's geometry for images of size height x width."""
        if self.crop is not None:
            size, pad = self.crop, self.padding
            top = rng.integer(0, height + 2 * pad - size + 1) - pad
            left = rng.integer(0, width + 2 * pad - size + 1) - pad
            box = (top, left, size, size, size, size)
        elif self.random_resized_crop is not None:
            size = self.random_resized_crop
            box = (*self._resized_crop_box(rng, height, width), size, size)
        else:
            box = (0, 0, height, width, height, width)
        flip = self.hflip and rng.uniform() < 0.5
        return Geometry(*box, flip)

    def _resized_crop_box(self, rng: SampleRandom, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, h, w) of a random-resized-crop box inside the image."""
        area = height * width
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(log_low, log_high))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return rng.integer(0, height - h + 1), rng.integer(0, width - w + 1), h, w
        # Fallback: the whole image, trimmed to the nearest allowed aspect ratio, centred.
        aspect = width / height
        if aspect < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif aspect > self.ratio[1]:
            w, h = int(round(height * self.ratio[1])), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, arrays: dict[str, np.ndarray], rng: SampleRandom,
                 nearest: Collection[str] = NEAREST_KEYS) -> dict[str, np.ndarray]:
        """Apply one random geometry to every array (..., H, W) of a sample; all must share H, W."""
        first = next(iter(arrays.values()))
        height, width = first.shape[-2:]
        geometry = self.sample_geometry(rng, height, width)
        return {key: apply_geometry(a, geometry, key in nearest) for key, a in arrays.items()}


def apply_geometry(array: np.ndarray, g: Geometry, nearest: bool = False) -> np.ndarray:
    """Crop (zero fill outside the image), resize to the output size, flip; a new C-contiguous array (..., h, w)."""
    if (g.height, g.width) == (g.out_height, g.out_width):
        return _crop_flip(array, g.top, g.left, g.height, g.width, g.flip)
    out = _resize(_crop_flip(array, g.top, g.left, g.height, g.width, False), g.out_height, g.out_width, nearest)
    return np.ascontiguousarray(out[..., ::-1]) if g.flip else out


def _crop_flip(array: np.ndarray, top: int, left: int, h: int, w: int, flip: bool) -> np.ndarray:
    """array[..., top:top+h, left:left+w], zeros where the box sticks out, optionally mirrored; one copy."""
    height, width = array.shape[-2:]
    y0, y1 = max(top, 0), min(top + h, height)
    x0, x1 = max(left, 0), min(left + w, width)
    inside = y0 == top and x0 == left and y1 == top + h and x1 == left + w
    out = (np.empty if inside else np.zeros)(array.shape[:-2] + (h, w), dtype=array.dtype)
    if y0 < y1 and x0 < x1:
        source = array[..., y0:y1, x0:x1]
        # Mirroring the whole box sends source column x to output column (left + w - 1 - x).
        c0, c1 = (left + w - x1, left + w - x0) if flip else (x0 - left, x1 - left)
        out[..., y0 - top:y1 - top, c0:c1] = source[..., ::-1] if flip else source
    return out


def _resize(array: np.ndarray, h: int, w: int, nearest: bool) -> np.ndarray:
    """Resize the last two axes to (h, w): nearest, or bilinear (area averaging when shrinking, to avoid aliasing)."""
    if nearest:
        mode = cv2.INTER_NEAREST
    elif h < array.shape[-2] or w < array.shape[-1]:
        mode = cv2.INTER_AREA
    else:
        mode = cv2.INTER_LINEAR
    if array.ndim == 2:
        return cv2.resize(array, (w, h), interpolation=mode)
    planes = array.reshape(-1, *array.shape[-2:])  # (C', H, W); cv2 works on one 2-D plane at a time
    out = np.empty((planes.shape[0], h, w), dtype=array.dtype)
    for c, plane in enumerate(planes):
        out[c] = cv2.resize(plane, (w, h), interpolation=mode)
    return out.reshape(array.shape[:-2] + (h, w))
