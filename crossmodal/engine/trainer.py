"""The one training loop, for teach, distill and finetune alike.

    seed_everything(cfg.seed)                       # before building the model: init is seeded
    task = ClassifierTask(model, meta)              # any crossmodal.engine.Task
    summary = Trainer(task, train_ds, test_ds, cfg, run_dir, resume=False).fit()

`cfg` is any run config with the RunConfig sections (`data`, `optim`, `engine`, `seed`,
`name`). Per epoch the loop trains on the (seed, epoch) permutation of the training split,
evaluates top-1/top-5 on the test split, and on rank 0 writes last.pt (atomic), best.pt (by test
top-1), metrics.csv, TensorBoard events, curves.png and, at the end, summary.json. Accuracies
are percentages.

Reproducibility: the sample order (BlockDistributedSampler) and the augmentations (the
dataset's (seed, epoch, index) randomness) depend on nothing else, the DataLoader gets its own
generator, and last.pt holds the torch RNG states, so a run resumed from last.pt ends with the
weights of an uninterrupted run (bitwise on CPU). The optimiser steps the lr schedule once per
iteration (crossmodal.engine.optim).

Fast path (GPU): with `data.device_resident` the splits live on the device and the batches are made
there (crossmodal.data.device_data: the loader's samples, bit for bit); with `engine.cuda_graph` the
step is replayed as one captured CUDA graph (crossmodal.engine.step). Both are `auto`: on where they
apply, off on the CPU. The step's losses and hits are summed on the device and read every
`engine.log_every` steps and once at the epoch's end.
"""
from __future__ import annotations

import math
import os
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import crossmodal
from crossmodal.config import config_to_dict, save_config
from crossmodal.data.device_data import DeviceBatches, DeviceEvalLoader, DeviceSplit, use_device_resident
from crossmodal.distributed import all_reduce_sum
from crossmodal.engine import checkpoint as ckpt_io
from crossmodal.engine import rundir
from crossmodal.engine.distributed import (BlockDistributedSampler, DistInfo, ShardSampler, cleanup_distributed,
                                          init_distributed, launched_by_torchrun)
from crossmodal.engine.logging import RunLogger, get_logger
from crossmodal.engine.optim import build_optimizer, build_scheduler
from crossmodal.engine.step import CapturedStep, EagerStep, autocast_factory, cuda_graph_plan
from crossmodal.engine.task import Task
from crossmodal.errors import ConfigError, CrossmodalError

log = get_logger()
EVAL_BATCH_CUDA = 1024  # test batch of the device-resident path on CUDA


class TrainingDiverged(CrossmodalError):
    """The loss became NaN or infinite."""


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (every device); call before building models so their init is reproducible."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda, then mps, then cpu; otherwise the named device, checked to exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"engine.device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"engine.device {name!r}: CUDA is not available here; use engine.device=cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"engine.device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"engine.device {name!r}: MPS is not available here; use engine.device=cpu")
    return device


def run_dir_for(cfg) -> Path:
    """Where a run writes: <out_dir>/<name>, kept inside out_dir (crossmodal.engine.rundir)."""
    return rundir.run_dir_for(cfg)


class _EpochTagged(Dataset):
    """Sets the dataset's epoch per item, so persistent workers see the current epoch's augmentations."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]

    def __getitems__(self, keys):
        """A batch's samples through the dataset's batched fetch when it has one (all keys share one epoch)."""
        fetch = getattr(type(self.dataset), "__getitems__", None)  # the class's own, not a wrapper's delegation
        if fetch is None or len({epoch for epoch, _ in keys}) != 1:
            return [self[key] for key in keys]
        self.dataset.set_epoch(keys[0][0])
        return fetch(self.dataset, [index for _, index in keys])


class _EpochTaggedSampler(torch.utils.data.Sampler):
    """Yields (epoch, index) pairs of a BlockDistributedSampler."""

    def __init__(self, sampler: BlockDistributedSampler):
        self.sampler = sampler

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        epoch = self.sampler.epoch
        return ((epoch, i) for i in self.sampler)


class Trainer:
    """Trains `task` on `train_dataset`, evaluates on `test_dataset`, writes the run dir; see the module doc."""

    def __init__(self, task: Task, train_dataset, test_dataset, cfg, run_dir: str | Path,
                 resume: bool | str | Path = False):
        self.task, self.cfg, self.run_dir = task, cfg, Path(run_dir)
        self.train_dataset, self.test_dataset = train_dataset, test_dataset
        self.resume_path = (self.run_dir / "last.pt") if resume is True else (Path(resume) if resume else None)
        engine = cfg.engine
        device = resolve_device(engine.device)
        # A Trainer used directly under torchrun joins the job itself; it then leaves it when fit() ends. A group
        # joined before (by run_teach / run_distill, or the caller) is not its own and stays.
        self._leave_group_after_fit = launched_by_torchrun() and not torch.distributed.is_initialized()
        self.dist: DistInfo = init_distributed(device)
        if device.type == "cuda" and self.dist.distributed:
            device = torch.device("cuda", self.dist.local_rank)
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        self.device = device
        if engine.precision == "fp16" and device.type != "cuda":
            raise ConfigError(f"engine.precision fp16 needs CUDA (device is {device}); use bf16 or fp32")
        if engine.sync_bn and self.dist.distributed and device.type != "cuda":
            raise ConfigError("engine.sync_bn needs CUDA (SyncBatchNorm); on CPU/gloo use a model without BatchNorm")
        self._configure_determinism(engine.deterministic)

    # ------------------------------------------------------------------ setup

    def _configure_determinism(self, deterministic: bool) -> None:
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def _prepare_modules(self) -> None:
        """Place the task and the frozen modules; SyncBN, channels_last, compile, DDP as configured."""
        engine, task = self.cfg.engine, self.task
        if engine.sync_bn and self.dist.distributed:
            nn.SyncBatchNorm.convert_sync_batchnorm(task)
        memory_format = torch.channels_last if engine.channels_last else torch.preserve_format
        task.to(self.device, memory_format=memory_format)
        for module in task.frozen_modules():
            module.to(self.device, memory_format=memory_format).eval()
        if engine.compile:
            task.model.compile()  # in place: state_dict keys stay those of the plain model
        self.step_module = task
        if self.dist.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # Buffers (BN statistics, CRD memories) are not broadcast every step: memories stay equal
            # by construction and BN statistics are synchronised before evaluation and saving.
            # `broadcast_buffers` is deprecated in torch 2.14 for `forward_sync_buffers`, which older
            # supported versions (>= 2.4) lack and which would also broadcast them once here; the
            # behaviour every supported version shares is kept, without its warning at every run.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
                self.step_module = nn.parallel.DistributedDataParallel(
                    task, device_ids=device_ids, broadcast_buffers=False,
                    find_unused_parameters=getattr(task, "ddp_find_unused_parameters", False))

    def _loaders(self) -> None:
        cfg, dist = self.cfg, self.dist
        workers = cfg.data.workers
        common = dict(num_workers=workers, pin_memory=self.device.type == "cuda",
                      persistent_workers=workers > 0)
        self.train_sampler = BlockDistributedSampler(
            len(self.train_dataset), cfg.optim.batch_size, dist.rank, dist.world_size, seed=cfg.seed,
            max_batches=cfg.engine.max_steps_per_epoch)
        local_batch = self.train_sampler.local_batch
        self.steps_per_epoch = self.train_sampler.num_batches
        self.device_resident, self.device_resident_why = use_device_resident(
            cfg.data.device_resident, self.train_dataset, self.device, self.test_dataset)
        if self.device_resident:
            # The same samples as the loader's, made on the device (crossmodal.data.device_data).
            channels_last = cfg.engine.channels_last
            self.train_split = DeviceSplit(self.train_dataset, self.device, channels_last)
            self.train_loader = None
            shard = ShardSampler(len(self.test_dataset), dist.rank, dist.world_size) if self.test_dataset else None
            # On a GPU the test pass takes batches of EVAL_BATCH_CUDA (eval mode: no batch statistics), so
            # it costs a few launches per epoch rather than one per training-sized batch.
            eval_batch = max(local_batch, EVAL_BATCH_CUDA) if self.device.type == "cuda" else local_batch
            self.test_loader = None if shard is None else DeviceEvalLoader(
                DeviceSplit(self.test_dataset, self.device, channels_last), eval_batch, shard.start, shard.stop)
            return
        for dataset in (self.train_dataset, self.test_dataset):
            if getattr(dataset, "decode", "cpu") == "cuda" and self.device.type != "cuda":
                raise ConfigError(f"data.decode cuda decodes on the training GPU; the device is {self.device} "
                                  f"(set data.decode: cpu)")
        # Own generator: the loader must not consume the global RNG that the checkpoint restores.
        self.train_loader = DataLoader(_EpochTagged(self.train_dataset), batch_size=local_batch,
                                       sampler=_EpochTaggedSampler(self.train_sampler),
                                       generator=torch.Generator().manual_seed(cfg.seed),
                                       collate_fn=getattr(self.train_dataset, "collate_fn", None), **common)
        self.test_loader = None if self.test_dataset is None else DataLoader(
            self.test_dataset, batch_size=local_batch,
            sampler=ShardSampler(len(self.test_dataset), dist.rank, dist.world_size),
            collate_fn=getattr(self.test_dataset, "collate_fn", None), **common)

    def _train_batches(self, epoch: int):
        """The epoch's training batches, on the device (set the sampler's and dataset's epoch first)."""
        if self.device_resident:
            order = torch.tensor(list(self.train_sampler), dtype=torch.int64).view(self.steps_per_epoch, -1)
            return DeviceBatches(self.train_split, order, epoch)
        return (self._to_device(batch, self.train_dataset) for batch in self.train_loader)

    def _autocast(self):
        return autocast_factory(self.device, self.cfg.engine.precision)()

    def _build_step(self) -> None:
        """The optimiser and the training step: captured as a CUDA graph where engine.cuda_graph allows."""
        cfg = self.cfg
        self.capture, self.capture_why = cuda_graph_plan(cfg.engine.cuda_graph, self.device, self.dist.distributed,
                                                         cfg.engine, cfg.optim, self.task)
        self.optimizer = build_optimizer(self.params, cfg.optim, fused=self.capture)
        if self.capture:
            self.step = CapturedStep(self.step_module, self.optimizer, self.params, cfg.optim.grad_clip,
                                     autocast_factory(self.device, cfg.engine.precision, cache_enabled=False),
                                     strict=cfg.engine.cuda_graph is True)
        else:
            self.step = EagerStep(self.step_module, self.optimizer, self.params, cfg.optim.grad_clip,
                                  self._autocast, self.scaler)

    def _to_device(self, batch: dict, dataset=None) -> dict:
        """The batch on the device; a dataset with a device_transform (data.decode cuda) makes its tensors there."""
        channels_last = self.cfg.engine.channels_last
        transform = getattr(dataset, "device_transform", None)
        if transform is not None:
            batch = transform(batch, self.device)
        out = {}
        for key, value in batch.items():
            value = value.to(self.device, non_blocking=True)
            if channels_last and value.ndim == 4 and value.is_floating_point():
                value = value.contiguous(memory_format=torch.channels_last)
            out[key] = value
        return out

    # ------------------------------------------------------------------ state

    def _state(self, epoch: int) -> dict:
        """Everything needed to continue after `epoch` completed epochs (plain data only)."""
        model_keys = {"model." + k for k in self.task.model.state_dict()}
        return {
            "format": ckpt_io.FORMAT, "version": ckpt_io.VERSION, "crossmodal_version": crossmodal.__version__,
            "epoch": epoch,
            "model": self.task.model.state_dict(),
            "task": {k: v for k, v in self.task.state_dict().items() if k not in model_keys},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": ckpt_io.capture_rng(),
            "config": config_to_dict(self.cfg),
            "metrics": self.metrics, "best_top1": self.best_top1, "best_epoch": self.best_epoch,
            "meta": self.task.meta.to_dict(),
            "task_meta": self.task.checkpoint_meta(),
        }

    def _restore(self, path: Path) -> int:
        """Load a checkpoint written by `_state`; return the number of completed epochs."""
        state = ckpt_io.load_checkpoint(path, map_location=self.device)
        saved_arch = state["meta"]["arch"]
        if saved_arch != self.task.meta.arch:
            raise ConfigError(f"{path}: was trained as {saved_arch!r}, the config asks for "
                              f"{self.task.meta.arch!r}; resume with the run's own config.yaml")
        self.task.load_state_dict(ckpt_io.task_state(state))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.metrics = list(state["metrics"])
        self.best_top1, self.best_epoch = state["best_top1"], state["best_epoch"]
        ckpt_io.restore_rng(state["rng"])
        return int(state["epoch"])

    def _sync_buffers(self) -> None:
        """Copy rank 0's model buffers (BatchNorm statistics) to every rank."""
        if self.dist.world_size > 1:
            for buffer in self.task.model.buffers():
                torch.distributed.broadcast(buffer, src=0)

    # ------------------------------------------------------------------ loop

    def fit(self) -> dict:
        """Train for cfg.optim.epochs epochs (continuing from the resume checkpoint); return the summary.

        Holds the run folder's lock throughout (a second run into it fails at once) and checks a
        resume against the run's fingerprint (crossmodal.engine.rundir). Under torchrun, a process group this
        Trainer joined (it was constructed outside one) is left when fit() returns or fails: fit() once."""
        ended_normally = False
        try:
            with rundir.RunFolder(self.run_dir, enabled=self.dist.is_main):
                summary = self._fit()
            ended_normally = True
            return summary
        finally:
            if self._leave_group_after_fit:
                self._leave_group_after_fit = False
                cleanup_distributed(synchronize=ended_normally)

    def _fit(self) -> dict:
        cfg, is_main = self.cfg, self.dist.is_main
        if self.resume_path is None and (self.run_dir / "last.pt").exists():
            raise ConfigError(f"{self.run_dir} already holds a run (last.pt); pass --resume to continue it "
                              "or --name to start another")
        if self.resume_path is not None and not self.resume_path.exists():
            raise ConfigError(f"{self.resume_path}: nothing to resume; run without --resume")
        for note in rundir.check_fingerprint(self.run_dir, cfg, self.task.checkpoint_meta(),
                                             resuming=self.resume_path is not None, write=is_main):
            log.info(f"{cfg.name}: resume: {note}")
        self._prepare_modules()
        self._loaders()
        self.params = [p for p in self.task.parameters() if p.requires_grad]
        self.scaler = torch.amp.GradScaler("cuda") if cfg.engine.precision == "fp16" else None
        self._build_step()
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.steps_per_epoch)
        self.metrics, self.best_top1, self.best_epoch = [], -1.0, 0
        start_epoch = self._restore(self.resume_path) if self.resume_path is not None else 0
        for group in self.optimizer.param_groups:  # a checkpoint's groups carry the kernel choice of its own run
            group["fused"] = self.capture or None
        if is_main:
            save_config(cfg, self.run_dir / "config.yaml")
            what = f"resuming after epoch {start_epoch}" if start_epoch else "starting"
            ddp = f" (DDP, {torch.distributed.get_backend()})" if self.dist.distributed else ""
            threads = f" ({torch.get_num_threads()} threads)" if self.device.type == "cpu" else ""  # sums depend on it
            log.info(f"{cfg.name}: {what}; seed {cfg.seed}, device {self.device}{threads}, world size "
                     f"{self.dist.world_size}{ddp}, {self.steps_per_epoch} steps/epoch, run dir {self.run_dir}")
            log.info(f"{cfg.name}: device-resident data {'on' if self.device_resident else 'off'} "
                     f"({self.device_resident_why}); CUDA graph {'on' if self.capture else 'off'} ({self.capture_why})")
            for note in self.task.start_notes():
                log.info(f"{cfg.name}: {note}")
        # A resumed run drops the TensorBoard events logged after its checkpoint.
        purge_step = start_epoch * self.steps_per_epoch + 1 if start_epoch else None
        logger = RunLogger(self.run_dir, enabled=is_main, purge_step=purge_step)
        logger.rewrite(self.metrics)
        try:
            for epoch in range(start_epoch, cfg.optim.epochs):
                epoch_start = time.perf_counter()
                row = self._train_epoch(epoch, logger)
                last = epoch + 1 == cfg.optim.epochs
                if self.test_loader is not None and ((epoch + 1) % cfg.engine.eval_every == 0 or last):
                    self._sync_buffers()
                    row.update(self.evaluate())
                row["epoch_time_s"] = time.perf_counter() - epoch_start
                self._end_epoch(epoch, row, last, logger)
            summary = self._summary()
            if is_main:
                logger.write_summary(summary)
        finally:
            logger.close()
            self._stop_loader_workers()
        return summary

    def _stop_loader_workers(self) -> None:
        """End the loaders' persistent worker processes when fit() ends (or fails), so a process that trains several
        runs (library use, tests) does not keep every run's workers alive until garbage collection; the loaders stay
        usable (a later evaluate() starts its workers again)."""
        for loader in (getattr(self, "train_loader", None), getattr(self, "test_loader", None)):
            iterator = getattr(loader, "_iterator", None)  # DataLoader keeps persistent workers in its iterator
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
                loader._iterator = None

    def _train_epoch(self, epoch: int, logger: RunLogger) -> dict:
        """One pass over the epoch's batches; returns the epoch's training metrics (summed over ranks)."""
        cfg, task, step = self.cfg, self.task, self.step
        start = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]  # the lr of the epoch's first step
        task.train()
        for module in task.frozen_modules():
            module.eval()
        self.train_sampler.set_epoch(epoch)
        self.train_dataset.set_epoch(epoch)
        step.reset_sums()
        seen = 0
        show_bar = None if self.dist.is_main and cfg.engine.progress else True  # None: only on a terminal
        bar = tqdm(self._train_batches(epoch), total=self.steps_per_epoch, leave=False, dynamic_ncols=True,
                   desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", disable=show_bar)
        for i, batch in enumerate(bar):
            step(batch)  # sums loss, hits and terms on the device: no host sync in the step
            self.scheduler.step()
            seen += batch["label"].shape[0]
            if (i + 1) % cfg.engine.log_every == 0:
                running = step.sums[0].item() / seen  # the one read per log interval
                self._check_finite(running, epoch, i)
                rate = seen * self.dist.world_size / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{running:.4f}", img_s=f"{rate:.0f}")
                logger.log_step(epoch * self.steps_per_epoch + i + 1, {"train/loss": running})
        bar.close()
        totals = all_reduce_sum(step.sums.clone()).tolist()  # the epoch's one read: waits for the queued steps
        train_time = time.perf_counter() - start
        total_seen = seen * self.dist.world_size
        self._check_finite(totals[0] / max(total_seen, 1), epoch, self.steps_per_epoch - 1)
        row = {"epoch": epoch + 1, "lr": lr,
               "train_loss": totals[0] / total_seen}
        for j, name in enumerate(step.term_names):
            row[f"train_{name}"] = totals[3 + j] / total_seen
        row["train_top1"] = 100.0 * totals[1] / max(totals[2], 1)
        row["images_per_s"] = total_seen / train_time
        return row

    def _check_finite(self, value: float, epoch: int, step: int) -> None:
        if not math.isfinite(value):
            raise TrainingDiverged(f"{self.cfg.name}: the training loss became {value} in epoch {epoch + 1} "
                                   f"(step {step + 1}); lower optim.lr or set optim.grad_clip")

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Test loss, top-1 and top-5 (%) of task.evaluation_step over the whole test split (all ranks)."""
        self.task.eval()
        # float32 sums (exact for counts below 2**24; MPS has no float64), read once at the end: no per-batch sync.
        sums = torch.zeros(4, device=self.device)  # loss, top-1 hits, top-5 hits, labeled samples
        for batch in self.test_loader:
            batch = self._to_device(batch, self.test_dataset)
            labels = batch["label"]  # (B,), -1 = unlabeled: matches no class, ignored by the loss
            with self._autocast():
                logits = self.task.evaluation_step(batch).float()  # (B, n)
            hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]  # (B, k)
            sums += torch.stack([F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum"),
                                 hits[:, 0].sum(), hits.any(dim=1).sum(), (labels >= 0).sum()]).float()
        loss, top1, top5, count = all_reduce_sum(sums).tolist()
        count = max(count, 1.0)
        return {"test_loss": loss / count, "test_top1": 100.0 * top1 / count, "test_top5": 100.0 * top5 / count}

    def _end_epoch(self, epoch: int, row: dict, last: bool, logger: RunLogger) -> None:
        """Record the epoch, update best, write checkpoints and logs (rank 0)."""
        self.metrics.append(row)
        if self.test_loader is None or not getattr(self.task, "select_best_by_accuracy", True):
            # No test split, or a head no loss trains (label-free distillation): the latest weights are the best.
            improved = True
        else:
            improved = "test_top1" in row and row["test_top1"] > self.best_top1
        if improved:
            self.best_top1, self.best_epoch = row.get("test_top1", -1.0), epoch + 1
        if self.dist.is_main:
            save_last = (epoch + 1) % self.cfg.engine.save_every == 0 or last
            if save_last or improved:
                state = self._state(epoch + 1)
                if save_last:
                    ckpt_io.save_checkpoint(self.run_dir / "last.pt", state)
                if improved:
                    ckpt_io.save_checkpoint(self.run_dir / "best.pt", state)
            logger.log_epoch(row, global_step=(epoch + 1) * self.steps_per_epoch, all_rows=self.metrics, final=last)
            log.info(_epoch_line(row, self.cfg.optim.epochs, self.best_top1, self.best_epoch))

    def _summary(self) -> dict:
        final = self.metrics[-1] if self.metrics else {}
        rates = [r["images_per_s"] for r in self.metrics]
        return {
            "name": self.cfg.name, "run_dir": str(self.run_dir),
            "arch": self.task.meta.arch, "modality": self.task.meta.modality,
            "epochs": len(self.metrics),
            "best_test_top1": self.best_top1 if self.test_loader is not None else None,
            "best_epoch": self.best_epoch if self.test_loader is not None else len(self.metrics),
            "final_test_top1": final.get("test_top1"), "final_test_top5": final.get("test_top5"),
            "final_train_top1": final.get("train_top1"),
            "images_per_s": sum(rates) / len(rates) if rates else None,
            "train_time_s": sum(r["epoch_time_s"] for r in self.metrics),
            "params": sum(p.numel() for p in self.task.model.parameters()),
            "device": str(self.device), "world_size": self.dist.world_size, "seed": self.cfg.seed,
            "precision": self.cfg.engine.precision,
            "checkpoints": {"last": str(self.run_dir / "last.pt"), "best": str(self.run_dir / "best.pt")},
        }


def _epoch_line(row: dict, epochs: int, best: float, best_epoch: int) -> str:
    """One log line per epoch."""
    terms = " ".join(f"{k[6:]} {v:.4f}" for k, v in row.items() if k.startswith("train_") and k != "train_top1")
    test = f" | test top-1 {row['test_top1']:.2f}% (best {best:.2f}% @ {best_epoch})" if "test_top1" in row else ""
    return (f"epoch {row['epoch']}/{epochs} | {terms} | lr {row['lr']:.4g} | train top-1 {row['train_top1']:.2f}%"
            f"{test} | {row['images_per_s']:.0f} img/s | {row['epoch_time_s']:.1f}s")
