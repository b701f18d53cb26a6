"""`distill`: train a student from one or more frozen teachers with CRD and/or other distillers.

Compression, cross-modal transfer and ensembles are one engine with three configs:
- compression: the teachers and the student read the same modality;
- cross-modal: they read different modalities of the same sample (the dataset yields both),
  the student may train without labels (`losses: {crd: 0.8}` on an unlabeled split);
- ensemble: a list of teachers; a loss with `combines_teachers` (KD) sees all of them at once
  (averaged probabilities), any other loss gets one instance per teacher (its own CRD heads and
  memories) and the instances' losses add up (the paper's recipe).

    from crossmodal.config import load_config
    from crossmodal.tasks.distill import DistillConfig, run_distill
    summary = run_distill(load_config("configs/cifar100/resnet32x4_resnet8x4_crd.yaml", DistillConfig))

Each teacher checkpoint is read once per run (crossmodal.engine.teachers): its weights, metadata
and sha256 come from that one read, which also tells the dataset which modality the teacher reads.
Methods with an init stage (AB, FT, FSP) run it first, through the same engine, in
<run>/init/ (resumable like any run), training only what the method names.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
import torch.nn as nn

from crossmodal.config import REQUIRED, Bound, above, at_least
from crossmodal.data.dataset import PreparedDataset
from crossmodal.data.transforms import PairedAugment
from crossmodal.engine import ModelMeta, Task, Trainer, resolve_device, run_dir_for, seed_everything
from crossmodal.engine.distributed import distributed_job
from crossmodal.engine.teachers import FrozenTeacher, TeacherCheckpoint, freeze_teachers, read_teachers
from crossmodal.errors import ConfigError
from crossmodal.losses import DistillSpec, OutputShapes, build_distiller, get_distiller, output_shapes
from crossmodal.modalities import in_chans
from crossmodal.sections import ModelConfig, RunConfig
from crossmodal.tasks.teach import build_classifier

log = logging.getLogger("crossmodal")


@dataclass
class TeacherConfig:
    """One frozen teacher: its checkpoint (from `teach`) and the modality it reads."""

    checkpoint: str = REQUIRED
    modality: Optional[str] = None  # default: the modality the teacher was trained on


@dataclass
class DistillConfig(RunConfig):
    """`crossmodal distill`: the student, its teachers, and the weighted losses."""

    student: ModelConfig = field(default_factory=ModelConfig)
    teachers: list[TeacherConfig] = field(default_factory=list)
    # loss name -> weight (null = the method's reference default weight)
    losses: dict[str, Optional[float]] = field(default_factory=lambda: {"ce": 1.0, "kd": 1.0, "crd": 0.8})
    loss_params: dict[str, dict] = field(default_factory=dict)  # loss name -> its keyword parameters
    init_lr: Optional[float] = None  # lr of the init stage (AB/FT/FSP); default: the reference's (FT: 0.01 for resnet/wrn students), else optim.lr

    BOUNDS: ClassVar[dict[str, Bound]] = {"losses": at_least(0), "init_lr": above(0)}


class DistillTask(Task):
    """Student + distillers (registered) + frozen teachers (not registered); loss = sum of weighted terms."""

    def __init__(self, student: nn.Module, meta: ModelMeta, teachers: list[FrozenTeacher],
                 losses: dict[str, nn.ModuleList], weights: dict[str, float], combined: set[str]):
        super().__init__(student, meta)
        self._teachers = list(teachers)
        self.losses = nn.ModuleDict(losses)  # name -> ModuleList (one per teacher, or one combining all)
        self.weights = dict(weights)
        self.combined = set(combined)
        # Test top-1 only means something when a loss trains the student's classifier head.
        self.select_best_by_accuracy = any(ml[0].trains_logits and self.weights[n] > 0 for n, ml in losses.items())
        # Losses in their init-only phase return a constant 0 with no graph to some parameters.
        self.ddp_find_unused_parameters = any(m.init_epochs > 0 for ml in losses.values() for m in ml)
        self.capturable = all(type(ml[0]).capturable for ml in losses.values())

    def frozen_modules(self) -> list[nn.Module]:
        return self._teachers

    def teacher_outputs(self, batch: dict) -> list[dict]:
        """Outputs of every teacher for `batch` (no graph)."""
        with torch.no_grad():
            return [teacher(batch) for teacher in self._teachers]

    def forward(self, batch: dict):
        """One distillation step: (sum of weighted losses, {name: weighted loss}, student logits)."""
        s_out = self.model(batch[self.meta.modality])
        t_outs = self.teacher_outputs(batch) if self._teachers else []
        total, terms = 0.0, {}
        for name, modules in self.losses.items():
            if not modules[0].needs_teacher:
                value = modules[0](s_out, None, batch)
            elif name in self.combined:
                value = modules[0](s_out, t_outs, batch)
            else:
                value = sum(m(s_out, t_out, batch) for m, t_out in zip(modules, t_outs))
            weighted = self.weights[name] * value
            total = total + weighted
            terms[name] = weighted.detach()
        return total, terms, s_out["logits"]

    def checkpoint_meta(self) -> dict:
        return {
            "teachers": [{k: t.meta.get(k) for k in ("path", "sha256", "arch", "epoch")} | {"modality": t.modality}
                         for t in self._teachers],
            "losses": dict(self.weights),
        }

    def start_notes(self) -> list[str]:
        notes = (m.state_note() for ml in self.losses.values() for m in ml)
        return [note for note in notes if note]


class InitStageTask(Task):
    """The init stage of AB/FT/FSP: the sum of their `init_loss`. What it trains is set by run_init_stage (the
    parameters each loss's `init_parameters` names, and the student's with `init_trains_student`)."""

    def __init__(self, task: DistillTask, names: list[str]):
        super().__init__(task.model, task.meta)
        self._parent = [task]
        self.stage_losses = nn.ModuleDict({n: task.losses[n] for n in names})
        self.ddp_find_unused_parameters = True

    def frozen_modules(self) -> list[nn.Module]:
        # The student stays in eval mode, as in RepDistiller's init stage: its BatchNorm layers normalise with
        # their running statistics and do not update them, even when the stage trains the student's weights
        # (AB, FSP); the connectors or paraphraser train in train mode.
        return self._parent[0].frozen_modules() + [self.model]

    def forward(self, batch: dict):
        s_out = self.model(batch[self.meta.modality])
        t_outs = self._parent[0].teacher_outputs(batch)
        total, terms = 0.0, {}
        for name, modules in self.stage_losses.items():
            value = sum(m.init_loss(s_out, t_out, batch) for m, t_out in zip(modules, t_outs))
            total = total + value
            terms[f"init_{name}"] = value.detach()
        return total, terms, s_out["logits"]


def resolve_weights(cfg: DistillConfig) -> dict[str, float]:
    """cfg.losses with null weights replaced by each method's reference default weight."""
    if not cfg.losses:
        raise ConfigError("losses: give at least one loss, e.g. {ce: 1, kd: 1, crd: 0.8}")
    weights = {}
    for name, weight in cfg.losses.items():
        default = get_distiller(name, key=f"losses.{name}").default_weight
        weights[name] = float(default if weight is None else weight)
    if not any(weights.values()):
        raise ConfigError(f"losses: every weight is 0 ({', '.join(weights)}); nothing would train the student")
    for name in cfg.loss_params:
        if name not in weights:
            raise ConfigError(f"loss_params.{name}: {name!r} is not in `losses` ({', '.join(weights)})")
    return weights


def build_distill_task(cfg: DistillConfig, train: PreparedDataset,
                       teachers: Optional[list[TeacherCheckpoint]] = None) -> DistillTask:
    """Student, teachers and distillers for cfg on the training dataset `train` (`teachers`: read_teachers's,
    else they are read here)."""
    weights = resolve_weights(cfg)
    frozen = freeze_teachers(read_teachers(cfg.teachers) if teachers is None else teachers, train.stats)
    needs_teacher = [n for n in weights if get_distiller(n).needs_teacher]
    if needs_teacher and not frozen:
        raise ConfigError(f"losses {', '.join(needs_teacher)} need a teacher; add `teachers: [{{checkpoint: ...}}]`")
    student = build_classifier(cfg.student, train.num_classes, key="student")
    meta = ModelMeta.for_dataset(cfg.student.arch, cfg.student.modality, train, cfg.data.path)
    sample = train[0]
    s_shapes = output_shapes(student, in_chans(cfg.student.modality), tuple(sample[cfg.student.modality].shape[-2:]))
    labels = torch.as_tensor(train.labels, dtype=torch.long)

    def spec(t_shapes: OutputShapes) -> DistillSpec:
        return DistillSpec(s_shapes, t_shapes, len(train), train.num_classes, labels)

    t_specs = [spec(output_shapes(t.model, in_chans(t.modality), tuple(sample[t.modality].shape[-2:])))
               for t in frozen]
    losses, combined = {}, set()
    for name in weights:
        params = dict(cfg.loss_params.get(name, {}))
        cls = get_distiller(name)
        if not cls.needs_teacher:
            losses[name] = nn.ModuleList([build_distiller(name, spec(s_shapes), **params)])
        elif cls.combines_teachers:
            combined.add(name)
            for t_spec in t_specs:  # one instance sees every teacher: each must fit it
                cls.check_spec(t_spec)
            losses[name] = nn.ModuleList([build_distiller(name, t_specs[0], **params)])
        else:
            losses[name] = nn.ModuleList([build_distiller(name, t_spec, **params) for t_spec in t_specs])
    for modules in losses.values():
        for module in modules:
            module.check_training_split(len(train))
    return DistillTask(student, meta, frozen, losses, weights, combined)


def build_distill_datasets(cfg: DistillConfig, teachers: Optional[list[TeacherCheckpoint]] = None):
    """(train, test) datasets holding the student's and every teacher's modality (`teachers`: read_teachers's,
    else they are read here); each teacher's resolved modality is written into cfg (the run's config.yaml)."""
    teachers = read_teachers(cfg.teachers) if teachers is None else teachers
    modalities = [cfg.student.modality]
    for t_cfg, t in zip(cfg.teachers, teachers):
        t_cfg.modality = t.modality
        if t.modality not in modalities:
            modalities.append(t.modality)
    augment = PairedAugment.from_config(cfg.data.augment)
    # The student may learn from unlabeled samples (ce ignores label -1); evaluation needs labels.
    train = PreparedDataset(cfg.data.path, cfg.data.train_split, modalities, augment=augment,
                            preload=cfg.data.preload, labeled_only=False, seed=cfg.seed, decode=cfg.data.decode)
    # Rows labelled -1 are ignored by the engine's evaluation, so the split is read once, as it is.
    test = PreparedDataset(cfg.data.path, cfg.data.test_split, [cfg.student.modality],
                           augment=PairedAugment.eval_from_config(cfg.data.eval_augment), preload=cfg.data.preload,
                           seed=cfg.seed, decode=cfg.data.decode)
    if not (test.labels >= 0).any():
        # RGB-D frames carry no image label: no test accuracy; `crossmodal probe dense` evaluates the student.
        log.info(f"{cfg.data.path}: split {cfg.data.test_split!r} has no labels; training without test accuracy")
        return train, None
    return train, test


def run_init_stage(cfg: DistillConfig, task: DistillTask, train, test, resume: bool) -> bool:
    """Run the init stage of the losses that have one (AB, FT, FSP) in <run>/init/, unless already done; return
    whether the main phase resumes from <run>/last.pt.

    A run killed inside its init stage resumes there (<run>/init/last.pt) and then starts its main phase, which
    has no checkpoint yet; `resume` with no checkpoint of either phase is refused ("nothing to resume")."""
    stage = {n: ml for n, ml in task.losses.items() if ml[0].init_epochs > 0}
    if not stage:
        return resume
    run_dir = run_dir_for(cfg)
    if resume and (run_dir / "last.pt").exists():
        return True  # the main phase has started: its checkpoint holds the initialised state
    epochs = max(ml[0].init_epochs for ml in stage.values())
    trains_student = any(ml[0].init_trains_student for ml in stage.values())
    trainable = {id(p) for ml in stage.values() for m in ml for p in m.init_parameters()}
    if trains_student:
        trainable |= {id(p) for p in task.model.parameters()}
    init_cfg = dataclasses.replace(
        cfg, name=f"{cfg.name}/init",
        optim=dataclasses.replace(cfg.optim, epochs=epochs, schedule="constant", warmup_epochs=0.0,
                                  lr=cfg.init_lr if cfg.init_lr is not None else min(
                                      ml[0].reference_init_lr(cfg.student.arch, cfg.optim.lr) for ml in stage.values())))
    log.info(f"{cfg.name}: init stage of {', '.join(stage)} for {epochs} epochs")
    init_dir = run_dir_for(init_cfg)
    done = (init_dir / "summary.json").exists()
    saved = {p: p.requires_grad for p in task.parameters()}
    for p in task.parameters():
        p.requires_grad_(id(p) in trainable)
    try:
        # A stage that finished earlier (the run stopped before its first main-phase checkpoint) is resumed at its
        # end: its weights, and the RNG the main phase starts from (CRD draws from it), come from init/last.pt,
        # once its fingerprint matches this config's (another teacher or init setting is refused).
        Trainer(InitStageTask(task, list(stage)), train, test, init_cfg, init_dir,
                resume=resume or done).fit()
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)
    return False


def run_distill(cfg: DistillConfig, resume: bool = False) -> dict:
    """Distill cfg.teachers into cfg.student on cfg.data (continuing <run>/last.pt if `resume`); return the summary.

    Under torchrun the run joins the process group and leaves it when it ends (distributed_job)."""
    resolve_weights(cfg)  # a config error is reported before any file is read
    with distributed_job(resolve_device(cfg.engine.device)):
        seed_everything(cfg.seed)
        teachers = read_teachers(cfg.teachers)  # each checkpoint once: weights, metadata and sha256
        train, test = build_distill_datasets(cfg, teachers)
        task = build_distill_task(cfg, train, teachers)
        resume_main = run_init_stage(cfg, task, train, test, resume)
        return Trainer(task, train, test, cfg, run_dir_for(cfg), resume=resume_main).fit()
