"""Dense (segmentation) probe: a light head over a network's stage maps, scored by pixel accuracy and mIoU.

Labels follow the prepared-file convention: segmentation value v in 1..C is the class
`class_names[v]`, 0 is an unlabeled pixel. Training maps v -> v - 1 (0 -> -1, ignored by the
loss); scoring ignores label-0 pixels entirely, so what a head predicts there never counts.

Head (`DenseHead`): the chosen stage maps are upsampled (bilinear) to the largest one's size and
concatenated, batch-normalised (the per-channel standardisation a linear probe also applies),
then a 1x1 conv to the classes (hidden=0: a per-pixel linear probe) or 1x1 conv - ReLU - 1x1 conv
(hidden > 0), and the logits are upsampled bilinearly to the label size.

Scores, from a confusion matrix summed over every evaluated pixel with a label:
- pixel accuracy = correctly classified labelled pixels / labelled pixels;
- IoU_c = TP_c / (TP_c + FP_c + FN_c), mIoU = the mean over the classes present in the
  evaluated ground truth (classes absent from it are left out, not counted as 0 or 1).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossmodal.engine.optim import build_optimizer, build_scheduler
from crossmodal.errors import DataError
from crossmodal.sections import OptimConfig

MapsFn = Callable[[torch.Tensor, bool], list]  # (frame indices, training) -> stage maps on the device


def segmentation_class_names(class_names: Sequence[str], max_value: int) -> list[str]:
    """Names of segmentation values 1..C (class_names[v] names value v; C = the larger of len - 1 and max_value)."""
    count = max(len(class_names) - 1, int(max_value))
    return [class_names[v] if v < len(class_names) else f"class {v}" for v in range(1, count + 1)]


class DenseHead(nn.Module):
    """Stage maps -> per-pixel class logits at a requested size (see the module docstring)."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, hidden: int = 0):
        super().__init__()
        channels = sum(in_channels)
        self.norm = nn.BatchNorm2d(channels)
        if hidden > 0:
            self.classify = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                          nn.Conv2d(hidden, num_classes, 1))
        else:
            self.classify = nn.Conv2d(channels, num_classes, 1)

    def forward(self, maps: Sequence[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        resized = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                   for m in maps]
        logits = self.classify(self.norm(torch.cat(resized, dim=1).float()))  # (B, C, h, w)
        return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)  # (B, C, H, W)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts, rows = true class, columns = predicted; pred in 0..C-1, target raw 0..C (0 ignored)."""
    labelled = target > 0
    true = target[labelled].long() - 1
    if true.numel() and int(true.max()) >= num_classes:
        raise DataError(f"segmentation value {int(true.max()) + 1} exceeds the {num_classes} classes named in the file")
    flat = true * num_classes + pred[labelled].long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_scores(confusion: torch.Tensor, class_names: Sequence[str]) -> dict:
    """Pixel accuracy and mIoU (%) of a confusion matrix, with the IoU of each class present in the ground truth."""
    confusion = confusion.double()
    true_pixels = confusion.sum(dim=1)  # (C,)
    tp = confusion.diagonal()
    union = true_pixels + confusion.sum(dim=0) - tp
    present = true_pixels > 0
    iou = torch.where(present, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    total = true_pixels.sum().item()
    return {
        "pixel_acc": 100.0 * tp.sum().item() / total if total else float("nan"),
        "miou": 100.0 * iou[present].mean().item() if present.any() else float("nan"),
        "class_iou": {name: (100.0 * iou[c].item() if present[c] else None) for c, name in enumerate(class_names)},
        "labelled_pixels": int(total),
    }


def kfold_by_index(n: int, folds: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(train, test) index pairs: fold f tests frames i with i % folds == f and trains on the rest."""
    if not 2 <= folds <= n:
        raise DataError(f"dense.folds {folds}: need 2 <= folds <= {n} labelled frames")
    index = torch.arange(n)
    return [(index[index % folds != f], index[index % folds == f]) for f in range(folds)]


def stage_maps(model: nn.Module, x: torch.Tensor, stages: Sequence[int]) -> list[torch.Tensor]:
    """The stage maps `stages` of model(x)."""
    features = model(x)["features"]
    return [features[s] for s in stages]


def fit_dense_head(head: DenseHead, maps_of: MapsFn, targets: torch.Tensor, train_index: torch.Tensor,
                   optim: OptimConfig, params: list, seed: int, device: torch.device) -> list[dict]:
    """Train `params` (the head's, plus the backbone's when finetuning) on frames `train_index`; return history.

    `maps_of(indices, True)` returns the stage maps of those frames on `device` (from a cache
    for a frozen backbone, or a forward pass of the backbone being finetuned); `targets` are
    the raw (N, H, W) labels on the CPU.
    """
    batch = min(optim.batch_size, len(train_index))
    steps_per_epoch = -(-len(train_index) // batch)
    optimizer = build_optimizer(params, optim)
    scheduler = build_scheduler(optimizer, optim, steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    out_size = tuple(targets.shape[-2:])
    history = []
    head.train()
    for epoch in range(optim.epochs):
        order = train_index[torch.randperm(len(train_index), generator=generator)]
        loss_sum = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * batch:(step + 1) * batch]
            logits = head(maps_of(idx, True), out_size)  # (b, C, H, W)
            target = targets[idx].to(device) - 1  # (b, H, W); unlabeled -> -1
            loss = F.cross_entropy(logits, target, ignore_index=-1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(idx)
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / len(train_index)})
    return history


@torch.no_grad()
def predict_dense(head: DenseHead, maps_of: MapsFn, index: torch.Tensor, out_size: tuple[int, int],
                  batch_size: int) -> torch.Tensor:
    """(n, H, W) predicted class (0..C-1) of frames `index`, head in eval mode."""
    head.eval()
    preds = [head(maps_of(idx, False), out_size).argmax(dim=1).cpu() for idx in index.split(batch_size)]
    return torch.cat(preds)
