"""Encoded storage (`prepare --encoding jpeg|png`): each image kept as its encoded bytes, decoded by the loader.

Per item, in a worker process (a fork-started pool: the source's items, archive bytes included,
are inherited, not pickled; blocks come back in item order, so the file does not depend on the
number of workers):

    JPEG source, no resize needed      -> the source bytes, unchanged (unless an EXIF orientation
                                          turns it: re-encoded upright, as every decoder then agrees)
    JPEG source, no resize, --reencode -> decoded whole, re-encoded at --quality (to make a file
                                          smaller); EXIF-rotated sources as above
    JPEG source, longer side > --max-side
                                       -> decoded at a reduced size by libjpeg (DCT scaling, the
                                          largest 1/2, 1/4, 1/8 keeping the longer side >= N),
                                          resized (area) to longer side N, re-encoded
    any other case (PNG source, --size, --encoding png, ...)
                                       -> decoded as `raw` decodes it, fitted, encoded (PNG is
                                          lossless: its pixels are the raw file's exactly)

Every JPEG written here (re-encoded or encoded) has the chroma sampling of --subsampling: 4:2:0
(OpenCV's default: Cb and Cr at half the width and height, the default) or 4:4:4 (full colour
resolution: larger, and closer to the source where colour is what the file is for).

Every image is decoded once here by the loader's decoder (crossmodal.data.codec, OpenCV, the one
raw preparation uses): unreadable items are skipped and counted (or stop the run under
--strict) exactly as in raw preparation, and a file never holds bytes training would fail on.

Stats: per-channel mean/std of rgb and of the derived L/ab over every train image decoded at a
reduced size (DCT scaling for JPEG, area resizing otherwise: the largest factor of 2, 4 or 8
that keeps the shorter side at least STATS_MIN_SIDE pixels), which costs a fraction of a full
decode. Means match the full-resolution stats closely; stds are slightly lower (fine texture
is averaged away): tests/test_encoded.py bounds both on real Imagenette JPEGs.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import cv2
import numpy as np

from crossmodal.color import rgb_to_lab
from crossmodal.data.codec import decode, is_jpeg, jpeg_orientation, jpeg_size, reduction_for
from crossmodal.errors import DataError
from crossmodal.modalities import MODALITIES
from data_prep.pixels import ChannelStats, fit_record, to_float16
from data_prep.source import SplitSource

JPEG_QUALITY = 90  # when an image is (re-)encoded as JPEG
# --subsampling -> OpenCV's sampling-factor value (Y's horizontal and vertical factors, then Cb's and Cr's)
JPEG_SUBSAMPLING = {"420": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, "444": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444}
DEFAULT_SUBSAMPLING = "420"  # OpenCV's default, what prepare wrote before the option existed
PNG_COMPRESSION = 1  # zlib level: fast; a higher level saves a few percent
STATS_MIN_SIDE = 48
BLOCK_ITEMS = 64  # items per worker task


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def encode_image(rgb: np.ndarray, encoding: str, quality: int = JPEG_QUALITY,
                 subsampling: str = DEFAULT_SUBSAMPLING) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> encoded bytes as a uint8 array (JPEG at `quality` with `subsampling` "420" or
    "444" chroma, or PNG)."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if encoding == "png":
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    else:
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality,
                                              cv2.IMWRITE_JPEG_SAMPLING_FACTOR, JPEG_SUBSAMPLING[subsampling]])
    if not ok:
        raise DataError(f"{encoding} encoding of a {rgb.shape[1]}x{rgb.shape[0]} image failed")
    return data.ravel()


def shrink_to_side(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Resize (area) so the longer side is max_side, keeping the aspect ratio; unchanged when already within it."""
    h, w = rgb.shape[:2]
    if max(h, w) <= max_side:
        return rgb
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2 wants (W, H)
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def stats_reduction(height: int, width: int) -> int:
    """The stats' reduction factor for an image of height x width (see the module doc)."""
    need = min(STATS_MIN_SIDE, height, width)
    return reduction_for(height, width, need, need)


def stats_image(rgb: np.ndarray) -> np.ndarray:
    """The reduced image the stats are taken over, for pixels already decoded."""
    h, w = rgb.shape[:2]
    factor = stats_reduction(h, w)
    if factor == 1:
        return rgb
    return cv2.resize(rgb, (_ceil_div(w, factor), _ceil_div(h, factor)), interpolation=cv2.INTER_AREA)


class EncodedBlock:
    """One block of encoded items: bytes, sizes, labels, stats partials, skipped names, how many re-encoded."""

    def __init__(self, n_items: int):
        self.n_items = n_items
        self.data: list[np.ndarray] = []
        self.sizes: list[tuple[int, int]] = []
        self.labels: list[int] = []
        self.stats: dict = {}
        self.skipped: list[str] = []
        self.reencoded = 0

    @property
    def rows(self) -> int:
        return len(self.labels)


class EncodeOptions:
    """What every worker needs to know: codec, resizing, and which stats to keep."""

    def __init__(self, encoding: str, max_side: int | None, size: int | None, quality: int,
                 stat_modalities: list[str], reencode: bool = False, subsampling: str = DEFAULT_SUBSAMPLING):
        self.encoding, self.max_side, self.size, self.quality = encoding, max_side, size, quality
        self.stat_modalities = stat_modalities
        self.reencode = reencode  # JPEG sources too are re-encoded at `quality` (else kept byte for byte)
        self.subsampling = subsampling  # chroma sampling of every JPEG encoded here: "420" or "444"

    def encode(self, rgb: np.ndarray) -> np.ndarray:
        """`rgb` encoded as this file stores it (the encoding, quality and chroma sampling)."""
        return encode_image(rgb, self.encoding, self.quality, self.subsampling)


def _passthrough(data, options: EncodeOptions) -> tuple | str | None:
    """(bytes, (H, W), stats image, re-encoded?) for a JPEG source stored unchanged or shrunk from a reduced
    decode; "unreadable"; or None when the item must go the decode-fit-encode way (or is no JPEG)."""
    if options.encoding != "jpeg" or options.size is not None or data is None or not is_jpeg(data):
        return None
    header = jpeg_size(data)
    if header is None or jpeg_orientation(data) != 1:
        # no frame header: left to the raw decoder to judge; EXIF-rotated: re-encoded upright (as OpenCV turns
        # it), so that every decoder, nvJPEG included, reads the stored bytes the same way
        return None
    h, w = header
    fits = options.max_side is None or max(h, w) <= options.max_side  # no shrinking needed
    if fits and options.reencode:
        decoded = decode(data)
        if decoded is None:
            return "unreadable"
        encoded = options.encode(decoded)
        # stats from the stored bytes, decoded as kept bytes are (below), so they describe what the loader reads
        reduced = decode(encoded, stats_reduction(h, w))
        return encoded, (h, w), reduced, True
    if fits:
        reduced = decode(data, stats_reduction(h, w))  # decodes the whole entropy-coded stream: validates it
        if reduced is None:
            return "unreadable"
        return np.frombuffer(bytes(data), np.uint8), (h, w), reduced, False
    long_side = max(h, w)
    k = max(f for f in (1, 2, 4, 8) if long_side / f >= options.max_side)
    decoded = decode(data, k)
    if decoded is None:
        return "unreadable"
    rgb = np.ascontiguousarray(shrink_to_side(decoded, options.max_side))
    return options.encode(rgb), rgb.shape[:2], stats_image(rgb), True


def encode_item(item, split: SplitSource, options: EncodeOptions):
    """(bytes, (H, W), stats image, re-encoded?, label) for one item, or None when it is unreadable."""
    data = split.read(item) if split.read is not None else None
    fast = _passthrough(data, options)
    if fast == "unreadable":
        return None
    if fast is not None:
        return (*fast, int(item.label))  # a split with `read` has items carrying their label

    try:
        record = split.decode(item)
    except OSError as e:
        raise DataError(f"{item}: could not be read ({e})") from None
    if record is None:
        return None
    if options.size:
        record = fit_record(record, options.size)
    rgb = record["rgb"]
    if options.max_side is not None:
        rgb = shrink_to_side(rgb, options.max_side)
    rgb = np.ascontiguousarray(rgb)
    encoded = options.encode(rgb)
    return encoded, rgb.shape[:2], stats_image(rgb), True, int(record["label"])


def encode_block(split: SplitSource, items: list, options: EncodeOptions) -> EncodedBlock:
    """Encode a block of items and accumulate the stats of its stats images (runs in a worker)."""
    block = EncodedBlock(len(items))
    small = []
    for item in items:
        result = encode_item(item, split, options)
        if result is None:
            block.skipped.append(str(item))
            continue
        encoded, hw, image, reencoded, label = result
        block.data.append(encoded)
        block.sizes.append((int(hw[0]), int(hw[1])))
        block.labels.append(label)
        block.reencoded += bool(reencoded)
        small.append(image)
    if options.stat_modalities and small:
        block.stats = _block_stats(small, options.stat_modalities)
    return block


def _block_stats(images: list[np.ndarray], modalities: list[str]) -> dict:
    """Stats partials of a block's stats images, all pixels in one row (the stats ignore pixel order).

    One histogram call per channel and block, not per image: a 65,536-bin float16 histogram costs
    about as much to set up as to fill for a small image."""
    pixels = np.concatenate([image.reshape(-1, 3) for image in images])[None]  # (1, P, 3) uint8 RGB
    accumulators = {m: ChannelStats(MODALITIES[m].dtype, MODALITIES[m].channels) for m in modalities}
    if "rgb" in accumulators:
        accumulators["rgb"].update(np.ascontiguousarray(pixels.transpose(2, 0, 1))[None])  # (1, 3, 1, P)
    if "L" in accumulators or "ab" in accumulators:
        planes = cv2.split(rgb_to_lab(pixels))  # 3 x (1, P) float32
        if "L" in accumulators:
            accumulators["L"].update(to_float16(planes[0])[None, None])
        if "ab" in accumulators:
            accumulators["ab"].update(np.stack([to_float16(p) for p in planes[1:]])[None])
    return accumulators


# ----------------------------------------------------------------------------- the worker pool

_SPLITS: dict[str, tuple[SplitSource, list]] = {}  # set before the fork; workers read items from here


def _encode_task(split_name: str, start: int, stop: int, options: EncodeOptions) -> EncodedBlock:
    split, items = _SPLITS[split_name]
    return encode_block(split, items[start:stop], options)


def _worker_init(parent: int) -> None:
    """Workers leave Ctrl-C and SIGTERM to the parent, which stops them (they inherit its handlers at the fork),
    and end by themselves when the parent is gone (SIGKILL leaves it no chance to stop them)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    cv2.setNumThreads(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


class EncodePool:
    """`workers` forked processes encoding blocks of every split (workers == 1: in this process)."""

    def __init__(self, splits: list[SplitSource], workers: int):
        _SPLITS.clear()
        for split in splits:
            _SPLITS[split.name] = (split, list(split.items))
        self.pool = None
        if workers > 1:
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                            initializer=_worker_init, initargs=(os.getpid(),))
        self.workers = workers

    def blocks(self, split: SplitSource, options: EncodeOptions, where: str):
        """Encoded blocks of `split` in item order, up to 2 per worker in flight."""
        n = len(_SPLITS[split.name][1])
        starts = iter(range(0, n, BLOCK_ITEMS))
        if self.pool is None:
            for start in starts:
                yield _encode_task(split.name, start, min(start + BLOCK_ITEMS, n), options)
            return
        pending = deque()
        while True:
            while len(pending) < 2 * self.workers:
                start = next(starts, None)
                if start is None:
                    break
                pending.append(self.pool.submit(_encode_task, split.name, start, min(start + BLOCK_ITEMS, n), options))
            if not pending:
                return
            try:
                yield pending.popleft().result()
            except BrokenProcessPool as e:
                raise DataError(f"{where}: an encoding worker process died ({e}); rerun with --workers 1 to see "
                                f"why (out of memory?)") from None

    def close(self) -> None:
        """Stop the workers at once (nothing they hold is needed after an error) and forget the items."""
        if self.pool is not None:
            processes = list((self.pool._processes or {}).values())  # noqa: SLF001 (terminate on error, not join)
            self.pool.shutdown(wait=False, cancel_futures=True)  # which forgets its processes: listed before
            for process in processes:
                if process.is_alive():
                    process.terminate()
            for process in processes:
                process.join(timeout=10)
                if process.is_alive():  # a worker that outlives SIGTERM would keep the interpreter from exiting
                    process.kill()
                    process.join(timeout=10)
            self.pool = None
        _SPLITS.clear()
