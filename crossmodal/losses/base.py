"""The distiller contract and its registry (`docs/ARCHITECTURE.md`, "The distiller interface").

A distiller is an `nn.Module` registered by name. It is built from a `DistillSpec` (shapes of the
student's and teacher's outputs, dataset size, train labels) plus its own keyword parameters,
and called as `loss = distiller(s_out, t_out, batch)` -> scalar tensor, where `s_out`/`t_out`
are model output dicts (crossmodal.models.registry) and `batch` is the sample dict
({modality: tensor, "label": (B,), "index": (B,)}). Trainable parts (heads, regressors) and
state (memories, buffers) live inside the module, so the optimizer, checkpoints and DDP see
them with no special case. The engine never branches on a distiller's name.

Class attributes the engine reads:
- `needs_teacher`  False for losses on the student alone (cross-entropy).
- `combines_teachers`  True if forward takes the *list* of teacher outputs (KD averages the
  teachers' probabilities); otherwise an ensemble gets one instance per teacher, losses summed.
- `init_epochs`  > 0 for methods with an init stage (AB, FT, FSP): `init_parameters()` names
  what that stage trains (plus the student when `init_trains_student`), `init_loss(s_out,
  t_out, batch)` its objective.
- `default_weight`  the reference scripts' weight, used when a config gives the loss weight null.

`get_distiller(name)` is the registry's accessor (the classes, for these attributes);
`build_distiller(name, spec, **params)` builds one; `check_spec(spec)` says whether a teacher fits.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from crossmodal.errors import ConfigError, did_you_mean


@dataclass
class OutputShapes:
    """Shapes of one model's outputs for one input size (without the batch dimension)."""

    features: list[tuple[int, ...]]
    preact_features: list[tuple[int, ...]]
    embedding: int
    num_classes: int


@dataclass
class DistillSpec:
    """What a distiller needs to know to build its parts."""

    student: OutputShapes
    teacher: OutputShapes
    num_samples: int  # rows of the training split (CRD memory size)
    num_classes: int
    train_labels: Optional[torch.Tensor] = None  # (num_samples,) int64, -1 = none


@torch.no_grad()
def output_shapes(model: nn.Module, in_chans: int, size: int | tuple[int, int]) -> OutputShapes:
    """Run a 2-sample dummy batch through `model` (eval mode, restored after) and record its output shapes."""
    h, w = (size, size) if isinstance(size, int) else size
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = model(torch.zeros(2, in_chans, h, w, device=device))
    model.train(was_training)
    return OutputShapes(
        features=[tuple(f.shape[1:]) for f in out["features"]],
        preact_features=[tuple(f.shape[1:]) for f in out["preact_features"]],
        embedding=out["embedding"].shape[1],
        num_classes=out["logits"].shape[1],
    )


class Distiller(nn.Module):
    """Base class: subclasses set their defaults as keyword arguments of __init__ and implement forward."""

    needs_teacher: bool = True
    combines_teachers: bool = False
    init_epochs: int = 0
    init_trains_student: bool = False  # the init stage also trains the student's own layers
    default_weight: float = 1.0  # the reference scripts' weight (beta) when a config gives null
    trains_logits: bool = False  # the loss reaches the student's classifier head (ce, kd)
    capturable: bool = False  # checked to run inside a CUDA graph: no host reads, static shapes (engine.step)

    def __init__(self, spec: DistillSpec):
        super().__init__()
        self.spec = spec

    def forward(self, s_out: dict, t_out, batch: dict) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def check_spec(cls, spec: DistillSpec) -> None:
        """Raise ConfigError when the student's and teacher's outputs in `spec` cannot serve this loss (any can, here).

        A `combines_teachers` loss is built once for all teachers: distill checks every teacher's spec with this.
        """

    def check_training_split(self, num_samples: int) -> None:
        """Raise ConfigError when a training split of `num_samples` rows cannot serve this loss (any can, here)."""

    def state_note(self) -> Optional[str]:
        """A line for the run's log about this loss's state when it is worth knowing (CRD: its memories' size)."""
        return None

    def init_parameters(self):
        """Parameters trained by the init stage (empty unless init_epochs > 0)."""
        return []

    def init_loss(self, s_out: dict, t_out, batch: dict) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def reference_init_lr(self, student_arch: str, lr: float) -> float:
        """The init stage's learning rate when the config gives no `init_lr`: the main run's `lr` (RepDistiller's
        rule for AB and FSP; FT overrides it)."""
        return lr


DISTILLERS: dict[str, type[Distiller]] = {}


def register_distiller(name: str):
    """Class decorator registering a Distiller subclass under `name` (the config's loss key)."""

    def deco(cls):
        if name in DISTILLERS:
            raise ValueError(f"distiller {name!r} registered twice")
        if not (isinstance(cls, type) and issubclass(cls, Distiller)):
            raise TypeError(f"distiller {name!r}: {cls!r} is not a subclass of crossmodal.losses.Distiller")
        cls.name = name
        DISTILLERS[name] = cls
        return cls

    return deco


def _load_all() -> None:
    import crossmodal.losses.zoo  # noqa: F401  (imports every distiller module)


def list_distillers() -> list[str]:
    """Registered loss names, as used in a config's `losses` map."""
    _load_all()
    return sorted(DISTILLERS)


def get_distiller(name: str, key: str = "") -> type[Distiller]:
    """The Distiller class registered as `name`; a one-line ConfigError (prefixed with config `key`) if none is."""
    _load_all()
    if name not in DISTILLERS:
        where = f"{key}: " if key else ""
        raise ConfigError(f"{where}unknown loss {name!r}{did_you_mean(name, DISTILLERS)} "
                          f"(known: {', '.join(sorted(DISTILLERS))})")
    return DISTILLERS[name]


def build_distiller(name: str, spec: DistillSpec, **params) -> Distiller:
    """Build the distiller registered as `name` with `params` (unknown parameters are a ConfigError)."""
    cls = get_distiller(name)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "spec"}
    for key in params:
        if key not in accepted:
            raise ConfigError(f"loss {name!r} has no parameter {key!r}{did_you_mean(key, accepted)} "
                              f"(accepted: {', '.join(sorted(accepted)) or 'none'})")
    return cls(spec, **params)
