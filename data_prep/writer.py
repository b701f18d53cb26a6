"""Write a raw `Source` into one prepared HDF5 file (the back end of `crossmodal prepare`).

The work is a pipeline over blocks of items (see BLOCK_PIXELS). Worker threads decode a block
(`SplitSource.decode`), resize it (`--size`), derive L/ab from rgb in one OpenCV call, and
histogram it for the stats; the main thread writes each block with one h5py slice assignment
per dataset while the workers already decode the next blocks. OpenCV and HDF5 both release
the GIL, so two cores are both busy.

Storage choices (measured on CIFAR-10 rgb+L+ab; benchmarks/results/prepare_throughput.md):
- no compression: lzf made writing ~4x slower for a 6 % smaller file, gzip level 1 ~10x slower
  for 18 %, and random single-sample reads ~2x and ~4x slower: natural images in uint8/float16
  barely compress.
- chunks (1, C, H, W), so a training step reads exactly the samples it needs. HDF5 spends
  ~20 us of CPU per chunk written whatever the index type or cache (measured), which makes it
  the largest single cost for 32x32 images; it runs on the main thread, beside the decoding.

Stats are exact and order-independent: uint8 and float16 values are counted in per-channel
histograms (256 or 65,536 bins), float32 depth uses Chan's mean/M2 merge in float64.
"""
from __future__ import annotations

import io
import json
import logging
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path

import cv2
import h5py
import numpy as np
from tqdm import tqdm

from crossmodal import __version__
from crossmodal.color import rgb_to_lab
from crossmodal.data.schema import SCHEMA_VERSION, validate
from crossmodal.errors import ConfigError, DataError
from crossmodal.modalities import MODALITIES, get_modality
from crossmodal.tempfiles import check_free_space, remove_stale_temporaries, temp_path
from data_prep.encoded import (DEFAULT_SUBSAMPLING, JPEG_QUALITY, JPEG_SUBSAMPLING, STATS_MIN_SIDE, EncodeOptions,
                               EncodePool)
from data_prep.pixels import ChannelStats, fit_record, to_float16
from data_prep.source import Source, SplitSource

log = logging.getLogger(__name__)

# Items per worker task: enough to amortise per-call overhead, few enough to pipeline and to bound
# memory (a block's float32 Lab is 12 bytes a pixel). The first blocks are small; later ones hold
# about BLOCK_PIXELS pixels: 256 CIFAR or STL-10 images, 13 NYU frames at 640x480.
FIRST_BLOCK_ITEMS, MAX_BLOCK_ITEMS, BLOCK_PIXELS = 16, 256, 1 << 22
WARN_SKIPPED = 20  # unreadable images warned about one by one; the rest are summarised
LIST_SKIPPED = 1000  # unreadable file names kept in provenance per split
DERIVED_FROM = {"L": "rgb", "ab": "rgb"}  # modalities computed from another raw one
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)


def available_modalities(raw: set[str]) -> list[str]:
    """Modalities that can be written from records carrying `raw`, in crossmodal.modalities order."""
    return [m for m in MODALITIES if m in raw or DERIVED_FROM.get(m) in raw]


class Block:
    """One converted block: arrays ready to write, labels, stats partials, and the items skipped."""

    def __init__(self, n_items: int):
        self.n_items = n_items
        self.pixels_per_item = 0  # H * W after fitting, 0 when nothing was readable
        self.arrays: dict[str, np.ndarray] = {}  # name -> (B, C, H, W), plus segmentation (B, H, W)
        self.labels = np.zeros(0, np.int64)
        self.stats: dict[str, ChannelStats] = {}
        self.skipped: list[str] = []

    @property
    def rows(self) -> int:
        """Number of readable items, i.e. rows to write."""
        return len(self.labels)


def _check_same_size(split: str, pairs: list) -> tuple[int, int]:
    """(H, W) shared by every entry of every record; DataError naming the first item that differs."""
    first_item, first = pairs[0]
    h, w = next(v.shape[:2] for k, v in first.items() if k != "label")
    for item, record in pairs:
        for key, value in record.items():
            if key != "label" and value.shape[:2] != (h, w):
                raise DataError(
                    f"{item}: {key} is {value.shape[1]}x{value.shape[0]} but {first_item} in split {split!r} is "
                    f"{w}x{h}; pass --size N to resize every image to NxN")
    return h, w


def _convert_block(items: list, split: SplitSource, modalities: list[str], size: int | None, with_stats: bool) -> Block:
    """Decode, fit and convert one block of items (runs in a worker thread)."""
    block = Block(len(items))
    pairs = []
    for item in items:
        try:
            record = split.decode(item)
        except OSError as e:  # a reader's I/O failure, not to be mistaken for a failing write
            raise DataError(f"{item}: could not be read ({e})") from None
        if record is None:
            block.skipped.append(str(item))
            continue
        pairs.append((item, fit_record(record, size) if size else record))
    if not pairs:
        return block
    h, w = _check_same_size(split.name, pairs)
    block.pixels_per_item = h * w
    records = [r for _, r in pairs]
    arrays = block.arrays
    if "rgb" in records[0]:
        rgb = np.stack([r["rgb"] for r in records])  # (B, H, W, 3) uint8
        if "rgb" in modalities:
            arrays["rgb"] = np.ascontiguousarray(rgb.transpose(0, 3, 1, 2))  # (B, 3, H, W)
        if "L" in modalities or "ab" in modalities:
            b, h, w = rgb.shape[:3]
            planes = cv2.split(rgb_to_lab(rgb).reshape(-1, w, 3))  # L, a, b: 3 x (B*H, W) float32
            if "L" in modalities:
                arrays["L"] = to_float16(planes[0]).reshape(b, 1, h, w)
            if "ab" in modalities:
                arrays["ab"] = np.stack([to_float16(p).reshape(b, h, w) for p in planes[1:]], axis=1)  # (B, 2, H, W)
    if "hha" in modalities:
        arrays["hha"] = np.ascontiguousarray(np.stack([r["hha"] for r in records]).transpose(0, 3, 1, 2))
    if "depth" in modalities:
        depth = np.stack([r["depth"] for r in records])[:, None].astype(np.float32)  # (B, 1, H, W)
        depth[~np.isfinite(depth)] = 0
        arrays["depth"], arrays["depth_valid"] = depth, (depth > 0).astype(np.uint8)
    if "segmentation" in records[0]:
        arrays["segmentation"] = np.stack([r["segmentation"] for r in records]).astype(np.int16)  # (B, H, W)
    block.labels = np.array([r["label"] for r in records], np.int64)
    if with_stats:
        for name in modalities:
            m = MODALITIES[name]
            block.stats[name] = ChannelStats(m.dtype, m.channels)
            block.stats[name].update(arrays[name], arrays.get("depth_valid") if name == "depth" else None)
    return block


class SplitWriter:
    """Datasets of one split, created from the first block's image size and trimmed to the rows written."""

    def __init__(self, group: h5py.Group, first: Block, capacity: int):
        self.group, self.capacity, self.rows = group, capacity, 0
        self.datasets = {}
        for name, array in first.arrays.items():
            shape = (capacity,) + array.shape[1:]
            self.datasets[name] = group.create_dataset(
                name, shape=shape, maxshape=shape, dtype=array.dtype, chunks=(1,) + array.shape[1:])
        self.labels = np.full(capacity, -1, np.int64)

    def write(self, block: Block, where: str) -> None:
        """Append a block's rows with one slice assignment per dataset."""
        start, stop = self.rows, self.rows + block.rows
        if stop > self.capacity:
            raise RuntimeError(f"split {self.group.name}: reader announced {self.capacity} items but gave more")
        for name, array in block.arrays.items():
            dataset = self.datasets[name]
            if array.shape[1:] != dataset.shape[1:]:
                raise DataError(f"{where}: {name} in split {self.group.name[1:]!r} changes size from "
                                f"{dataset.shape[1:]} to {array.shape[1:]} at row {start}; pass --size N to resize "
                                f"every image")
            dataset[start:stop] = array
        self.labels[start:stop] = block.labels
        self.rows = stop

    def finish(self) -> None:
        """Trim every dataset to the rows written (skipped images leave the tail empty) and store labels."""
        for dataset in self.datasets.values():
            if dataset.shape[0] != self.rows:
                dataset.resize(self.rows, axis=0)
        self.group.create_dataset("label", data=self.labels[:self.rows])


def _blocks_in_order(split: SplitSource, pool: ThreadPoolExecutor, depth: int, convert_args: tuple):
    """Yield converted blocks in item order while up to `depth` later blocks convert in the pool."""
    items = iter(split.items)
    pending = deque()
    block_items = FIRST_BLOCK_ITEMS
    while True:
        while len(pending) < depth:
            chunk = list(islice(items, block_items))
            if not chunk:
                break
            pending.append(pool.submit(_convert_block, chunk, split, *convert_args))
        if not pending:
            return
        block = pending.popleft().result()
        if block.pixels_per_item:
            block_items = max(1, min(MAX_BLOCK_ITEMS, BLOCK_PIXELS // block.pixels_per_item))
        yield block


ENCODINGS = ("raw", "jpeg", "png")  # --encoding choices; raw = (N, C, H, W) arrays
ENCODABLE = {"rgb", "L", "ab"}  # modalities an encoded file offers (rgb stored encoded, L and ab derived)


def _check_encoding(source: Source, modalities: list[str], encoding: str, max_side: int | None,
                    quality: int, reencode: bool = False, subsampling: str | None = None) -> None:
    """ConfigError unless the encoding options fit the source and the modalities."""
    if encoding not in ENCODINGS:
        raise ConfigError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    if reencode and encoding != "jpeg":
        raise ConfigError(f"--reencode needs --encoding jpeg (it re-encodes JPEG sources at --quality), "
                          f"got --encoding {encoding}")
    if subsampling is not None and subsampling not in JPEG_SUBSAMPLING:
        raise ConfigError(f"--subsampling must be one of {', '.join(JPEG_SUBSAMPLING)}, got {subsampling!r}")
    if subsampling is not None and encoding != "jpeg":
        raise ConfigError(f"--subsampling needs --encoding jpeg (it sets the chroma sampling of the JPEGs prepare "
                          f"encodes or re-encodes), got --encoding {encoding}")
    if encoding == "raw":
        if max_side is not None:
            raise ConfigError("--max-side needs --encoding jpeg or png (raw arrays share one size: use --size)")
        return
    if source.raw_modalities != {"rgb"} or not set(modalities) <= ENCODABLE:
        raise ConfigError(f"--encoding {encoding} stores colour images only (modalities rgb, L, ab); {source.name} "
                          f"gives {', '.join(sorted(source.raw_modalities))}: use --encoding raw")
    if max_side is not None and max_side < 1:
        raise ConfigError(f"max_side must be a positive number of pixels, got {max_side}")
    if not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality must be in 1..100, got {quality}")


def _check_request(source: Source, modalities: list[str] | None, out: Path, force: bool, workers: int,
                   size: int | None) -> list[str]:
    """Validate the arguments before any work; return the modalities to write (deduplicated, in order)."""
    offered = available_modalities(source.raw_modalities)
    if modalities is None:
        modalities = offered
    modalities = list(dict.fromkeys(modalities))
    if not modalities:
        raise ConfigError("no modality requested; pass e.g. --modalities rgb,L,ab")
    for name in modalities:
        get_modality(name)  # unknown name -> one-line error listing the known ones
        if name not in offered:
            raise ConfigError(f"modality {name!r} is not available from {source.name} (it gives: {', '.join(offered)})")
    if size is not None and size < 1:
        raise ConfigError(f"size must be a positive number of pixels, got {size}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if not source.splits:
        raise DataError(f"{source.provenance.get('src', source.name)}: no split to write")
    if not out.parent.is_dir():
        raise DataError(f"{out}: output folder {out.parent} does not exist; create it first")
    if out.is_dir():
        raise DataError(f"{out} is a directory; pass a file name such as {out / 'prepared.h5'}")
    if out.exists() and not force:
        raise DataError(f"{out} already exists; pass --force to overwrite it")
    return modalities


def write_prepared(source: Source, out: str | Path, modalities: list[str] | None = None, size: int | None = None,
                   force: bool = False, workers: int = DEFAULT_WORKERS, strict: bool = False, encoding: str = "raw",
                   max_side: int | None = None, quality: int = JPEG_QUALITY, reencode: bool = False,
                   subsampling: str | None = None) -> dict:
    """Write `source` to the HDF5 file `out` (atomically: temp file + rename); return the schema summary.

    `modalities` defaults to all the source can give; `size` resizes (see `fit_record`);
    unreadable images are skipped and counted, or stop the run with `strict`. `encoding` jpeg or
    png stores rgb as encoded images (data_prep/encoded.py; `max_side` shrinks larger ones,
    `quality` is the JPEG quality of re-encoded images; `reencode` re-encodes JPEG sources too, which are
    otherwise kept byte for byte; `subsampling` "420" (None: the default) or "444" is the chroma sampling of
    every JPEG written, with encoding jpeg only) and L/ab as derived by the reader.
    """
    out = Path(out)
    modalities = _check_request(source, modalities, out, force, workers, size)
    _check_encoding(source, modalities, encoding, max_side, quality, reencode, subsampling)
    subsampling = subsampling or DEFAULT_SUBSAMPLING
    encoded = encoding != "raw"
    derived = {m: DERIVED_FROM[m] for m in modalities if m in DERIVED_FROM} if encoded else {}
    where = str(source.provenance.get("src", source.name))  # what error messages name
    stats_split = "train" if any(s.name == "train" for s in source.splits) else source.splits[0].name
    started = time.perf_counter()
    remove_stale_temporaries(out)  # left by a prepare that was killed (SIGKILL, power loss)
    tmp = temp_path(out)  # same folder: the rename is atomic
    # The workers already run blocks in parallel; OpenCV's own thread pool inside each call only
    # adds overhead on top (calcHist 3x, split 10x slower, measured), so it is off during the run.
    opencv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    raw = pool = None
    try:
        # Encoded: worker processes forked before the file is opened (they never touch it).
        pool = EncodePool(source.splits, workers) if encoded else ThreadPoolExecutor(workers, thread_name_prefix="prepare")
        raw = DropWritesAfterFailure(tmp)
        with h5py.File(raw, "w") as h5:
            counts, skipped, stats, reencoded = {}, {}, {}, {}
            with tqdm(total=sum(s.count for s in source.splits), unit="img", unit_scale=True, file=sys.stderr,
                      disable=None, desc=f"prepare {out.name}", mininterval=0.5) as bar:
                for split in source.splits:
                    split_stats = stats if split.name == stats_split else None
                    if encoded:
                        stat_modalities = ["rgb"] + list(derived) if split_stats is not None else []
                        options = EncodeOptions(encoding, max_side, size, quality, stat_modalities,
                                                reencode, subsampling)
                        counts[split.name], skipped[split.name], reencoded[split.name] = _write_encoded_split(
                            h5, split, pool, options, strict, split_stats, bar, where, raw, out)
                    else:
                        counts[split.name], skipped[split.name] = _write_split(
                            h5, split, modalities, size, pool, workers, strict, split_stats, bar, where, raw, out)
            arguments = {"modalities": modalities, "size": size, "workers": workers, "strict": strict, "force": force}
            if encoded:
                arguments.update(encoding=encoding, max_side=max_side, jpeg_quality=quality, reencode=reencode,
                                 jpeg_subsampling=subsampling)
            provenance = {
                **source.provenance,
                "source": source.name,
                "arguments": arguments,
                "counts": counts,
                "skipped": {name: len(files) for name, files in skipped.items()},
                "skipped_files": {name: files[:LIST_SKIPPED] for name, files in skipped.items() if files},
                "stats_split": stats_split,
                **({"reencoded": reencoded,
                    "stats_resolution": f"images reduced by 2, 4 or 8 to a shorter side >= {STATS_MIN_SIDE} px"}
                   if encoded else {}),
                "crossmodal_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(time.perf_counter() - started, 2),
            }
            h5.attrs.update({
                "schema_version": SCHEMA_VERSION,
                "crossmodal_version": __version__,
                "source": source.name,
                "provenance": json.dumps(provenance),
                "class_names": json.dumps(list(source.class_names)),
                "stats": json.dumps({name: acc.result(MODALITIES[name].scale) for name, acc in stats.items()}),
            })
            if encoded:
                h5.attrs["encoding"] = json.dumps({"rgb": encoding})
                h5.attrs["derived"] = json.dumps(derived)
            summary = validate(h5, out)
        raw.close()
        raw.raise_first_error()
        os.replace(tmp, out)
        return summary
    except OSError as e:
        first = raw.first_error if raw is not None and raw.first_error is not None else e
        raise DataError(f"{out}: writing failed ({_os_reason(first)}); no file was written; check free space and "
                        f"permissions") from None
    finally:
        if isinstance(pool, EncodePool):
            pool.close()
        elif pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        cv2.setNumThreads(opencv_threads)
        if raw is not None:
            raw.close()
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # e.g. a folder that was never writable: there is nothing to remove
            pass


def _os_reason(e: OSError) -> str:
    """'No space left on device' rather than h5py's multi-line driver report."""
    return e.strerror or str(e).splitlines()[0]


class DropWritesAfterFailure(io.FileIO):
    """The temporary file under h5py: once a write (or resize) fails (disk full), later ones are dropped.

    HDF5 cannot close a file whose writes keep failing: h5py then crashes the process with a
    segmentation fault at exit. Dropping the writes lets it close cleanly; the writer then
    reports the first error and deletes the file. (Writing through Python costs ~5 % of
    prepare's time for 32x32 images, measured; the crash it prevents loses the user's shell.)
    """

    def __init__(self, path: Path):
        super().__init__(path, "x+")  # exclusive: never reuse an existing file
        self.first_error: OSError | None = None

    def write(self, data) -> int:
        if self.first_error is None:
            try:
                return super().write(data)
            except OSError as e:
                self.first_error = e
        return memoryview(data).nbytes

    def truncate(self, size=None) -> int:
        if self.first_error is None:
            try:
                return super().truncate(size)
            except OSError as e:
                self.first_error = e
        return self.tell() if size is None else size

    def raise_first_error(self) -> None:
        """Raise the first failed write's OSError, if any."""
        if self.first_error is not None:
            raise self.first_error


def _write_split(h5: h5py.File, split: SplitSource, modalities: list[str], size: int | None,
                 pool: ThreadPoolExecutor, workers: int, strict: bool, stats: dict | None, bar: tqdm, where: str,
                 raw: DropWritesAfterFailure, out: Path):
    """Write one split group; merge its stats into `stats` when given; return (rows, skipped file names).

    Before the first rows, the folder must have room for the whole split (estimated from the
    first block's row size); after every block, a failed write stops the split."""
    group = h5.create_group(split.name)
    writer, skipped = None, []
    for block in _blocks_in_order(split, pool, 2 * workers, (modalities, size, stats is not None)):
        _note_skipped(block.skipped, skipped, strict)
        if block.rows:
            if writer is None:
                row_bytes = sum(a[0].nbytes for a in block.arrays.values()) + 8  # + the label
                check_free_space(out, row_bytes * split.count, f"split {split.name!r} ({split.count} items)")
                writer = SplitWriter(group, block, split.count)
            writer.write(block, where)
            raw.raise_first_error()
            _merge_stats(stats, block.stats)
        bar.update(block.n_items)
    _end_split(writer is not None, skipped, split, where)
    writer.finish()
    return writer.rows, skipped


def _merge_stats(stats: dict, partial: dict) -> None:
    """Fold a block's per-modality running statistics into the split's."""
    for name, part in partial.items():
        if name in stats:
            stats[name].merge(part)
        else:
            stats[name] = part


def _note_skipped(names: list[str], skipped: list[str], strict: bool) -> None:
    """Record a block's unreadable items: stop under --strict, warn about the first WARN_SKIPPED."""
    for name in names:
        if strict:
            raise DataError(f"{name}: not a readable image (--strict stops here; without it such files are "
                            f"skipped and counted)")
        if len(skipped) < WARN_SKIPPED:
            log.warning("skipping %s: not a readable image", name)
        skipped.append(name)


def _end_split(wrote_any: bool, skipped: list[str], split: SplitSource, where: str) -> None:
    """After a split's last block: an error when no image could be read, else a summary of the skipped ones."""
    if not wrote_any:
        raise DataError(f"{where}: none of the {split.count} images of split {split.name!r} could be read")
    if len(skipped) > WARN_SKIPPED:
        log.warning("skipped %d unreadable images in split %r (listed in the file's provenance)", len(skipped),
                    split.name)


ENCODED_CHUNK_ROWS = 1024  # rows per chunk of an encoded dataset (16-byte heap references; reads use the cache)


def _write_encoded_split(h5: h5py.File, split: SplitSource, pool: EncodePool, options: EncodeOptions, strict: bool,
                         stats: dict | None, bar: tqdm, where: str, raw: DropWritesAfterFailure, out: Path):
    """Write one split of encoded rgb (data_prep/encoded.py); return (rows, skipped file names, re-encoded count).

    Before the first rows, the folder must have room for the whole split at the first block's mean bytes per image."""
    group = h5.create_group(split.name)
    dataset, rows, skipped, reencoded = None, 0, [], 0
    sizes = np.zeros((split.count, 2), np.int32)
    labels = np.full(split.count, -1, np.int64)
    for block in pool.blocks(split, options, where):
        _note_skipped(block.skipped, skipped, strict)
        if block.rows:
            if dataset is None:
                row_bytes = sum(d.nbytes for d in block.data) / block.rows + 8 + 8 + 16  # + size, label, reference
                check_free_space(out, int(row_bytes * split.count), f"split {split.name!r} ({split.count} items)")
                dataset = group.create_dataset("rgb",
                                               shape=(split.count,), maxshape=(split.count,),
                                               dtype=h5py.vlen_dtype(np.uint8),
                                               chunks=(max(1, min(split.count, ENCODED_CHUNK_ROWS)),))
            if rows + block.rows > split.count:
                raise RuntimeError(f"split {split.name}: reader announced {split.count} items but gave more")
            if len({d.size for d in block.data}) > 1:
                column = np.empty(block.rows, dtype=object)
                for i, data in enumerate(block.data):
                    column[i] = data
                dataset[rows:rows + block.rows] = column
            else:  # one row, or rows of one length: h5py would take them for a 2-D array; written one by one
                for i, data in enumerate(block.data):
                    dataset[rows + i] = data
            sizes[rows:rows + block.rows] = block.sizes
            labels[rows:rows + block.rows] = block.labels
            rows += block.rows
            reencoded += block.reencoded
            raw.raise_first_error()
            _merge_stats(stats, block.stats)
        bar.update(block.n_items)
    _end_split(dataset is not None, skipped, split, where)
    if rows != split.count:
        dataset.resize(rows, axis=0)
    group.create_dataset("rgb_size", data=sizes[:rows])
    group.create_dataset("label", data=labels[:rows])
    return rows, skipped, reencoded
