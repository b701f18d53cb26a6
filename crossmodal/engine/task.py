"""The Task contract: everything trainable in a run, and its training step.

The engine (crossmodal.engine.trainer.Trainer) owns the loop; a task says what one step is.
`teach` is a ClassifierTask, `distill` a task holding the student, its distillers and (frozen,
unregistered) teachers, `probe finetune` a classifier over a loaded backbone. Subclass Task:

    class MyTask(Task):
        def __init__(self, model, meta, ...):
            super().__init__(model, meta)   # registers self.model, keeps self.meta
            self.head = nn.Linear(...)      # registered -> optimised, checkpointed, under DDP
            self._teachers = [teacher]      # a plain list -> NOT registered: frozen

        def forward(self, batch):          # the training step; runs under DDP when distributed
            ...
            return total_loss, {"ce": ce.detach(), "crd": crd.detach()}, logits

        def frozen_modules(self):
            return self._teachers

Rules the engine relies on:
- `forward(batch) -> (total_loss, terms, logits)`: `total_loss` a scalar to backpropagate;
  `terms` named scalar tensors already weighted (they are logged as `train_<name>`, detached
  is fine); `logits` (B, num_classes) of `self.model` for the batch's samples (train top-1,
  label -1 ignored). `batch` is the collated sample dict already on the device.
- `evaluation_step(batch) -> logits` (B, num_classes); the engine calls it under no_grad in
  eval mode and scores it against batch["label"]. The default runs `self.model` on
  `batch[self.meta.modality]`; override it when evaluation sees the batch otherwise.
- The optimiser trains every parameter of the task with requires_grad=True; the checkpoint
  stores `task.model.state_dict()` as "model" and the rest of `task.state_dict()` (buffers
  such as CRD memories included) as "task".
- `frozen_modules()` are moved to the device (channels_last too) and kept in eval() by the
  engine. Keep teachers out of the registered submodules (in a list or a tuple) so the
  optimiser, the checkpoint and DDP ignore them, and run them under torch.no_grad(); the
  engine leaves their requires_grad flags alone.
- `meta` (ModelMeta) tells load_model how to rebuild `self.model` from a checkpoint.
- `select_best_by_accuracy` (default True): best.pt is the epoch with the best test top-1; a task
  whose classifier head no loss trains (label-free distillation) sets it False: best = latest.
- `capturable` (default False): the step may be recorded as a CUDA graph (crossmodal.engine.step):
  it reads nothing back to the host, branches on no tensor value, and keeps every shape and every
  tensor it updates (buffers written in place, never reassigned).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn


@dataclass
class ModelMeta:
    """What load_model needs to rebuild the trained network and feed it data."""

    arch: str  # crossmodal.models name
    modality: str  # the input it reads
    in_chans: int
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    data_path: str = ""  # the prepared file it was trained on
    stats: dict = field(default_factory=dict)  # {modality: {"mean": [...], "std": [...]}} used to normalise

    @classmethod
    def for_dataset(cls, arch: str, modality: str, dataset, data_path: str) -> "ModelMeta":
        """Meta of a model `arch` reading `modality` of PreparedDataset `dataset` loaded from `data_path`."""
        from crossmodal.modalities import in_chans

        return cls(arch=arch, modality=modality, in_chans=in_chans(modality), num_classes=dataset.num_classes,
                   class_names=list(dataset.class_names), data_path=str(data_path),
                   stats={modality: dataset.stats[modality]})

    def to_dict(self) -> dict:
        """Plain dict (stored in checkpoints under "meta")."""
        return asdict(self)


class Task(nn.Module):
    """Base class of a run's trainable whole; see the module docstring for the contract."""

    capturable = False  # see the module docstring

    def __init__(self, model: nn.Module, meta: ModelMeta):
        super().__init__()
        self.model = model
        self.meta = meta

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """One training step's loss: (total_loss, weighted named terms, logits (B, n))."""
        raise NotImplementedError

    def evaluation_step(self, batch: dict) -> torch.Tensor:
        """Logits (B, n) of `self.model` on its modality (the engine calls it under no_grad, in eval mode)."""
        return self.model(batch[self.meta.modality])["logits"]

    def frozen_modules(self) -> list[nn.Module]:
        """Modules used but not trained (teachers); the engine places them and keeps them in eval()."""
        return []

    def checkpoint_meta(self) -> dict:
        """Extra, plain-data information saved in checkpoints (e.g. teacher hashes)."""
        return {}

    def start_notes(self) -> list[str]:
        """Lines the engine logs (on the main process) when the run starts, e.g. the size of a loss's state."""
        return []
