"""What a raw-data reader hands to the HDF5 writer.

A reader (cifar, stl10, imagefolder, rgbd, nyu) returns a `Source`: for each split, the items
(cheap handles: paths, raw bytes, row numbers) and a `decode(item) -> record` function. The
writer runs `decode` in a thread pool (`--workers`; OpenCV and h5py release the GIL), derives
the requested modalities, resizes, computes the stats and writes the file.

A record is a dict:
    "rgb":          (H, W, 3) uint8, RGB order
    "depth":        (H, W) float32 metres, 0 = missing          (RGB-D sources)
    "hha":          (H, W, 3) uint8                              (when the source has it)
    "segmentation": (H, W) int16, 0 = unlabeled pixel            (when the source has it)
    "label":        int, -1 = no label
`decode` returns None for an unreadable item (the writer counts it, warns, and fails under
--strict); it raises DataError for problems that must stop the run (e.g. RGB/depth size mismatch).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional


@dataclass
class SplitSource:
    """One split of a raw source: items and how to decode each into a record."""

    name: str  # "train", "test", "unlabeled", ...
    items: Iterable[Any]
    decode: Callable[[Any], Optional[dict]]
    count: int  # number of items (for the progress bar and preallocation)
    # The item's encoded file bytes, for sources of image files (`prepare --encoding` stores JPEGs unchanged);
    # the items of such a split carry their label as `item.label`. None: decode is the only way in.
    read: Optional[Callable[[Any], Any]] = None


@dataclass
class Source:
    """A raw dataset ready to be written: its splits, class names and what its records carry."""

    name: str  # "cifar10", "imagefolder", "rgbd", ...
    splits: list[SplitSource]
    class_names: list[str]
    raw_modalities: set[str]  # keys records carry besides "label": {"rgb"}, {"rgb", "depth", ...}
    provenance: dict = field(default_factory=dict)  # what the reader wants recorded (paths, split map, ...)
