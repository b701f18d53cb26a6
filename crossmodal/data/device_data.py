"""A prepared split held on the training device, augmented there in batches (`data.device_resident`).

    split = DeviceSplit(train_dataset, torch.device("cuda"))
    geometry = split.epoch_geometry(epoch)          # (top, left, flip) of every row, once per epoch
    batch = split.batch(index, geometry)            # {"rgb": (B, C, S, S) float32, "label", "index"}

The split's stored arrays (uint8 rgb: 150 MB for 50,000 CIFAR-size images) are copied to the device
once; each step gathers its rows, converts them to float units, zero-pads, crops, flips and normalises
them with a few batched kernels, so no DataLoader, no host-to-device copy and no host sync is involved.

Same samples as the DataLoader path: the geometry of row i in an epoch is drawn from the same
counter-based stream as PreparedDataset's (transforms.SampleRandom keyed by (seed, epoch, i)),
evaluated here on the device with 64-bit integer arithmetic, and the float operations follow the
dataset's order (to_float, crop with zero fill, (x - mean) * (1 / std)). A batch is therefore the
DataLoader's batch for the same indices, bit for bit on the CPU, and resume stays exact.

Supported: random crop with zero padding and horizontal flip (the CIFAR recipe), or no augmentation,
for every modality (depth's 0 = missing rule included). Not supported (the loader is used):
random-resized crops, segmentation maps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from crossmodal.data.dataset import ZERO_IS_MISSING, PreparedDataset
from crossmodal.data.transforms import _MASK64, _splitmix64
from crossmodal.errors import ConfigError
from crossmodal.modalities import get_modality

# data.device_resident: auto turns the device path on (CUDA only) when the split's stored arrays
# take at most this share of the device's free memory, leaving the rest to activations.
FREE_MEMORY_FRACTION = 0.25


def _signed(value: int) -> int:
    """An unsigned 64-bit value as the int64 with the same bits."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN, _MIX1, _MIX2 = (_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical (unsigned) right shift of int64 values."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(z: torch.Tensor) -> torch.Tensor:
    """transforms._splitmix64 on an int64 tensor (wrapping arithmetic gives the same bits)."""
    z = z + _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


class SampleRandomBatch:
    """transforms.SampleRandom for many indices at once: row b's draws are SampleRandom(*prefix, index[b])'s."""

    def __init__(self, prefix: tuple[int, ...], index: torch.Tensor):
        state = 0
        for part in prefix:
            state = _splitmix64(state ^ (int(part) & _MASK64))
        self._state = splitmix64(index.to(torch.int64) ^ _signed(state))  # (N,)
        self._counter = 0

    def uniform(self) -> torch.Tensor:
        """(N,) float64 in [0, 1)."""
        self._counter += 1
        bits = _shift_right(splitmix64(self._state + self._counter), 11)  # 53 random bits
        return bits.to(torch.float64) * (1.0 / (1 << 53))

    def integer(self, low: int, high: int) -> torch.Tensor:
        """(N,) int64 in [low, high)."""
        return (low + (self.uniform() * (high - low)).to(torch.int64)).clamp(max=high - 1)


def unsupported_reason(dataset: PreparedDataset) -> str | None:
    """Why `dataset` cannot be served from the device, or None if it can."""
    augment = dataset.augment
    if getattr(dataset, "encoded_source", None):
        return "encoded images are decoded by the loader"
    if augment is not None and augment.random_resized_crop is not None:
        return "random_resized_crop runs on the loader only"
    if augment is not None and augment.center_crop is not None:
        return "center_crop runs on the loader only"
    if dataset.with_segmentation:
        return "segmentation maps run on the loader only"
    return None


def stored_bytes(dataset: PreparedDataset) -> int:
    """Bytes the split's requested modalities take as stored (what DeviceSplit puts on the device)."""
    total = 0
    for m in dataset.modalities:
        info = get_modality(m)
        height, width = dataset.image_size
        total += len(dataset) * info.channels * height * width * torch.empty((), dtype=_torch_dtype(info.dtype)).element_size()
    return total


def _torch_dtype(name: str) -> torch.dtype:
    return {"uint8": torch.uint8, "float16": torch.float16, "float32": torch.float32}[name]


def use_device_resident(setting, dataset: PreparedDataset, device: torch.device,
                        test: PreparedDataset | None = None) -> tuple[bool, str]:
    """(on?, why) for `data.device_resident` = "auto" | True | False; True that cannot apply is a ConfigError.

    `test`, when given, must be servable from the device too (both splits move together)."""
    if setting is False:
        return False, "data.device_resident is false"
    reason = unsupported_reason(dataset) or (unsupported_reason(test) if test is not None else None)
    if setting is True:
        if reason:
            raise ConfigError(f"data.device_resident true: {reason}; set data.device_resident to auto or false")
        return True, "data.device_resident is true"
    if setting != "auto":
        raise ConfigError(f"data.device_resident must be auto, true or false, got {setting!r}")
    if device.type != "cuda":
        return False, f"auto: device {device} is not CUDA"
    if reason:
        return False, f"auto: {reason}"
    need = stored_bytes(dataset)
    free, _ = torch.cuda.mem_get_info(device)
    if need > FREE_MEMORY_FRACTION * free:
        return False, (f"auto: the split needs {need / 2**20:.0f} MiB, more than {FREE_MEMORY_FRACTION:.0%} "
                       f"of the {free / 2**20:.0f} MiB free")
    return True, f"auto: the split takes {need / 2**20:.0f} MiB of {free / 2**20:.0f} MiB free"


class DeviceSplit:
    """The rows of a PreparedDataset on `device`, with its augmentation and normalisation done there in batches."""

    def __init__(self, dataset: PreparedDataset, device: torch.device, channels_last: bool = False):
        reason = unsupported_reason(dataset)
        if reason:
            raise ConfigError(f"{dataset.path}: data.device_resident: {reason}")
        self.dataset, self.device, self.channels_last = dataset, device, channels_last
        self.modalities = list(dataset.modalities)
        self.augment = dataset.augment
        self.seed = dataset.seed
        self.height, self.width = dataset.image_size
        arrays = dataset._arrays if dataset._arrays is not None else dataset._read_split()
        self.arrays = {m: torch.from_numpy(arrays[m]).to(device) for m in self.modalities}  # (N, C, H, W) as stored
        self.labels = torch.as_tensor(dataset.labels, dtype=torch.int64).to(device)  # (N,)
        self.scale = {m: get_modality(m).scale for m in self.modalities}
        self.mean = {m: torch.from_numpy(dataset._mean[m]).to(device) for m in self.modalities}  # (C, 1, 1)
        self.inv_std = {m: torch.from_numpy(dataset._inv_std[m]).to(device) for m in self.modalities}  # (C, 1, 1)
        self.normalize = dataset.normalize

    def __len__(self) -> int:
        return self.labels.shape[0]

    def epoch_geometry(self, epoch: int) -> dict[str, torch.Tensor] | None:
        """Every row's crop offsets (top, left; may be negative: zero fill) and flip for `epoch`, or None (no augment)."""
        augment = self.augment
        if augment is None or (augment.crop is None and not augment.hflip):
            return None
        rows = torch.arange(len(self), device=self.device)
        rng = SampleRandomBatch((self.seed, epoch), rows)
        geometry = {}
        if augment.crop is not None:  # same draws, same order as PairedAugment.sample_geometry
            size, pad = augment.crop, augment.padding
            geometry["top"] = rng.integer(0, self.height + 2 * pad - size + 1) - pad
            geometry["left"] = rng.integer(0, self.width + 2 * pad - size + 1) - pad
        if augment.hflip:
            geometry["flip"] = rng.uniform() < 0.5
        return geometry

    def batch(self, index: torch.Tensor, geometry: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The sample dict of rows `index` (B,) on the device, augmented with `geometry` (None: as stored)."""
        out = {}
        for m in self.modalities:
            x = self.arrays[m][index].to(torch.float32)  # (B, C, H, W)
            if self.scale[m] != 1.0:
                x = x * self.scale[m]
            if geometry is not None:
                x = self._crop_flip(x, index, geometry)
            if self.normalize:
                missing = x == 0 if m in ZERO_IS_MISSING else None
                x = (x - self.mean[m]) * self.inv_std[m]
                if missing is not None:
                    x = x.masked_fill(missing, 0.0)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out[m] = x
        out["label"] = self.labels[index]
        out["index"] = index
        return out

    def _crop_flip(self, x: torch.Tensor, index: torch.Tensor, geometry: dict) -> torch.Tensor:
        """Crop every image at its (top, left) with zero fill and mirror the flipped ones: (B, C, S, S)."""
        augment = self.augment
        b, c, h, w = x.shape
        size_h, size_w = (augment.crop, augment.crop) if augment.crop is not None else (h, w)
        pad = augment.padding if augment.crop is not None else 0
        if pad:
            x = F.pad(x, (pad, pad, pad, pad))  # zeros in float units, as the dataset's crop fills
        top = geometry["top"][index] if "top" in geometry else torch.zeros_like(index)
        left = geometry["left"][index] if "left" in geometry else torch.zeros_like(index)
        steps_h = torch.arange(size_h, device=x.device)
        steps_w = torch.arange(size_w, device=x.device)
        rows = top[:, None] + pad + steps_h  # (B, S) rows of the padded image
        if "flip" in geometry:
            # Mirroring the box: output column j shows box column (S - 1 - j).
            flip = geometry["flip"][index][:, None]
            steps_w = torch.where(flip, size_w - 1 - steps_w, steps_w)  # (B, S)
        cols = left[:, None] + pad + steps_w  # (B, S)
        x = x.gather(2, rows[:, None, :, None].expand(b, c, size_h, x.shape[3]))  # (B, C, S, W + 2p)
        return x.gather(3, cols[:, None, None, :].expand(b, c, size_h, size_w))  # (B, C, S, S)


class DeviceBatches:
    """The training batches of one epoch from a DeviceSplit, in the order of the engine's sampler."""

    def __init__(self, split: DeviceSplit, order: torch.Tensor, epoch: int):
        self.split = split
        self.order = order.to(split.device)  # (steps, b) dataset positions
        self.geometry = split.epoch_geometry(epoch)

    def __len__(self) -> int:
        return self.order.shape[0]

    def __iter__(self):
        for index in self.order:
            yield self.split.batch(index, self.geometry)


class DeviceEvalLoader:
    """Evaluation batches of rows [start, stop) of a DeviceSplit, `batch_size` at a time (no augmentation)."""

    def __init__(self, split: DeviceSplit, batch_size: int, start: int = 0, stop: int | None = None):
        self.split, self.batch_size = split, batch_size
        self.start, self.stop = start, len(split) if stop is None else stop

    def __iter__(self):
        for first in range(self.start, self.stop, self.batch_size):
            index = torch.arange(first, min(first + self.batch_size, self.stop), device=self.split.device)
            yield self.split.batch(index)
