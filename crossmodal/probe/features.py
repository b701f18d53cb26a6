"""Frozen-network features for probes: input adaptation, stage choice, extraction, on-disk cache.

A probe may read other data than the checkpoint was trained on (another file, image size or
channel statistics). `InputAdapter` maps the dataset's normalised tensors to what the network
saw in training: optional re-normalisation from the probe data's stats to the checkpoint's, then
an optional resize so the shorter side matches the training size (bilinear with antialiasing;
nearest for depth, whose zeros are holes that must not blend into measured depth).

A stage is "embedding" (the pooled vector fed to the classifier) or an int i: `features[i]`
(stem first; negative counts from the end) global-average-pooled to (B, C_i).

Cache: one file per (checkpoint sha256, data file, split, modality, stage, input adaptation) in
`cache_dir`, written atomically, holding features, logits and labels. A second probe of the
same checkpoint on the same data reads it instead of running the network again. The data file
is identified by its resolved path, size and modification time, so re-preparing it invalidates
the entry without hashing gigabytes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from crossmodal.data.transforms import NEAREST_KEYS
from crossmodal.engine.teachers import TeacherInput  # the affine map distill feeds its teachers through
from crossmodal.errors import ConfigError
from crossmodal.tempfiles import atomic_write

CACHE_VERSION = 1
Stage = Union[int, str]


class InputAdapter(nn.Module):
    """Re-normalise (probe-data stats -> checkpoint stats) and resize a modality's batch (B, C, H, W)."""

    def __init__(self, modality: str, size: Optional[int] = None, data_stats: Optional[dict] = None,
                 model_stats: Optional[dict] = None):
        super().__init__()
        self.modality, self.size = modality, size
        self.renorm = TeacherInput(data_stats, model_stats) if data_stats and model_stats else None
        if self.renorm is not None and self.renorm.identity:
            self.renorm = None

    @property
    def identity(self) -> bool:
        """True when the adapter changes nothing (no re-normalisation, no resize requested)."""
        return self.renorm is None and self.size is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.renorm is not None:
            x = self.renorm(x)
        if self.size is not None and min(x.shape[-2:]) != self.size:
            h, w = x.shape[-2:]
            scale = self.size / min(h, w)
            out_size = (max(self.size, round(h * scale)), max(self.size, round(w * scale)))
            if self.modality in NEAREST_KEYS:
                x = F.interpolate(x, size=out_size, mode="nearest")
            else:
                x = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False, antialias=scale < 1)
        return x

    def describe(self) -> dict:
        """Plain-data description (part of the cache key and of results.json)."""
        return {"resize_shorter_side": self.size, "renormalised": self.renorm is not None}


def resolve_stage(stage: Stage, num_maps: int) -> Stage:
    """"embedding" or a stage index (int or digit string, negative from the end) -> "embedding" or an index >= 0."""
    if isinstance(stage, str) and stage != "embedding":
        try:
            stage = int(stage)
        except ValueError:
            raise ConfigError(f"stage {stage!r}: use 'embedding' or a stage index 0..{num_maps - 1} "
                              f"(negative counts from the end)") from None
    if stage == "embedding":
        return stage
    if not -num_maps <= stage < num_maps:
        raise ConfigError(f"stage {stage}: the network has {num_maps} stage maps (0..{num_maps - 1}, stem first); "
                          "pick one of them or 'embedding'")
    return stage % num_maps


def stage_features(output: dict, stage: Stage) -> torch.Tensor:
    """(B, D) features of a resolved `stage` from a model output dict."""
    if stage == "embedding":
        return output["embedding"]
    return F.adaptive_avg_pool2d(output["features"][stage], 1).flatten(1)  # (B, C_i)


@torch.no_grad()
def extract_features(model: nn.Module, dataset, modality: str, stage: Stage, adapter: InputAdapter,
                     device: torch.device, batch_size: int = 256, workers: int = 0) -> dict[str, torch.Tensor]:
    """Run the frozen `model` over `dataset`: {"features": (N, D), "logits": (N, n), "labels": (N,)} on the CPU."""
    model.eval()
    adapter = adapter.to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    features, logits, labels = [], [], []
    for batch in loader:
        output = model(adapter(batch[modality].to(device)))
        features.append(stage_features(output, stage).float().cpu())  # (B, D)
        logits.append(output["logits"].float().cpu())  # (B, n)
        labels.append(batch["label"])
    return {"features": torch.cat(features), "logits": torch.cat(logits), "labels": torch.cat(labels)}


def file_stamp(path: str | Path) -> dict:
    """Resolved path, size and mtime of a data file: a cheap stamp the cache key uses instead of hashing it
    (a run folder's resume check uses crossmodal.engine.rundir.data_identity, a content identity, instead)."""
    path = Path(path).resolve()
    stat = path.stat()
    return {"path": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cache_key(network: str, data_path: str | Path, split: str, modality: str, stage: Stage,
              adapter: InputAdapter, transform: Optional[str] = None) -> dict:
    """The plain-data key of one cache entry; `network` is a checkpoint sha256 or a random-init description,
    `transform` the samples' fixed transform (e.g. a centre crop), None for the stored images as they are."""
    key = {"version": CACHE_VERSION, "network": network, "data": file_stamp(data_path), "split": split,
           "modality": modality, "stage": stage, "input": adapter.describe()}
    if transform is not None:  # absent otherwise, so the entries cached before this key existed stay valid
        key["transform"] = transform
    return key


def cache_path(cache_dir: str | Path, key: dict) -> Path:
    """Where the entry for `key` lives: <cache_dir>/<sha256 of the key's JSON, 24 hex>.pt."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return Path(cache_dir) / f"{digest}.pt"


def cached(cache_dir: Optional[str | Path], key: dict,
           compute: Callable[[], dict[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], bool]:
    """(entry, hit): the cached tensors of `key`, or compute() stored atomically; no cache when cache_dir is None."""
    if cache_dir is None:
        return compute(), False
    path = cache_path(cache_dir, key)
    if path.is_file():
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            if entry.get("key") == key:
                return {k: entry[k] for k in ("features", "logits", "labels")}, True
        except Exception:  # a foreign or damaged file is simply recomputed and replaced
            pass
    tensors = compute()
    with atomic_write(path, "wb") as f:
        torch.save({"key": key, **tensors}, f)
    return tensors, False
