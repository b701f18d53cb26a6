"""Modalities: channel counts, storage dtypes, and the float units models see.

Every modality is stored N-first, channels-first (N, C, H, W) in the prepared HDF5 file.
`to_float` maps stored values to the float units in which the channel mean/std are computed
and in which models receive them (before normalisation):

| name  | C | stored as | float units                                   |
|-------|---|-----------|-----------------------------------------------|
| rgb   | 3 | uint8     | [0, 1]  (value / 255)                         |
| L     | 1 | float16   | CIE L*, [0, 100]                              |
| ab    | 2 | float16   | CIE a*, b*, about [-128, 127]                 |
| depth | 1 | float32   | metres, 0 = missing (see `depth_valid`)       |
| hha   | 3 | uint8     | [0, 1]  (value / 255)                         |

L and ab come from sRGB (D65) through CIE Lab, computed with OpenCV on float32 input in [0, 1]
(`cv2.COLOR_RGB2Lab`), which agrees with `kornia.color.rgb_to_lab` (tested).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Modality:
    """What one modality is: its channels, how it is stored, and how stored values become floats."""

    name: str
    channels: int
    dtype: str  # numpy dtype name of the stored array
    scale: float  # float value = stored value * scale


MODALITIES: dict[str, Modality] = {
    "rgb": Modality("rgb", 3, "uint8", 1.0 / 255.0),
    "L": Modality("L", 1, "float16", 1.0),
    "ab": Modality("ab", 2, "float16", 1.0),
    "depth": Modality("depth", 1, "float32", 1.0),
    "hha": Modality("hha", 3, "uint8", 1.0 / 255.0),
}


def get_modality(name: str) -> Modality:
    """Return the modality called `name`, or raise a one-line error listing the known ones."""
    from crossmodal.errors import CrossmodalError

    try:
        return MODALITIES[name]
    except KeyError:
        raise CrossmodalError(
            f"unknown modality {name!r}; known: {', '.join(MODALITIES)}"
        ) from None


def in_chans(name: str) -> int:
    """Number of input channels a model needs for modality `name`."""
    return get_modality(name).channels


def to_float(name: str, array: np.ndarray) -> np.ndarray:
    """Stored values of modality `name` -> float32 in the modality's float units."""
    m = get_modality(name)
    out = array.astype(np.float32)
    if m.scale != 1.0:
        out *= np.float32(m.scale)
    return out
