"""The training engine: one loop for teach, distill and finetune (`docs/ARCHITECTURE.md`, "The engine and its tasks").

    from crossmodal.engine import Task, ModelMeta, Trainer, seed_everything, run_dir_for, load_model
"""
from crossmodal.engine.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from crossmodal.engine.task import ModelMeta, Task
from crossmodal.engine.trainer import Trainer, TrainingDiverged, resolve_device, run_dir_for, seed_everything

__all__ = [
    "CheckpointError",
    "ModelMeta",
    "Task",
    "Trainer",
    "TrainingDiverged",
    "load_checkpoint",
    "load_model",
    "resolve_device",
    "run_dir_for",
    "save_checkpoint",
    "seed_everything",
]
