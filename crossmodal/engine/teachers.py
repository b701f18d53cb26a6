"""Frozen teachers: trained networks read from their checkpoints, fed the data re-normalised to their own stats.

`distill` reads each teacher's checkpoint once (`read_teachers`: the weights, the model metadata and
the file's sha256 from one read), learns from it which modality the teacher reads (so the dataset
can load it), and builds the networks once the training data's channel stats are known
(`freeze_teachers`). A teacher runs on the dataset's normalised tensors through `TeacherInput`, the
affine map from the data's stats to the stats it was trained with; probes reuse that map.

Each entry of `teachers` is a `checkpoint` path and an optional `modality` (a distill config's
TeacherConfig); errors name it as `teachers.<i>.<key>`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from crossmodal.engine.checkpoint import model_from_checkpoint, model_meta, read_checkpoint
from crossmodal.errors import ConfigError
from crossmodal.modalities import get_modality, in_chans


class TeacherInput(nn.Module):
    """Re-normalise a batch tensor from the dataset's stats to the stats a teacher was trained with."""

    def __init__(self, data_stats: dict, teacher_stats: dict):
        super().__init__()
        d_mean, d_std = (torch.tensor(data_stats[k]).view(-1, 1, 1) for k in ("mean", "std"))
        t_mean, t_std = (torch.tensor(teacher_stats[k]).view(-1, 1, 1) for k in ("mean", "std"))
        # x_teacher = (x * d_std + d_mean - t_mean) / t_std = x * scale + shift
        self.register_buffer("scale", d_std / t_std, persistent=False)
        self.register_buffer("shift", (d_mean - t_mean) / t_std, persistent=False)
        self.identity = bool(torch.allclose(self.scale, torch.ones_like(self.scale))
                             and torch.allclose(self.shift, torch.zeros_like(self.shift)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.identity else x * self.scale + self.shift


class FrozenTeacher(nn.Module):
    """A teacher network with its input modality and re-normalisation; never trained."""

    def __init__(self, model: nn.Module, modality: str, renorm: TeacherInput, meta: dict):
        super().__init__()
        self.model, self.renorm, self.modality, self.meta = model, renorm, modality, meta

    def forward(self, batch: dict) -> dict:
        return self.model(self.renorm(batch[self.modality]))


@dataclass
class TeacherCheckpoint:
    """One teacher checkpoint as read: its contents, its checked model metadata (sha256 included), its modality."""

    checkpoint: dict
    meta: dict
    modality: str


def read_teachers(teachers: Sequence) -> list[TeacherCheckpoint]:
    """Read every teacher checkpoint once; resolve the modality it reads (default: its own) and check its channels."""
    read = []
    for i, teacher in enumerate(teachers):
        ckpt, sha256 = read_checkpoint(teacher.checkpoint)
        meta = model_meta(ckpt, teacher.checkpoint, sha256)
        modality = teacher.modality or meta["modality"]
        get_modality(modality)
        if in_chans(modality) != meta["in_chans"]:
            raise ConfigError(f"teachers.{i}.modality: {teacher.checkpoint} reads {meta['in_chans']} channels, "
                              f"modality {modality!r} has {in_chans(modality)}")
        read.append(TeacherCheckpoint(ckpt, meta, modality))
    return read


def freeze_teachers(read: Sequence[TeacherCheckpoint], data_stats: dict) -> list[FrozenTeacher]:
    """Build each read teacher's network, fed from data normalised with `data_stats` ({modality: {mean, std}})."""
    teachers = []
    for t in read:
        model = model_from_checkpoint(t.checkpoint, t.meta)
        t_stats = t.meta["stats"].get(t.modality) or t.meta["stats"].get(t.meta["modality"])
        teachers.append(FrozenTeacher(model, t.modality, TeacherInput(data_stats[t.modality], t_stats), t.meta))
    return teachers


def load_teachers(teachers: Sequence, data_stats: dict) -> list[FrozenTeacher]:
    """read_teachers then freeze_teachers: the frozen networks of `teachers` for data normalised with `data_stats`."""
    return freeze_teachers(read_teachers(teachers), data_stats)
