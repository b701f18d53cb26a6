"""The Dataset over a prepared HDF5 file: a sample is a dict (`docs/ARCHITECTURE.md`, "The sample dict").

    ds = PreparedDataset("cifar10.h5", "train", ["rgb"], augment=PairedAugment(crop=32, padding=4, hflip=True))
    ds[i] -> {"rgb": (3, 32, 32) float32, "label": int64, "index": int64 (= i, CRD's memory row)}

Worker safety: the HDF5 file is opened lazily, once per process (h5py handles must not cross a
fork or be pickled), so DataLoader workers work with fork and spawn alike. With `preload=True`
the split's arrays are read into RAM at construction; forked workers share them copy-on-write,
spawned workers read them again on first use.

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

from crossmodal.data.schema import open_prepared
from crossmodal.data.transforms import NEAREST_KEYS, PairedAugment, SampleRandom
from crossmodal.errors import ConfigError, DataError
from crossmodal.modalities import to_float

# Modalities where a stored 0 means "no measurement" rather than a value.
ZERO_IS_MISSING = frozenset({"depth"})


class PreparedDataset(Dataset):
    """One split of a prepared file, yielding the requested modalities of each row, normalised and augmented."""

    def __init__(self, path: str | Path, split: str, modalities: Sequence[str],
                 augment: PairedAugment | None = None, normalize: bool = True, preload: bool = False,
                 labeled_only: bool = False, with_segmentation: bool = False, seed: int = 0):
        self.path = Path(path)
        self.split = split
        self.modalities = list(modalities)
        self.augment = augment
        self.normalize = normalize
        self.preload = preload
        self.with_segmentation = with_segmentation
        self.seed = int(seed)
        self.epoch = 0
        if not self.modalities:
            raise ConfigError(f"{self.path}: no modality requested for split {split!r}")
        if len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"{self.path}: modalities {self.modalities} name one twice")

        f, summary = open_prepared(self.path)
        try:
            self._check_request(summary)
            all_labels = f[split]["label"][:].astype(np.int64)
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
        if augment is not None:
            augment.check_size(*self.image_size, where=f"{self.path}:{split}")
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

    # -- storage -----------------------------------------------------------------------------------

    def _keys(self) -> list[str]:
        """The per-row datasets this Dataset reads."""
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
        n = len(self.rows)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} samples")
        i = int(i) % n
        stored = self._read_row(i)
        arrays = {m: to_float(m, stored[m]) for m in self.modalities}
        if self.with_segmentation:
            arrays["segmentation"] = stored["segmentation"]
        if self.augment is not None:
            arrays = self.augment(arrays, SampleRandom(self.seed, self.epoch, i), nearest=NEAREST_KEYS)
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
