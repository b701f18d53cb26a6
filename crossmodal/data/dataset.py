"""The Dataset over a prepared HDF5 file: a sample is a dict (`docs/ARCHITECTURE.md`, "The sample dict").

    ds = PreparedDataset("cifar10.h5", "train", ["rgb"], augment=PairedAugment(crop=32, padding=4, hflip=True))
    ds[i] -> {"rgb": (3, 32, 32) float32, "label": int64, "index": int64 (= i, CRD's memory row)}

Worker safety: the HDF5 file is opened lazily, once per process (h5py handles must not cross a
fork or be pickled), so DataLoader workers work with fork and spawn alike. With `preload=True`
the split's arrays are read into RAM at construction; forked workers share them copy-on-write,
spawned workers read them again on first use.

Encoded files (`prepare --encoding jpeg|png`, schema 2): each row's image is decoded here, in
the DataLoader worker, with the sample's geometry drawn from its stored size first, so a JPEG
can be decoded at a reduced size when the crop allows (transforms.decode_geometry); derived
modalities (L, ab) are then computed from the decoded rgb crop and rounded to float16 like
stored ones. The sample dict has the same keys and shapes as for a raw file.

Normalisation: (x - mean) / std per channel with the file's stats. Depth pixels that are 0
(missing, and the zero padding of a crop) are set to 0 after normalisation, i.e. to the mean
depth, so a hole looks like "average" rather than "very near" to the network.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from crossmodal.color import rgb_to_lab
from crossmodal.data.schema import SIZE_SUFFIX, open_prepared
from crossmodal.data.transforms import NEAREST_KEYS, Geometry, PairedAugment, SampleRandom, decode_geometry
from crossmodal.errors import ConfigError, DataError
from crossmodal.modalities import to_float

# Modalities where a stored 0 means "no measurement" rather than a value.
ZERO_IS_MISSING = frozenset({"depth"})


def derive_from_rgb(rgb: np.ndarray, modalities: Sequence[str]) -> dict[str, np.ndarray]:
    """Float arrays (C, H, W) of `modalities` from one (H, W, 3) uint8 RGB image: rgb / 255, and L, ab through
    CIE Lab rounded to float16 as a raw file stores them (crossmodal.color)."""
    arrays = {}
    if "rgb" in modalities:
        arrays["rgb"] = to_float("rgb", np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    if "L" in modalities or "ab" in modalities:
        lab = rgb_to_lab(rgb).astype(np.float16).astype(np.float32)  # (H, W, 3)
        if "L" in modalities:
            arrays["L"] = lab[None, :, :, 0]
        if "ab" in modalities:
            arrays["ab"] = lab[:, :, 1:].transpose(2, 0, 1)
    return arrays


class PreparedDataset(Dataset):
    """One split of a prepared file, yielding the requested modalities of each row, normalised and augmented."""

    def __init__(self, path: str | Path, split: str, modalities: Sequence[str],
                 augment: PairedAugment | None = None, normalize: bool = True, preload: bool = False,
                 labeled_only: bool = False, with_segmentation: bool = False, seed: int = 0, decode: str = "cpu"):
        self.path = Path(path)
        self.split = split
        self.modalities = list(modalities)
        self.augment = augment
        self.normalize = normalize
        self.preload = preload
        self.with_segmentation = with_segmentation
        self.seed = int(seed)
        self.decode = decode
        self.epoch = 0
        if not self.modalities:
            raise ConfigError(f"{self.path}: no modality requested for split {split!r}")
        if len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"{self.path}: modalities {self.modalities} name one twice")

        f, summary = open_prepared(self.path)
        try:
            self._check_request(summary)
            all_labels = f[split]["label"][:].astype(np.int64)
            info = summary["splits"][split]
            # encoded: the stored modality decoded per sample, and what is derived from it
            self.encoded_source = self._encoded_source(info)
            all_sizes = f[split][self.encoded_source + SIZE_SUFFIX][()] if self.encoded_source else None
        finally:
            f.close()
        self.class_names: list[str] = list(summary["class_names"])
        self.num_classes = len(self.class_names)
        self.stats: dict[str, dict] = {m: summary["stats"][m] for m in self.modalities}
        # ds.rows[i] is the file row behind dataset position i (positions are CRD's memory rows).
        self.rows = np.flatnonzero(all_labels >= 0) if labeled_only else np.arange(len(all_labels))
        if len(self.rows) == 0:
            raise DataError(f"{self.path}: split {split!r} has no labelled rows; "
                            "use labeled_only=False or another split")
        self.labels = all_labels[self.rows]
        self.image_size = tuple(summary["splits"][split]["modalities"][self.modalities[0]][1:])
        self.sizes = all_sizes[self.rows].astype(np.int64) if all_sizes is not None else None  # (N, 2) H, W
        if self.sizes is not None and None in self.image_size:
            self._check_fixed_output(augment)
        if augment is not None:
            smallest = self.image_size if self.sizes is None else tuple(int(v) for v in self.sizes.min(axis=0))
            augment.check_size(*smallest, where=f"{self.path}:{split}")
        self._check_decode(summary["splits"][split])
        shape = (-1, 1, 1)
        self._mean = {m: np.asarray(self.stats[m]["mean"], np.float32).reshape(shape) for m in self.modalities}
        self._inv_std = {m: (1.0 / np.asarray(self.stats[m]["std"], np.float32)).reshape(shape)
                         for m in self.modalities}
        self._file: h5py.File | None = None
        self._file_pid: int | None = None
        self._open_datasets: dict[str, h5py.Dataset] = {}
        self._arrays: dict[str, np.ndarray] | None = None
        if preload:
            self._arrays = self._read_split()

    def _check_request(self, summary: dict) -> None:
        """Raise DataError naming the file, split and what is available when the request does not fit."""
        splits = summary["splits"]
        if self.split not in splits:
            raise DataError(f"{self.path}: no split {self.split!r} (available: {', '.join(splits)})")
        info = splits[self.split]
        available = info["modalities"]
        for m in self.modalities:
            if m not in available:
                raise DataError(f"{self.path}: split {self.split!r} has no modality {m!r} "
                                f"(available: {', '.join(available)})")
        if self.with_segmentation and not info["has_segmentation"]:
            raise DataError(f"{self.path}: split {self.split!r} has no segmentation; "
                            "drop with_segmentation or prepare a source with labels")
        sizes = {m: available[m][1:] for m in self.modalities}
        if len(set(sizes.values())) > 1:
            raise DataError(f"{self.path}: split {self.split!r} modalities differ in size {sizes}; "
                            "paired samples need one H x W")
        for m in self.modalities:
            channels, stats = available[m][0], summary["stats"][m]
            mean, std = stats.get("mean", []), stats.get("std", [])
            if len(mean) != channels or len(std) != channels or min(std) <= 0:
                raise DataError(f"{self.path}: attribute 'stats' for {m!r} needs {channels} means and {channels} "
                                f"positive stds, got {stats}; re-run `crossmodal prepare`")

    def _encoded_source(self, info: dict) -> str | None:
        """The encoded modality the request decodes (None for raw arrays); DataError for a raw/encoded mix."""
        encoding, derived = info.get("encoding", {}), info.get("derived", {})
        sources = {m if m in encoding else derived[m] for m in self.modalities if m in encoding or m in derived}
        raw = [m for m in self.modalities if m not in encoding and m not in derived]
        if not sources:
            return None
        if len(sources) > 1 or raw or self.with_segmentation:
            raise DataError(f"{self.path}: split {self.split!r}: modalities {self.modalities} mix encoded images "
                            f"with other data{' and segmentation' if self.with_segmentation else ''}; request "
                            f"them from separate datasets")
        return sources.pop()

    def _check_decode(self, info: dict) -> None:
        """`decode` is cpu, or cuda for JPEG rows requested alone with a crop inside the image (data.decode)."""
        if self.decode == "cpu":
            return
        if self.decode != "cuda":
            raise ConfigError(f"data.decode must be cpu or cuda, got {self.decode!r}")
        where = f"data.decode cuda ({self.path}, split {self.split!r})"
        if info.get("encoding", {}).get(self.encoded_source) != "jpeg":
            raise ConfigError(f"{where}: decodes JPEG rows (prepare --encoding jpeg); this split stores "
                              f"{info.get('encoding') or 'raw arrays'}")
        if self.modalities != [self.encoded_source]:
            raise ConfigError(f"{where}: gives {self.encoded_source} only; {self.modalities} needs data.decode cpu")
        if self.augment is not None and self.augment.crop is not None:
            raise ConfigError(f"{where}: takes random_resized_crop or center_crop, not a padded crop")
        from crossmodal.data.gpu_decode import missing_decoder

        if (reason := missing_decoder()) is not None:
            raise ConfigError(f"{where}: {reason}; set data.decode: cpu")

    @property
    def collate_fn(self):
        """The DataLoader's collate function for these samples (None: the default)."""
        if self.decode == "cuda":
            from crossmodal.data.gpu_decode import collate

            return collate
        return None

    def device_transform(self, batch: dict, device: torch.device) -> dict:
        """A collated batch on `device` (crossmodal.data.gpu_decode: decoded there with data.decode cuda)."""
        if self.decode != "cuda":
            return batch
        from crossmodal.data import gpu_decode

        m = self.encoded_source
        mean = torch.tensor(self.stats[m]["mean"], dtype=torch.float32, device=device)
        std = torch.tensor(self.stats[m]["std"], dtype=torch.float32, device=device)
        return gpu_decode.decode_batch(gpu_decode.to_device(batch, device), m, mean, std)

    def _check_fixed_output(self, augment: PairedAugment | None) -> None:
        """Images of different sizes batch only through a transform with a fixed output size."""
        if augment is None or augment.output_size is None:
            low, high = self.sizes.min(axis=0), self.sizes.max(axis=0)
            raise ConfigError(f"{self.path}: split {self.split!r} holds images from {low[1]}x{low[0]} to "
                              f"{high[1]}x{high[0]}; give it a fixed-size transform (data.augment.random_resized_crop "
                              f"for training, data.eval_augment.center_crop for evaluation)")

    # -- storage -----------------------------------------------------------------------------------

    def _keys(self) -> list[str]:
        """The per-row datasets this Dataset reads."""
        if self.encoded_source:
            return [self.encoded_source]
        return self.modalities + (["segmentation"] if self.with_segmentation else [])

    def _datasets(self) -> dict[str, h5py.Dataset]:
        """This process's own h5py datasets, opened on first use (and again after a fork or spawn)."""
        pid = os.getpid()
        if self._file is None or self._file_pid != pid:
            if self._file is not None:
                # Inherited through fork: close this process's copy first, or HDF5 would match the
                # reopen to the inherited, already-open file and reuse its state.
                self._file.close()
            self._file = h5py.File(self.path, "r")
            self._file_pid = pid
            group = self._file[self.split]
            # Looked up once: a group lookup costs about as much as reading a 32x32 row.
            self._open_datasets = {k: group[k] for k in self._keys()}
        return self._open_datasets

    def _read_split(self) -> dict[str, np.ndarray]:
        """Read the requested rows of every key into RAM (one sequential read per key)."""
        with h5py.File(self.path, "r") as f:
            group = f[self.split]
            everything = len(self.rows) == group["label"].shape[0]
            return {k: group[k][:] if everything else group[k][:][self.rows] for k in self._keys()}

    def _read_row(self, i: int) -> dict[str, np.ndarray]:
        """Stored arrays of dataset position i."""
        if self.preload:
            if self._arrays is None:  # a spawned worker: the arrays were not pickled
                self._arrays = self._read_split()
            return {k: a[i] for k, a in self._arrays.items()}
        row = int(self.rows[i])
        return {k: ds[row] for k, ds in self._datasets().items()}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None
        state["_file_pid"] = None
        state["_open_datasets"] = {}
        state["_arrays"] = None  # re-read per process rather than pickled to every spawned worker
        return state

    # -- samples -----------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations __getitem__ draws (call before creating the loader's iterator)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self._sample(self._position(i))

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        """The samples of a batch (the DataLoader's batched fetch). Encoded rows are read in one HDF5 call, which
        costs a third of one call per variable-length row (measured); everything else is as __getitem__."""
        positions = [self._position(i) for i in indices]
        if not self.encoded_source or self.preload or len(positions) < 2:
            return [self._sample(i) for i in positions]
        rows = self.rows[positions]
        unique, inverse = np.unique(rows, return_inverse=True)
        read = self._datasets()[self.encoded_source][unique]  # h5py wants increasing rows
        return [self._sample(i, read[j]) for i, j in zip(positions, inverse)]

    def _position(self, i) -> int:
        n = len(self.rows)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} samples")
        return int(i) % n

    def _sample(self, i: int, data=None) -> dict[str, torch.Tensor]:
        """Sample dict of position i (`data`: its encoded bytes when already read)."""
        if self.decode == "cuda":
            return self._encoded_sample(i, data)
        if self.encoded_source:
            arrays = self._decoded_arrays(i, data)
        else:
            arrays = self._stored_arrays(i)
        sample = {}
        for m in self.modalities:
            x = np.ascontiguousarray(arrays[m])  # (C, H, W), our own copy (to_float and augment copy)
            if self.normalize:
                self._normalize_(m, x)
            sample[m] = torch.from_numpy(x)
        if self.with_segmentation:
            sample["segmentation"] = torch.from_numpy(arrays["segmentation"].astype(np.int64))
        # scalar_tensor: torch.tensor(np.int64) costs ~3x as much, and this runs twice per sample.
        sample["label"] = torch.scalar_tensor(int(self.labels[i]), dtype=torch.int64)
        sample["index"] = torch.scalar_tensor(i, dtype=torch.int64)
        return sample

    def _encoded_sample(self, i: int, data=None) -> dict[str, torch.Tensor]:
        """data.decode cuda: the row's bytes and its geometry, decoded on the device (crossmodal.data.gpu_decode)."""
        if data is None:
            data = self._read_row(i)[self.encoded_source]
        m = self.encoded_source
        return {m + "_encoded": torch.from_numpy(np.array(data, dtype=np.uint8)),
                m + "_geometry": torch.tensor(self.sample_geometry(i), dtype=torch.int64),
                "label": torch.scalar_tensor(int(self.labels[i]), dtype=torch.int64),
                "index": torch.scalar_tensor(i, dtype=torch.int64)}

    def _stored_arrays(self, i: int) -> dict[str, np.ndarray]:
        """Float arrays (C, H, W) of a raw row, augmented."""
        stored = self._read_row(i)
        arrays = {m: to_float(m, stored[m]) for m in self.modalities}
        if self.with_segmentation:
            arrays["segmentation"] = stored["segmentation"]
        if self.augment is not None:
            arrays = self.augment(arrays, SampleRandom(self.seed, self.epoch, i), nearest=NEAREST_KEYS)
        return arrays

    def sample_geometry(self, i: int) -> Geometry:
        """The geometry sample i of the current epoch gets (drawn from its stored size; identity without augment)."""
        h, w = (int(v) for v in self.sizes[i]) if self.sizes is not None else self.image_size
        if self.augment is None:
            return Geometry(0, 0, h, w, h, w, False)
        return self.augment.sample_geometry(SampleRandom(self.seed, self.epoch, i), h, w)

    def _decoded_arrays(self, i: int, data=None) -> dict[str, np.ndarray]:
        """Float arrays (C, H, W) of an encoded row: decoded with its geometry, then derived modalities."""
        if data is None:
            data = self._read_row(i)[self.encoded_source]
        h, w = (int(v) for v in self.sizes[i])
        rgb = decode_geometry(data, h, w, self.sample_geometry(i))  # (h, w, 3) uint8
        if rgb is None:
            raise DataError(f"{self.path}: {self.split}/{self.encoded_source} row {int(self.rows[i])}: the stored "
                            f"image cannot be decoded; re-run `crossmodal prepare`")
        return derive_from_rgb(rgb, self.modalities)

    def _normalize_(self, modality: str, x: np.ndarray) -> None:
        """In place: (x - mean) / std per channel; missing depth becomes 0 (the mean)."""
        missing = x == 0 if modality in ZERO_IS_MISSING else None
        x -= self._mean[modality]
        x *= self._inv_std[modality]
        if missing is not None:
            x[missing] = 0.0

    def __repr__(self) -> str:
        return (f"PreparedDataset({str(self.path)!r}, split={self.split!r}, modalities={self.modalities}, "
                f"n={len(self)}, augment={self.augment}, preload={self.preload})")
