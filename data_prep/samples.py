"""scikit-image's bundled sample photographs as a small labelled dataset: one class per photograph.

The quickstart needs real images that are on every machine the package installs on, with no
download: scikit-image ships a handful of colour photographs inside its wheel. Each photograph
becomes one class; its samples are `crop` x `crop` crops of it, resized first so that its
shorter side is `short_side` (a crop then shows a part of the scene, not a few pixels of texture).

Train and test never share a pixel. Each resized photograph is cut into a grid of `cell` x `cell`
cells; cell (row, col) belongs to the test split when (row + col) % 4 == 1 (diagonal stripes
spread over the whole picture, about a quarter of the cells), and every crop lies inside one cell
of its split. Crops are drawn round-robin over the cells of their split at seeded random offsets;
a candidate whose grey-level standard deviation is below FLAT_STD (clear sky, a black border) is
redrawn, up to FLAT_TRIES times, so samples show some structure.

    from data_prep.samples import read_sample_photos
    from data_prep.writer import write_prepared
    write_prepared(read_sample_photos(), "samples.h5", ["rgb", "L", "ab"])
"""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from crossmodal.errors import ConfigError, DataError
from data_prep.source import Source, SplitSource

# class name -> scikit-image loader; all are colour photographs bundled in the scikit-image wheel
# (checked with the network blocked). The motorcycle is the left view of the Middlebury stereo pair.
PHOTOS = {
    "astronaut": "astronaut",
    "cat": "chelsea",
    "coffee": "coffee",
    "rocket": "rocket",
    "motorcycle": "stereo_motorcycle",
    "immunohistochemistry": "immunohistochemistry",
    "retina": "retina",
    "hubble_deep_field": "hubble_deep_field",
}
TEST_CELL_PERIOD, TEST_CELL_PHASE = 4, 1  # cell (row, col) is a test cell when (row + col) % 4 == 1
FLAT_STD = 4.0  # grey levels (0..255): crops flatter than this are redrawn
FLAT_TRIES = 20  # redraws per crop before a flat one is kept anyway


class Crop(NamedTuple):
    """One sample: a `size` x `size` crop at (top, left) of the resized photograph `photo`."""

    photo: str
    label: int
    top: int
    left: int
    size: int

    def __str__(self) -> str:  # how the writer names an item in messages
        return f"{self.photo}[{self.top}:{self.top + self.size}, {self.left}:{self.left + self.size}]"


def load_photo(name: str) -> np.ndarray:
    """The bundled photograph of class `name` as (H, W, 3) uint8 RGB; DataError if this install lacks it."""
    try:
        import skimage.data
    except ImportError:
        raise ConfigError("the sample photographs come with scikit-image; install it: pip install 'scikit-image>=0.22'")
    loader = getattr(skimage.data, PHOTOS[name], None)
    try:
        image = loader()
    except Exception as e:  # a missing bundled file makes scikit-image try (and fail) a download
        raise DataError(f"scikit-image sample photograph {PHOTOS[name]!r} is not available offline ({e}); "
                        f"reinstall scikit-image>=0.22 from its wheel") from None
    if PHOTOS[name] == "stereo_motorcycle":
        image = image[0]  # (left, right, disparity) -> left view
    return np.ascontiguousarray(image[..., :3])


def _skimage_version() -> str:
    import skimage

    return skimage.__version__


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """Resize (H, W, 3) so its shorter side is `short_side` (area-averaged when shrinking)."""
    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))  # cv2 wants (W, H)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def split_cells(height: int, width: int, cell: int) -> dict[str, list[tuple[int, int]]]:
    """{"train": [(top, left), ...], "test": [...]}: the whole cells of an image, assigned by TEST_CELL_PHASE."""
    cells = {"train": [], "test": []}
    for row in range(height // cell):
        for col in range(width // cell):
            split = "test" if (row + col) % TEST_CELL_PERIOD == TEST_CELL_PHASE else "train"
            cells[split].append((row * cell, col * cell))
    return cells


def draw_crops(photo: str, label: int, image: np.ndarray, cells: list[tuple[int, int]], cell: int, crop: int,
               count: int, rng: np.random.Generator) -> list[Crop]:
    """`count` crops inside `cells`, round-robin over the cells, redrawing flat ones (see module doc)."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    crops = []
    for i in range(count):
        cell_top, cell_left = cells[i % len(cells)]
        for _ in range(FLAT_TRIES):
            top, left = (int(v) for v in rng.integers(0, cell - crop + 1, size=2))
            top, left = cell_top + top, cell_left + left
            if grey[top:top + crop, left:left + crop].std() >= FLAT_STD:
                break
        crops.append(Crop(photo, label, top, left, crop))
    return crops


def read_sample_photos(train_per_class: int = 160, test_per_class: int = 40, crop: int = 32, short_side: int = 192,
                       cell: int = 48, seed: int = 0) -> Source:
    """A `Source` with splits train and test: crops of scikit-image's bundled photographs, one class per photo."""
    if not crop <= cell <= short_side:
        raise ConfigError(f"sample photos: need crop <= cell <= short_side, got crop={crop}, cell={cell}, "
                          f"short_side={short_side}")
    if train_per_class < 1 or test_per_class < 1:
        raise ConfigError(f"sample photos: train_per_class={train_per_class} and test_per_class={test_per_class} "
                          "must be at least 1")
    rng = np.random.default_rng(seed)
    images, items = {}, {"train": [], "test": []}
    for label, name in enumerate(PHOTOS):
        image = resize_short_side(load_photo(name), short_side)
        images[name] = image
        cells = split_cells(*image.shape[:2], cell)
        if not cells["test"]:
            raise ConfigError(f"sample photos: cell={cell} leaves {name!r} ({image.shape[1]}x{image.shape[0]}) no test "
                              f"cell; use a cell at most short_side / 2")
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            items[split] += draw_crops(name, label, image, cells[split], cell, crop, count, rng)

    def decode(item: Crop) -> dict:
        pixels = images[item.photo][item.top:item.top + item.size, item.left:item.left + item.size]
        return {"rgb": np.ascontiguousarray(pixels), "label": item.label}

    splits = [SplitSource(split, crops, decode, len(crops)) for split, crops in items.items()]
    provenance = {
        "reader": "data_prep/samples.py", "src": "scikit-image sample photographs (skimage.data)",
        "photos": dict(PHOTOS), "scikit_image_version": _skimage_version(),
        "crop": crop, "short_side": short_side, "cell": cell, "seed": seed,
        "test_cells": f"(row + col) % {TEST_CELL_PERIOD} == {TEST_CELL_PHASE}",
        "per_class": {"train": train_per_class, "test": test_per_class},
    }
    return Source("sample_photos", splits, list(PHOTOS), {"rgb"}, provenance)
