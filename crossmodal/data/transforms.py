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

from crossmodal.data.codec import decode, reduction_for
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
    """Random crop with zero padding (CIFAR) or random resized crop (STL/ImageNet), plus horizontal flip;
    or the deterministic evaluation crop.

    crop: output side of a random crop from the image padded by `padding` zeros on each side.
    random_resized_crop: output side of a crop covering `scale` of the area with aspect ratio in
        `ratio` (log-uniform), resized; 10 tries, then the largest centred box within `ratio`.
    center_crop: output side of the evaluation crop: the shorter side resized to
        floor(center_crop / crop_fraction) (256 for 224 at 0.875), then the centre center_crop
        square, done as one crop-and-resize of the equivalent box of the image (_center_box).
    hflip: flip left-right with probability 1/2.
    """

    crop: int | None = None
    padding: int = 0
    hflip: bool = False
    random_resized_crop: int | None = None
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    center_crop: int | None = None
    crop_fraction: float = 0.875

    @classmethod
    def from_config(cls, augment) -> "PairedAugment":
        """The augmentation a config's `data.augment` section (crossmodal.config.AugmentConfig) describes."""
        return cls(crop=augment.crop, padding=augment.padding, hflip=augment.hflip,
                   random_resized_crop=augment.random_resized_crop, scale=tuple(augment.scale),
                   ratio=tuple(augment.ratio), center_crop=augment.center_crop, crop_fraction=augment.crop_fraction)

    @classmethod
    def eval_from_config(cls, augment, key: str = "data.eval_augment") -> "PairedAugment | None":
        """The test split's transform from a config section: None, or a center_crop (nothing random allowed)."""
        random = [name for name, value in (("crop", augment.crop), ("padding", augment.padding),
                                           ("hflip", augment.hflip),
                                           ("random_resized_crop", augment.random_resized_crop)) if value]
        if random:
            raise ConfigError(f"{key}: only center_crop and crop_fraction apply to evaluation (it is not random), "
                              f"got {', '.join(random)}")
        if augment.center_crop is None:
            return None
        return cls(center_crop=augment.center_crop, crop_fraction=augment.crop_fraction)

    @property
    def output_size(self) -> int | None:
        """The side of every output image, or None when outputs keep the input size."""
        return self.crop or self.random_resized_crop or self.center_crop

    def __post_init__(self):
        # YAML gives lists; keep tuples so the object stays hashable and prints the same either way.
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "ratio", tuple(float(v) for v in self.ratio))
        chosen = [k for k in ("crop", "random_resized_crop", "center_crop") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ConfigError(f"augment: set one of crop, random_resized_crop and center_crop, not {' and '.join(chosen)}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ConfigError(f"augment: crop_fraction must be in (0, 1], got {self.crop_fraction}")
        for key in ("crop", "random_resized_crop", "center_crop"):
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
        elif self.center_crop is not None:
            size = self.center_crop
            box = (*self._center_box(height, width), size, size)
        else:
            box = (0, 0, height, width, height, width)
        flip = self.hflip and rng.uniform() < 0.5
        return Geometry(*box, flip)

    def _center_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, h, w) of the box that resize-shorter-side-then-centre-crop keeps, in image pixels.

        Follows torchvision's Resize(floor(center_crop / crop_fraction)) + CenterCrop(center_crop)
        (the longer side truncated, the crop offset rounded in resized pixels), rounded to whole
        image pixels: one crop-and-resize instead of two resizes."""
        size, resized_short = self.center_crop, math.floor(self.center_crop / self.crop_fraction)
        if height <= width:
            resized_h, resized_w = resized_short, int(resized_short * width / height)
        else:
            resized_h, resized_w = int(resized_short * height / width), resized_short
        sy, sx = height / resized_h, width / resized_w
        h, w = min(height, max(1, round(size * sy))), min(width, max(1, round(size * sx)))
        top = min(round(int(round((resized_h - size) / 2)) * sy), height - h)
        left = min(round(int(round((resized_w - size) / 2)) * sx), width - w)
        return top, left, h, w

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


def decode_geometry(data, height: int, width: int, g: Geometry) -> np.ndarray | None:
    """Decode an encoded image of height x width (its stored size) and apply `g`: (out_h, out_w, 3) uint8 RGB.

    A JPEG whose crop box shrinks by 2x or more is decoded at 1/2, 1/4 or 1/8 of its size
    (libjpeg DCT scaling, crossmodal.data.codec), keeping at least the output's pixels in the box,
    and the box is scaled to the reduced image (rounded to whole pixels). Resizing is area
    averaging when shrinking, bilinear when enlarging, as for arrays. None when undecodable.
    """
    inside = g.top >= 0 and g.left >= 0 and g.top + g.height <= height and g.left + g.width <= width
    reduce = reduction_for(g.height, g.width, g.out_height, g.out_width) if inside else 1
    image = decode(data, reduce)
    if image is None:
        return None
    if not inside:  # a padded crop: the generic path on a (3, H, W) view
        out = apply_geometry(image.transpose(2, 0, 1), g)
        return np.ascontiguousarray(out.transpose(1, 2, 0))
    top, left, h, w = g.top, g.left, g.height, g.width
    got_h, got_w = image.shape[:2]
    if (got_h, got_w) != (height, width):  # reduced (or, defensively, not the size recorded): scale the box
        sy, sx = got_h / height, got_w / width
        bottom, right = min(got_h, round((top + h) * sy)), min(got_w, round((left + w) * sx))
        top, left = min(round(top * sy), bottom - 1), min(round(left * sx), right - 1)
        h, w = bottom - top, right - left
    box = image[top:top + h, left:left + w]
    if (h, w) != (g.out_height, g.out_width):
        shrink = g.out_height < h or g.out_width < w
        box = cv2.resize(box, (g.out_width, g.out_height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if g.flip:
        return cv2.flip(box, 1)
    return np.ascontiguousarray(box)


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
