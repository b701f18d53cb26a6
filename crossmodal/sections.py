"""The config sections every task shares: data, model, optimiser, engine, and the keys of every run.

A task's schema is a `RunConfig` subclass that sits with its task and adds its own sections
(`TeachConfig` in crossmodal.tasks.teach, `DistillConfig` in crossmodal.tasks.distill, `ProbeConfig` in
crossmodal.tasks.probe). Each section lists the numeric bounds of its keys in BOUNDS; the validator
(crossmodal.config) checks them, whether a value comes from the file, a recipe it extends or `--set`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional, Union

from crossmodal.config import FRACTION, REQUIRED, Bound, above, at_least


@dataclass
class AugmentConfig:
    """Paired augmentation of the training split (crossmodal.data.transforms.PairedAugment)."""

    crop: Optional[int] = None  # random crop to this size (after `padding`)
    padding: int = 0  # zero padding on each side before the random crop
    hflip: bool = False  # random horizontal flip
    random_resized_crop: Optional[int] = None  # RandomResizedCrop output size (ImageNet style)
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # area range of random_resized_crop
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])  # aspect range of random_resized_crop
    # Evaluation crop (data.eval_augment): shorter side to floor(center_crop / crop_fraction), centre crop
    center_crop: Optional[int] = None
    crop_fraction: float = 0.875

    BOUNDS: ClassVar[dict[str, Bound]] = {"crop": at_least(1), "padding": at_least(0),
                                          "random_resized_crop": at_least(1), "scale": Bound(0, 1, low_open=True),
                                          "ratio": above(0), "center_crop": at_least(1),
                                          "crop_fraction": Bound(0, 1, low_open=True)}


@dataclass
class DataConfig:
    """Which prepared file and splits to read, and how to load them."""

    path: str = REQUIRED  # prepared HDF5 file (crossmodal prepare)
    train_split: str = "train"
    test_split: str = "test"
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # the training split's
    # The test split's: only center_crop (e.g. 224: shorter side to 256, centre 224x224) and crop_fraction
    eval_augment: AugmentConfig = field(default_factory=AugmentConfig)
    preload: bool = False  # read the whole split into memory once
    workers: int = 0  # DataLoader worker processes
    # Where JPEG rows of an encoded file are decoded: cpu (the DataLoader workers) or cuda (batched nvJPEG on the
    # training GPU, crossmodal.data.gpu_decode; rgb only)
    decode: Literal["cpu", "cuda"] = "cpu"
    # Keep the split on the device and augment it there in batches (crossmodal.data.device_data);
    # auto = on with CUDA when the split takes at most a quarter of the free GPU memory.
    device_resident: Union[Literal["auto"], bool] = "auto"

    BOUNDS: ClassVar[dict[str, Bound]] = {"workers": at_least(0)}


@dataclass
class ModelConfig:
    """The network being trained and the modality it reads."""

    arch: str = REQUIRED  # crossmodal.models name ('resnet8x4') or 'timm:<name>'
    modality: str = "rgb"
    pretrained: bool = False  # timm models only: start from the hub's pretrained weights


@dataclass
class OptimConfig:
    """Optimiser, batch, schedule and regularisation (crossmodal.engine.optim)."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05  # for the global batch `batch_size` (never rescaled automatically)
    momentum: float = 0.9  # SGD momentum (AdamW: beta1 stays 0.9)
    nesterov: bool = False
    weight_decay: float = 5e-4
    batch_size: int = 64  # global batch: summed over DDP processes
    epochs: int = 240
    schedule: Literal["step", "cosine", "constant"] = "step"
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])  # epochs (step schedule)
    gamma: float = 0.1  # step schedule factor at each milestone
    warmup_epochs: float = 0.0  # linear warmup, per iteration
    label_smoothing: float = 0.0
    grad_clip: Optional[float] = None  # max global gradient L2 norm

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "lr": above(0), "momentum": FRACTION, "weight_decay": at_least(0), "batch_size": at_least(1),
        "epochs": at_least(1), "milestones": at_least(1), "gamma": above(0), "warmup_epochs": at_least(0),
        "label_smoothing": FRACTION, "grad_clip": above(0)}


@dataclass
class EngineConfig:
    """Where and how the loop runs (crossmodal.engine.trainer)."""

    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    compile: bool = False  # torch.compile the model
    deterministic: bool = False  # torch.use_deterministic_algorithms + cuDNN flags
    sync_bn: bool = False  # SyncBatchNorm across DDP processes (CUDA only)
    max_steps_per_epoch: Optional[int] = None  # cap steps per epoch (CPU-sized runs)
    eval_every: int = 1  # evaluate every N epochs (and always after the last)
    save_every: int = 1  # write last.pt every N epochs (and always after the last)
    log_every: int = 50  # steps between progress-bar / TensorBoard updates
    progress: bool = True  # show the tqdm progress bar
    # Capture the training step as one CUDA graph (crossmodal.engine.step); auto = wherever it applies.
    cuda_graph: Union[Literal["auto"], bool] = "auto"

    BOUNDS: ClassVar[dict[str, Bound]] = {"max_steps_per_epoch": at_least(1), "eval_every": at_least(1),
                                          "save_every": at_least(1), "log_every": at_least(1)}


@dataclass
class RunConfig:
    """Keys every run shares; a task's schema subclasses it and adds its sections."""

    name: str = ""  # run name; empty = the config file's stem
    seed: int = 0
    out_dir: str = "runs"  # the run writes to <out_dir>/<name>/
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
