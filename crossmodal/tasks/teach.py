"""`teach`: train a supervised classifier on one modality of a prepared file (a teacher, or a baseline).

    from crossmodal.config import load_config
    from crossmodal.tasks.teach import TeachConfig, run_teach
    summary = run_teach(load_config("configs/cifar100/resnet56.yaml", TeachConfig))

Samples with label -1 (e.g. STL-10's unlabeled split) are left out of both splits.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossmodal.data.dataset import PreparedDataset
from crossmodal.data.transforms import PairedAugment
from crossmodal.engine import ModelMeta, Task, Trainer, resolve_device, run_dir_for, seed_everything
from crossmodal.engine.distributed import distributed_job
from crossmodal.errors import ConfigError
from crossmodal.modalities import in_chans
from crossmodal.models import build_model
from crossmodal.sections import ModelConfig, RunConfig


@dataclass
class TeachConfig(RunConfig):
    """`crossmodal teach`: a supervised classifier on one modality."""

    model: ModelConfig = field(default_factory=ModelConfig)


class ClassifierTask(Task):
    """Cross-entropy (with optional label smoothing) on the logits of `model` for `meta.modality`."""

    capturable = True

    def __init__(self, model: nn.Module, meta: ModelMeta, label_smoothing: float = 0.0):
        super().__init__(model, meta)
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"optim.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Loss of one training batch: (ce, {"ce": ce}, logits)."""
        logits = self.model(batch[self.meta.modality])["logits"]  # (B, n)
        ce = F.cross_entropy(logits, batch["label"], ignore_index=-1, label_smoothing=self.label_smoothing)
        return ce, {"ce": ce.detach()}, logits


def build_datasets(cfg: TeachConfig, modalities: list[str], labeled_only: bool = True):
    """(train, test) PreparedDatasets of cfg.data for `modalities`; augmentation on train only."""
    train_augment = PairedAugment.from_config(cfg.data.augment)
    common = dict(modalities=modalities, preload=cfg.data.preload, labeled_only=labeled_only, seed=cfg.seed,
                  decode=cfg.data.decode)
    train = PreparedDataset(cfg.data.path, cfg.data.train_split, augment=train_augment, **common)
    test = PreparedDataset(cfg.data.path, cfg.data.test_split, augment=PairedAugment.eval_from_config(
        cfg.data.eval_augment), **common)
    return train, test


def build_classifier(model: ModelConfig, num_classes: int, key: str = "model") -> nn.Module:
    """The network a ModelConfig (config key `key`) names, for `num_classes` classes; pretrained weights only for
    timm models (any other arch with `pretrained: true` is a ConfigError)."""
    kwargs = {}
    if model.pretrained:
        if not model.arch.startswith("timm:"):
            raise ConfigError(f"{key}.pretrained needs a timm model ('timm:<name>'), not {model.arch!r}")
        kwargs["pretrained"] = True
    return build_model(model.arch, in_chans=in_chans(model.modality), num_classes=num_classes, **kwargs)


def run_teach(cfg: TeachConfig, resume: bool = False) -> dict:
    """Train cfg.model on cfg.data (continuing runs/<name>/last.pt if `resume`); return the run summary.

    Under torchrun the run joins the process group and leaves it when it ends (distributed_job)."""
    with distributed_job(resolve_device(cfg.engine.device)):
        seed_everything(cfg.seed)
        train, test = build_datasets(cfg, [cfg.model.modality])
        model = build_classifier(cfg.model, train.num_classes)
        meta = ModelMeta.for_dataset(cfg.model.arch, cfg.model.modality, train, cfg.data.path)
        task = ClassifierTask(model, meta, label_smoothing=cfg.optim.label_smoothing)
        return Trainer(task, train, test, cfg, run_dir_for(cfg), resume=resume).fit()
