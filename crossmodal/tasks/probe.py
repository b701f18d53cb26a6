"""`probe`: score what a checkpoint learned (linear probe, finetune, dense probe, transfer) and compare networks.

    from crossmodal.tasks.probe import ProbeConfig, load_probe_config, run_probe
    results = run_probe(load_probe_config("configs/probe/imagenette_ab_linear.yaml"))
    results["rows"]  # one row per probed network: method, checkpoint, arch, modality, stage, top1, top5, ...

Methods (`method`):
- linear: the network is frozen; features of `stage` ("embedding" or a stage index, pooled) of
  the train split and the test split (no augmentation; `data.eval_augment`'s centre crop on both when set,
  as encoded files of mixed image sizes need) are extracted once, cached on disk, and
  a linear classifier (standardised features, `optim`) is trained on them.
- finetune: the whole network is trained from the checkpoint by the engine (Trainer +
  ClassifierTask), with a new classifier head when the probe data's classes differ.
- dense: segmentation (per-pixel classes, 0 = unlabeled): a light head over frozen stage maps
  (`dense.finetune: true` trains the backbone too). When `data.train_split == data.test_split`
  (NYU as shipped labels only its test frames) the labelled frames are split into `dense.folds`
  folds by frame index; each fold is scored by a head trained on the others.

Transfer is any of these on another prepared file than the checkpoint was trained on.
`input_size` resizes inputs so their shorter side is N ("checkpoint": the training crop size),
None keeps the probe data's size. `stats`: "data" normalises with the probe file's channel
stats (default: each dataset is whitened by its own statistics, which is what a network
trained on whitened inputs expects, and it is the only choice when the checkpoint's training
data is unknown); "checkpoint" uses the checkpoint's, as `distill` does for its teachers.
`random_init: true` adds a row for a randomly initialised network of the same architecture,
probed the same way. Every run writes <out_dir>/<name>/results.json (and config.yaml).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, Optional, Union

import torch
import torch.nn as nn

from crossmodal.config import (REQUIRED, Bound, check_key_path, config_to_dict, from_dict, load_config,
                               parse_override, read_yaml, save_config, set_dotted, at_least)
from crossmodal.data.dataset import PreparedDataset
from crossmodal.data.schema import open_prepared
from crossmodal.data.transforms import PairedAugment
from crossmodal.engine import ModelMeta, Trainer, load_checkpoint, load_model, resolve_device, run_dir_for
from crossmodal.engine import seed_everything
from crossmodal.errors import ConfigError, DataError
from crossmodal.modalities import get_modality, in_chans
from crossmodal.models import build_model
from crossmodal.probe import dense as dense_probe
from crossmodal.probe.diagnostics import correlation_difference, linear_cka, plot_correlation_difference
from crossmodal.probe.features import InputAdapter, cache_key, cached, extract_features, resolve_stage
from crossmodal.probe.linear import evaluate_linear_probe, fit_linear_probe
from crossmodal.probe.report import plot_class_iou, plot_histories, write_json, write_report
from crossmodal.sections import OptimConfig, RunConfig
from crossmodal.tasks.teach import ClassifierTask

log = logging.getLogger("crossmodal")
TINY_FRAMES = 100  # below this many labelled frames the dense scores are called a smoke test


@dataclass
class DenseConfig:
    """The dense (segmentation) probe's head and evaluation protocol."""

    stages: list[int] = field(default_factory=lambda: [-3, -2, -1])  # stage maps fed to the head (stem = 0)
    hidden: int = 0  # 0: per-pixel linear head; N: 1x1 conv to N channels, ReLU, 1x1 conv
    finetune: bool = False  # train the backbone with the head
    folds: int = 2  # k-fold over labelled frames when train_split == test_split

    BOUNDS: ClassVar[dict[str, Bound]] = {"hidden": at_least(0), "folds": at_least(2)}


@dataclass
class ProbeOptimConfig(OptimConfig):
    """OptimConfig with defaults for a probe head (AdamW, cosine); finetuning usually wants its own."""

    name: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-2  # on standardised features; 1e-3 needed several hundred epochs on small splits
    weight_decay: float = 1e-4
    batch_size: int = 256
    epochs: int = 100
    schedule: Literal["step", "cosine", "constant"] = "cosine"


@dataclass
class ProbeConfig(RunConfig):
    """`crossmodal probe`: which checkpoint, which data, which probe."""

    out_dir: str = "runs/probe"
    optim: ProbeOptimConfig = field(default_factory=ProbeOptimConfig)  # the probe head's (or finetuning's)
    method: Literal["linear", "finetune", "dense"] = "linear"
    checkpoint: str = REQUIRED  # a best.pt / last.pt of teach, distill or probe finetune
    modality: Optional[str] = None  # default: the modality the checkpoint was trained on
    stage: Union[int, str] = "embedding"  # linear: "embedding" or a stage index (pooled)
    standardize: bool = True  # linear: standardise features with the train split's mean/std
    random_init: bool = False  # add a randomly initialised network of the same architecture
    input_size: Union[int, str, None] = None  # resize the shorter side to N; "checkpoint": its training size
    stats: Literal["data", "checkpoint"] = "data"  # channel stats that normalise the probe's inputs
    cache_dir: Optional[str] = None  # linear feature cache; default <out_dir>/feature_cache
    report: Optional[str] = None  # also write <report>/report.md with the table and plots
    dense: DenseConfig = field(default_factory=DenseConfig)


@dataclass
class Subject:
    """One network being probed: the checkpoint's, or a random init of its architecture."""

    label: str  # the checkpoint path, or "random-init"
    model: nn.Module
    network_id: str  # cache key part: the checkpoint's sha256 or the random init's recipe


# ----------------------------------------------------------------------------- config


def load_probe_config(path: Optional[str | Path] = None, overrides=(), method: Optional[str] = None) -> ProbeConfig:
    """ProbeConfig from a YAML file and/or overrides ('a.b=c' or (key, value)); `method` is the subcommand's."""
    overrides = list(overrides) + ([("method", method)] if method else [])
    if path is not None:
        raw = read_yaml(path)
        if method and isinstance(raw, dict) and raw.get("method", method) != method:
            raise ConfigError(f"{path}: says method {raw['method']!r}; run `crossmodal probe {raw['method']} {path}`")
        return load_config(path, ProbeConfig, overrides)
    raw: dict = {}
    for key, value in (parse_override(o) for o in overrides):
        check_key_path(ProbeConfig, key, f"--set {key}")
        set_dotted(raw, key, value, f"--set {key}")
    if not raw.get("checkpoint"):
        raise ConfigError("no checkpoint: pass --checkpoint PATH (or a CONFIG file with `checkpoint:`)")
    if not (raw.get("data") or {}).get("path"):
        raise ConfigError("no data: pass --data FILE.h5 (or a CONFIG file with `data: {path: ...}`)")
    if not raw.get("name"):
        ckpt = Path(raw["checkpoint"])
        raw["name"] = f"{ckpt.parent.name or ckpt.stem}_{raw.get('method', 'linear')}"
    return from_dict(ProbeConfig, raw, source="command line")


def resolve_input_size(value, checkpoint: str | Path) -> Optional[int]:
    """None, N, or "checkpoint" (its training crop size, else its training file's image size) -> a side or None."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        if value is not None and value <= 0:
            raise ConfigError(f"input_size must be a positive int, 'checkpoint' or null, got {value}")
        return value
    if str(value).isdigit():
        return resolve_input_size(int(value), checkpoint)
    if value != "checkpoint":
        raise ConfigError(f"input_size {value!r}: use a positive int, 'checkpoint' or null")
    ckpt = load_checkpoint(checkpoint)
    data = (ckpt.get("config") or {}).get("data") or {}
    augment = data.get("augment") or {}
    size = augment.get("crop") or augment.get("random_resized_crop")
    if size:
        return int(size)
    meta = ckpt.get("meta") or {}
    train_path = Path(meta.get("data_path", ""))
    if train_path.is_file():
        f, summary = open_prepared(train_path)
        f.close()
        split = summary["splits"].get(data.get("train_split", "train")) or next(iter(summary["splits"].values()))
        shape = split["modalities"].get(meta.get("modality")) or next(iter(split["modalities"].values()))
        return int(min(shape[1:]))
    raise ConfigError(f"input_size 'checkpoint': {checkpoint} records no crop size and its training file "
                      f"{str(train_path)!r} is not here; set input_size to the training image size")


# ----------------------------------------------------------------------------- shared setup


class _Setup:
    """What every probe method needs: device, the probed networks, the modality, input adaptation."""

    def __init__(self, cfg: ProbeConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.engine.device)
        model, self.meta = load_model(cfg.checkpoint)
        self.modality = cfg.modality or self.meta["modality"]
        get_modality(self.modality)
        self.in_chans = self.meta["in_chans"]
        if in_chans(self.modality) != self.in_chans:
            raise ConfigError(f"modality {self.modality!r} has {in_chans(self.modality)} channels but {cfg.checkpoint} "
                              f"reads {self.in_chans} ({self.meta['modality']!r}); probe it on its own modality")
        self.input_size = resolve_input_size(cfg.input_size, cfg.checkpoint)
        self.subjects = [Subject(str(cfg.checkpoint), model, self.meta["sha256"])]
        if cfg.random_init:
            seed_everything(cfg.seed)
            random_model = build_model(self.meta["arch"], in_chans=self.in_chans, num_classes=self.meta["num_classes"])
            recipe = f"random-init:{self.meta['arch']}:{self.in_chans}:{self.meta['num_classes']}:seed{cfg.seed}"
            self.subjects.append(Subject("random-init", random_model.eval(), f"{recipe}:torch{torch.__version__}"))

    def model_stats(self) -> dict:
        """The channel stats the checkpoint was trained with, for the probe's modality."""
        stats = self.meta["stats"]
        return stats.get(self.modality) or stats[self.meta["modality"]]

    def adapter(self, data_stats: dict) -> InputAdapter:
        """The InputAdapter of cfg.input_size and cfg.stats for a dataset normalised with `data_stats`."""
        model_stats = self.model_stats() if self.cfg.stats == "checkpoint" else None
        return InputAdapter(self.modality, self.input_size, data_stats, model_stats)

    def row(self, subject: Subject, stage: str) -> dict:
        """The identifying columns of a result row."""
        return {"method": self.cfg.method, "checkpoint": subject.label, "arch": self.meta["arch"],
                "modality": self.modality, "stage": stage}

    def notes(self) -> list[str]:
        """Lines that say how the probe read the data (transfer, resize, stats)."""
        trained_on, probed_on = self.meta.get("data_path", ""), self.cfg.data.path
        notes = [f"checkpoint {self.cfg.checkpoint} ({self.meta['arch']}, {self.meta['modality']}, "
                 f"sha256 {self.meta['sha256'][:12]}), trained on {trained_on or 'unknown data'}"]
        if trained_on and Path(trained_on).resolve() != Path(probed_on).resolve():
            notes.append(f"transfer: probed on {probed_on}, another file than the training data")
        if self.input_size is not None:
            notes.append(f"inputs resized so the shorter side is {self.input_size} px")
        notes.append(f"inputs normalised with the {'probe data' if self.cfg.stats == 'data' else 'checkpoint'}'s "
                     "channel stats")
        return notes


def _finish(cfg: ProbeConfig, rows: list[dict], notes: list[str], images: list[Path], extra: dict) -> dict:
    """Write results.json (+ config.yaml, + report.md when cfg.report) and return the results."""
    run_dir = run_dir_for(cfg)
    results = {"name": cfg.name, "method": cfg.method, "run_dir": str(run_dir), "data": cfg.data.path,
               "rows": rows, "notes": notes, **extra, "config": config_to_dict(cfg)}
    save_config(cfg, run_dir / "config.yaml")
    write_json(run_dir / "results.json", results)
    if cfg.report:
        results["report"] = str(write_report(cfg.report, f"{cfg.method} probe: {cfg.name}", rows, notes, images))
    return results


# ----------------------------------------------------------------------------- methods


def run_linear(cfg: ProbeConfig) -> dict:
    """Linear probe on cached frozen features of cfg.stage; returns the results (see run_probe)."""
    setup = _Setup(cfg)
    # Both splits through the evaluation transform (data.eval_augment: a centre crop, or none): features
    # are extracted once from fixed inputs, never from random crops.
    transform = PairedAugment.eval_from_config(cfg.data.eval_augment)
    common = dict(modalities=[setup.modality], labeled_only=True, preload=cfg.data.preload, seed=cfg.seed,
                  augment=transform)
    train = PreparedDataset(cfg.data.path, cfg.data.train_split, **common)
    test = PreparedDataset(cfg.data.path, cfg.data.test_split, **common)
    described = None if transform is None else f"center_crop {transform.center_crop} of {transform.crop_fraction:g}"
    adapter = setup.adapter(train.stats[setup.modality])
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.out_dir) / "feature_cache"
    rows, histories, cache_hits = [], {}, []
    for subject in setup.subjects:
        model = subject.model.to(setup.device)
        with torch.no_grad():
            probe_input = adapter(train[0][setup.modality][None]).to(setup.device)
            stage = resolve_stage(cfg.stage, len(model.eval()(probe_input)["features"]))
        entries = {}
        for split, dataset in (("train", train), ("test", test)):

            def extract(dataset=dataset, label=subject.label) -> dict:
                log.info(f"{cfg.name}: extracting features of {label} on {dataset.split} ({len(dataset)} samples)")
                return extract_features(model, dataset, setup.modality, stage, adapter, setup.device,
                                        cfg.optim.batch_size, cfg.data.workers)

            key = cache_key(subject.network_id, cfg.data.path, dataset.split, setup.modality, stage, adapter,
                            described)
            entries[split], hit = cached(cache_dir, key, extract)
            cache_hits.append(hit)
        probe, history = fit_linear_probe(entries["train"]["features"], entries["train"]["labels"], train.num_classes,
                                          cfg.optim, cfg.seed, setup.device, cfg.standardize)
        scores = evaluate_linear_probe(probe, entries["test"]["features"], entries["test"]["labels"])
        rows.append({**setup.row(subject, str(stage)), **scores, "train_top1": history[-1]["train_top1"],
                     "feature_dim": int(entries["train"]["features"].shape[1])})
        histories[subject.label] = history
        subject.model.cpu()
    notes = setup.notes() + [f"features cached in {cache_dir} ({sum(cache_hits)} of {len(cache_hits)} reused)",
                             f"{len(train)} train / {len(test)} test samples, {train.num_classes} classes"]
    plot = plot_histories(histories, run_dir_for(cfg) / "linear_probe_loss.png", f"linear probe: {cfg.name}")
    return _finish(cfg, rows, notes, [plot], {"cache_hits": cache_hits})


class _AdaptedClassifierTask(ClassifierTask):
    """ClassifierTask whose inputs go through an InputAdapter (resize, re-normalisation) first."""

    def __init__(self, model: nn.Module, meta: ModelMeta, adapter: InputAdapter, label_smoothing: float):
        super().__init__(model, meta, label_smoothing)
        self.adapter = adapter

    def _adapt(self, batch: dict) -> dict:
        return {**batch, self.meta.modality: self.adapter(batch[self.meta.modality])}

    def forward(self, batch: dict):
        return super().forward(self._adapt(batch))

    def evaluation_step(self, batch: dict) -> torch.Tensor:
        return super().evaluation_step(self._adapt(batch))


def with_class_head(model: nn.Module, arch: str, channels: int, old_names: list[str],
                    new_names: list[str]) -> nn.Module:
    """`model` when it already classifies `new_names`, else a copy with a freshly initialised head for them."""
    if list(old_names) == list(new_names):
        return model
    fresh = build_model(arch, in_chans=channels, num_classes=len(new_names))
    head_ids = {id(p) for p in fresh.classifier.parameters()}
    head = {name for name, p in fresh.named_parameters() if id(p) in head_ids}
    body = {k: v for k, v in model.state_dict().items() if k not in head}
    missing, unexpected = fresh.load_state_dict(body, strict=False)
    if set(missing) != head or unexpected:
        raise ConfigError(f"cannot replace the classifier head of {arch!r} "
                          f"(missing {missing}, unexpected {unexpected})")
    return fresh


def run_finetune(cfg: ProbeConfig, resume: bool = False) -> dict:
    """Train the whole network from the checkpoint (and a random init, if asked) through the engine."""
    setup = _Setup(cfg)
    augment = PairedAugment.from_config(cfg.data.augment)
    common = dict(modalities=[setup.modality], labeled_only=True, preload=cfg.data.preload, seed=cfg.seed,
                  decode=cfg.data.decode)
    train = PreparedDataset(cfg.data.path, cfg.data.train_split, augment=augment, **common)
    test = PreparedDataset(cfg.data.path, cfg.data.test_split,
                           augment=PairedAugment.eval_from_config(cfg.data.eval_augment), **common)
    data_stats = train.stats[setup.modality]
    # The exported network expects inputs normalised as it saw them in this run.
    seen_stats = setup.model_stats() if cfg.stats == "checkpoint" else data_stats
    meta = ModelMeta(arch=setup.meta["arch"], modality=setup.modality, in_chans=setup.in_chans,
                     num_classes=train.num_classes, class_names=list(train.class_names), data_path=cfg.data.path,
                     stats={setup.modality: seen_stats})
    rows, base = [], run_dir_for(cfg)
    for subject in setup.subjects:
        model = with_class_head(subject.model, meta.arch, meta.in_chans, setup.meta["class_names"], meta.class_names)
        task = _AdaptedClassifierTask(model, meta, setup.adapter(data_stats), cfg.optim.label_smoothing)
        run_cfg = cfg if subject is setup.subjects[0] else dataclasses.replace(cfg, name=f"{cfg.name}/random_init")
        run_dir = run_dir_for(run_cfg)
        seed_everything(cfg.seed)
        summary = Trainer(task, train, test, run_cfg, run_dir,
                          resume=resume and (subject is setup.subjects[0] or (run_dir / "last.pt").exists())).fit()
        rows.append({**setup.row(subject, "all"), "top1": summary["final_test_top1"],
                     "top5": summary["final_test_top5"], "best_top1": summary["best_test_top1"],
                     "finetuned_checkpoint": str(run_dir / "best.pt"), "epochs": summary["epochs"]})
    notes = setup.notes() + [f"finetuned {cfg.optim.epochs} epochs; top-1/top-5 of the last epoch "
                             f"(best.pt is the epoch of best test top-1)",
                             f"{len(train)} train / {len(test)} test samples, {train.num_classes} classes"]
    curves = [p for p in (base / "curves.png",) if p.exists()]
    return _finish(cfg, rows, notes, curves, {})


def _labelled_frames(dataset: PreparedDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs (n, C, H, W), segmentation (n, H, W)) of the frames with at least one labelled pixel."""
    samples = [dataset[i] for i in range(len(dataset))]
    keep = [s for s in samples if bool((s["segmentation"] > 0).any())]
    if not keep:
        raise DataError(f"{dataset.path}: split {dataset.split!r} has no labelled pixel (segmentation all 0); "
                        "NYU labels only its test frames: set data.train_split to the test split (k-fold)")
    modality = dataset.modalities[0]
    return torch.stack([s[modality] for s in keep]), torch.stack([s["segmentation"] for s in keep])


@dataclass
class _DenseData:
    """Labelled frames as the network reads them, their labels, and the folds that score them."""

    inputs: torch.Tensor  # (N, C, h, w), normalised and adapted
    targets: torch.Tensor  # (N, H, W) raw segmentation, 0 = unlabeled
    folds: list  # [(train indices, test indices)]
    protocol: str
    class_names: list[str]


def _dense_data(cfg: ProbeConfig, setup: _Setup, batch: int) -> _DenseData:
    """Load the labelled frames of cfg.data's splits; k-fold them by index when train and test split are one."""
    f, summary = open_prepared(cfg.data.path)
    f.close()
    for split in {cfg.data.train_split, cfg.data.test_split}:
        info = summary["splits"].get(split)
        if info is not None and not info["has_segmentation"]:
            raise DataError(f"{cfg.data.path}: split {split!r} has no segmentation; the dense probe needs per-pixel "
                            "labels (prepare an RGB-D source with --labels, e.g. NYU)")
    load = dict(modalities=[setup.modality], with_segmentation=True, preload=cfg.data.preload, seed=cfg.seed)
    train = PreparedDataset(cfg.data.path, cfg.data.train_split, **load)
    inputs, targets = _labelled_frames(train)
    if cfg.data.test_split == cfg.data.train_split:
        k = cfg.dense.folds
        folds = dense_probe.kfold_by_index(len(targets), k)
        protocol = (f"{len(targets)} labelled frames of split {train.split!r}, {k}-fold by frame index "
                    f"(fold f tests frames i with i % {k} == f, trains on the rest); each frame is tested once")
    else:
        test_inputs, test_targets = _labelled_frames(PreparedDataset(cfg.data.path, cfg.data.test_split, **load))
        folds = [(torch.arange(len(targets)), len(targets) + torch.arange(len(test_targets)))]
        protocol = (f"train on {len(targets)} labelled frames of {cfg.data.train_split!r}, "
                    f"test on {len(test_targets)} of {cfg.data.test_split!r}")
        inputs, targets = torch.cat([inputs, test_inputs]), torch.cat([targets, test_targets])
    adapter = setup.adapter(train.stats[setup.modality])
    with torch.no_grad():
        inputs = torch.cat([adapter(x) for x in inputs.split(batch)])
    class_names = dense_probe.segmentation_class_names(train.class_names, int(targets.max()))
    return _DenseData(inputs, targets, folds, protocol, class_names)


def _dense_scores(cfg: ProbeConfig, setup: _Setup, data: _DenseData, backbone: nn.Module, stages: list[int],
                  batch: int) -> tuple[dict, dict]:
    """Train one head per fold over `backbone`'s stage maps; (scores of the summed confusion, histories)."""
    device, num_classes = setup.device, len(data.class_names)
    out_size = tuple(data.targets.shape[-2:])
    frozen_maps = None
    if not cfg.dense.finetune:
        with torch.no_grad():  # the frozen backbone runs once; every fold reuses its maps
            per_batch = [dense_probe.stage_maps(backbone, x.to(device), stages) for x in data.inputs.split(batch)]
            frozen_maps = [torch.cat([b[i] for b in per_batch]) for i in range(len(stages))]
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    histories = {}
    for fold, (train_index, test_index) in enumerate(data.folds):
        torch.manual_seed(cfg.seed + fold)
        net = backbone if frozen_maps is not None else copy.deepcopy(backbone)

        def maps_of(index: torch.Tensor, training: bool, net=net) -> list[torch.Tensor]:
            if frozen_maps is not None:
                return [m[index] for m in frozen_maps]
            net.train(training)
            with torch.set_grad_enabled(training):
                return dense_probe.stage_maps(net, data.inputs[index].to(device), stages)

        channels = [m.shape[1] for m in maps_of(train_index[:1], False)]
        head = dense_probe.DenseHead(channels, num_classes, cfg.dense.hidden).to(device)
        params = list(head.parameters()) + (list(net.parameters()) if frozen_maps is None else [])
        histories[fold] = dense_probe.fit_dense_head(head, maps_of, data.targets, train_index, cfg.optim, params,
                                                     cfg.seed + fold, device)
        pred = dense_probe.predict_dense(head, maps_of, test_index, out_size, batch)  # (n, H, W)
        confusion += dense_probe.confusion_matrix(pred, data.targets[test_index], num_classes)
    return dense_probe.segmentation_scores(confusion, data.class_names), histories


def run_dense(cfg: ProbeConfig) -> dict:
    """Dense probe (pixel accuracy, mIoU) of frozen or finetuned stage maps; k-fold on one split."""
    setup = _Setup(cfg)
    batch = max(1, min(cfg.optim.batch_size, 32))  # inference batch
    data = _dense_data(cfg, setup, batch)
    rows, class_iou, histories = [], {}, {}
    for subject in setup.subjects:
        backbone = subject.model.to(setup.device).eval()
        with torch.no_grad():
            num_maps = len(backbone(data.inputs[:1].to(setup.device))["features"])
        stages = [resolve_stage(s, num_maps) for s in cfg.dense.stages]
        scores, fold_histories = _dense_scores(cfg, setup, data, backbone, stages, batch)
        stage_text = "+".join(map(str, stages)) + (" (finetuned)" if cfg.dense.finetune else "")
        rows.append({**setup.row(subject, stage_text), "pixel_acc": scores["pixel_acc"], "miou": scores["miou"],
                     "class_iou": scores["class_iou"], "labelled_pixels": scores["labelled_pixels"]})
        class_iou[subject.label] = scores["class_iou"]
        histories.update({f"{subject.label} fold {k}": h for k, h in fold_histories.items()})
        subject.model.cpu()
    tested = sum(len(test) for _, test in data.folds)
    notes = setup.notes() + [data.protocol, f"{len(data.class_names)} classes, label 0 (unlabeled) ignored; mIoU "
                                            "over the classes present in the tested ground truth"]
    if tested < TINY_FRAMES:
        notes.append(f"TINY evaluation: {tested} test frames; a smoke test of the pipeline, not a benchmark")
    images = [plot_class_iou(class_iou, run_dir_for(cfg) / "class_iou.png"),
              plot_histories(histories, run_dir_for(cfg) / "dense_probe_loss.png", f"dense probe: {cfg.name}")]
    return _finish(cfg, rows, notes, images, {"protocol": data.protocol, "class_names": data.class_names})


def refuse_overwrite(paths, force: bool) -> None:
    """ConfigError naming the first of `paths` that exists, unless `force`: outputs are replaced only on request."""
    if force:
        return
    for path in paths:
        if Path(path).exists():
            raise ConfigError(f"{path} already exists (an earlier probe's output); pass --force to replace it, or "
                              f"--name / --out-dir to write elsewhere")


def probe_outputs(cfg: ProbeConfig) -> list[Path]:
    """The files a probe run replaces: its results.json, and report.md when cfg.report is set."""
    return [run_dir_for(cfg) / "results.json"] + ([Path(cfg.report) / "report.md"] if cfg.report else [])


def compare_outputs(out_dir: str | Path) -> list[Path]:
    """The files `run_compare` writes into out_dir."""
    return [Path(out_dir) / name for name in ("compare.json", "report.md", "correlation_difference.png")]


def run_probe(cfg: ProbeConfig, resume: bool = False) -> dict:
    """Run cfg.method; return {"rows": [...], "notes": [...], "run_dir", ...} (also written to results.json)."""
    if cfg.method == "finetune":
        return run_finetune(cfg, resume=resume)
    if resume:
        raise ConfigError(f"--resume applies to finetune only; a {cfg.method} probe simply runs again")
    return run_linear(cfg) if cfg.method == "linear" else run_dense(cfg)


# ----------------------------------------------------------------------------- compare


def run_compare(teacher: str | Path, student: str | Path, data: str | Path, out_dir: str | Path,
                split: str = "test", device: str = "auto", batch_size: int = 256, workers: int = 0) -> dict:
    """Logit-correlation difference (CRD Fig. 2) and linear CKA of two checkpoints on one split; writes out_dir."""
    if batch_size < 1 or workers < 0:
        raise ConfigError(f"--batch-size must be >= 1 and --workers >= 0, got {batch_size} and {workers}")
    torch_device = resolve_device(device)
    networks = [load_model(teacher), load_model(student)]
    (_, t_meta), (_, s_meta) = networks
    if t_meta["num_classes"] != s_meta["num_classes"]:
        raise ConfigError(f"{teacher} has {t_meta['num_classes']} classes, {student} has {s_meta['num_classes']}; "
                          "the logit correlations of different class sets cannot be compared")
    modalities = list(dict.fromkeys([t_meta["modality"], s_meta["modality"]]))
    dataset = PreparedDataset(data, split, modalities, labeled_only=False)
    outputs = []
    for model, meta in networks:
        # Each network sees its inputs normalised as in its own training, as distill feeds teachers.
        adapter = InputAdapter(meta["modality"], None, dataset.stats[meta["modality"]], meta["stats"][meta["modality"]])
        outputs.append(extract_features(model.to(torch_device), dataset, meta["modality"], "embedding", adapter,
                                        torch_device, batch_size, workers))
    t_out, s_out = outputs
    diff = correlation_difference(t_out["logits"], s_out["logits"])  # (C, C)
    out_dir = Path(out_dir)
    result = {
        "teacher": str(teacher), "student": str(student), "data": str(data), "split": split, "samples": len(dataset),
        "teacher_arch": t_meta["arch"], "student_arch": s_meta["arch"],
        "teacher_modality": t_meta["modality"], "student_modality": s_meta["modality"],
        "mean_abs_correlation_difference": diff.mean().item(),
        "cka_embedding": linear_cka(t_out["features"], s_out["features"]),
        "cka_logits": linear_cka(t_out["logits"], s_out["logits"]),
    }
    plot = plot_correlation_difference(diff.float(), out_dir / "correlation_difference.png", t_meta["class_names"])
    body = ("| teacher | student | mean abs corr. difference | CKA (embedding) | CKA (logits) |\n"
            "|---|---|---|---|---|\n"
            f"| {teacher} | {student} | {result['mean_abs_correlation_difference']:.4f} | "
            f"{result['cka_embedding']:.4f} | {result['cka_logits']:.4f} |")
    notes = [f"{len(dataset)} samples of split {split!r} of {data}",
             "correlation difference: |corr(teacher logits) - corr(student logits)| over classes (CRD Fig. 2); "
             "lower is closer", "linear CKA (Kornblith et al. 2019): 1 = same representation up to rotation and scale"]
    title = f"teacher vs student: {Path(student).parent.name or student}"
    result["report"] = str(write_report(out_dir, title, [], notes, [plot], [("Similarity to the teacher", body)]))
    write_json(out_dir / "compare.json", result)
    return result
