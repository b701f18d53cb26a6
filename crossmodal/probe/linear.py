"""A linear classifier on frozen features (the linear-probe protocol of CRD's transfer experiments).

Features are standardised with the training split's per-dimension mean and std (stored in the
probe, so test features get the same map): without it the lr that suits one backbone's feature
scale diverges or stalls on another's. The classifier is trained with the run's optimiser and
per-iteration lr schedule (crossmodal.engine.optim), full batch when `optim.batch_size` covers
the split, otherwise minibatches in a seeded order. On cached features a few hundred epochs cost
seconds.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossmodal.engine.optim import build_optimizer, build_scheduler
from crossmodal.errors import DataError
from crossmodal.sections import OptimConfig


class LinearProbe(nn.Module):
    """x -> W (x - mean) / std + b, with mean and std fixed from the training features."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.linear = nn.Linear(dim, num_classes)

    def set_standardization(self, features: torch.Tensor, eps: float = 1e-6) -> None:
        """Take mean and std per dimension from `features` (N, D); constant dimensions keep std 1."""
        std = features.std(dim=0, unbiased=False)
        self.mean.copy_(features.mean(dim=0))
        self.std.copy_(torch.where(std > eps, std, torch.ones_like(std)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.mean) / self.std)  # (B, num_classes)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracies in percent over samples with a label (>= 0); k above the class count counts as all."""
    mask = labels >= 0
    logits, labels = logits[mask], labels[mask]
    if labels.numel() == 0:
        return {f"top{k}": float("nan") for k in ks}
    ranked = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # (N, k_max)
    hits = ranked == labels[:, None]  # (N, k_max)
    return {f"top{k}": 100.0 * hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, optim: OptimConfig,
                     seed: int = 0, device: torch.device | str = "cpu",
                     standardize: bool = True) -> tuple[LinearProbe, list[dict]]:
    """Train a LinearProbe on features (N, D), labels (N,) (-1 ignored); return it (CPU, eval) and its history."""
    mask = labels >= 0
    if not mask.any():
        raise DataError("linear probe: the training split has no labelled sample")
    x, y = features[mask].float().to(device), labels[mask].long().to(device)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # the head is built and its init seeded without touching the global RNG
        probe = LinearProbe(x.shape[1], num_classes)  # (nn.Linear's own init draws from the global RNG)
        torch.manual_seed(seed)
        probe.linear.reset_parameters()
    probe.to(device)
    if standardize:
        probe.set_standardization(x)
    batch = min(optim.batch_size, len(y))
    steps_per_epoch = -(-len(y) // batch)
    optimizer = build_optimizer(probe.parameters(), optim)
    scheduler = build_scheduler(optimizer, optim, steps_per_epoch)
    history = []
    for epoch in range(optim.epochs):
        order = torch.randperm(len(y), generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        for step in range(steps_per_epoch):
            idx = order[step * batch:(step + 1) * batch]
            logits = probe(x[idx])  # (b, num_classes)
            loss = F.cross_entropy(logits, y[idx], label_smoothing=optim.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == y[idx]).sum()
        history.append({"epoch": epoch + 1, "train_loss": loss_sum.item() / len(y),
                        "train_top1": 100.0 * correct.item() / len(y)})
    return probe.cpu().eval(), history


@torch.no_grad()
def evaluate_linear_probe(probe: LinearProbe, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 (%) of `probe` on features (N, D) with labels (N,)."""
    return topk_accuracy(probe(features.float()), labels.long())
