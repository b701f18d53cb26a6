"""The engine: schedules, the block sampler, checkpoints, the run dir, resume, and DDP equivalence.

Run as a script (under torchrun) this file is the DDP worker of test_ddp_matches_single_process.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import child_pids, make_prepared  # noqa: E402

from crossmodal.config import load_config
from crossmodal.sections import AugmentConfig, DataConfig, EngineConfig, ModelConfig, OptimConfig
from crossmodal.tasks.teach import TeachConfig
from crossmodal.engine import (CheckpointError, ModelMeta, Trainer, load_checkpoint, load_model,  # noqa: E402
                               seed_everything)
from crossmodal.distributed import all_gather_concat  # noqa: E402
from crossmodal.engine.checkpoint import save_checkpoint  # noqa: E402
from crossmodal.engine.distributed import BlockDistributedSampler, ShardSampler  # noqa: E402
from crossmodal.engine.logging import read_metrics  # noqa: E402
from crossmodal.engine.optim import build_optimizer, lr_factor_fn  # noqa: E402
from crossmodal.errors import ConfigError  # noqa: E402
from crossmodal.models.registry import MODELS, register_model  # noqa: E402
from crossmodal.tasks.teach import ClassifierTask, build_datasets  # noqa: E402

torch.set_num_threads(1)


class TinyNet(nn.Module):
    """A two-conv classifier honouring the model contract; BatchNorm optional (DDP equivalence needs none)."""

    def __init__(self, in_chans: int = 3, num_classes: int = 4, batchnorm: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8) if batchnorm else nn.Identity()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, num_classes)
        self.embedding_dim, self.num_classes = 16, num_classes

    def forward(self, x):
        pre1 = self.norm(self.conv1(x))
        f1 = F.relu(pre1)
        pre2 = self.conv2(f1)
        f2 = F.relu(pre2)
        embedding = f2.mean((2, 3))  # (B, 16)
        return {"logits": self.fc(embedding), "features": [f1, f2], "preact_features": [pre1, pre2],
                "embedding": embedding}


TINY_MODELS = {"test_tinynet": False, "test_tinynet_bn": True}  # name -> with BatchNorm


def register_tiny_models() -> None:
    """Make TinyNet buildable by name (load_model rebuilds networks through the registry)."""
    for name, batchnorm in TINY_MODELS.items():
        if name not in MODELS:
            register_model(name)(lambda in_chans=3, num_classes=4, bn=batchnorm: TinyNet(in_chans, num_classes, bn))


@pytest.fixture(autouse=True, scope="module")
def tiny_models():
    """Register the TinyNets for this module only: other tests see the registry as the zoo made it."""
    register_tiny_models()
    yield
    for name in TINY_MODELS:
        MODELS.pop(name, None)


def make_cfg(data: Path, out_dir: Path, arch: str = "test_tinynet", **optim) -> TeachConfig:
    """A small CPU run on a make_prepared file."""
    optim_args = dict(lr=0.1, batch_size=8, epochs=3, milestones=[2], weight_decay=5e-4)
    optim_args.update(optim)
    return TeachConfig(name="run", out_dir=str(out_dir), seed=3,
                       data=DataConfig(path=str(data), augment=AugmentConfig(crop=16, padding=2, hflip=True)),
                       model=ModelConfig(arch=arch), optim=OptimConfig(**optim_args),
                       engine=EngineConfig(device="cpu", progress=False, log_every=2))


def make_trainer(cfg: TeachConfig, resume=False, train_wrapper=None) -> Trainer:
    """Seed, build datasets, model and ClassifierTask as run_teach does; return the Trainer."""
    seed_everything(cfg.seed)
    train, test = build_datasets(cfg, [cfg.model.modality])
    if train_wrapper is not None:
        train = train_wrapper(train)
    from crossmodal.models import build_model

    model = build_model(cfg.model.arch, in_chans=3, num_classes=train.num_classes)
    task = ClassifierTask(model, ModelMeta.for_dataset(cfg.model.arch, "rgb", train, cfg.data.path))
    return Trainer(task, train, test, cfg, Path(cfg.out_dir) / cfg.name, resume=resume)


def model_weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def max_weight_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# ----------------------------------------------------------------------------- schedules


def test_step_schedule_changes_lr_at_epoch_milestones_after_linear_warmup():
    cfg = OptimConfig(lr=0.1, epochs=6, schedule="step", milestones=[3, 5], gamma=0.1, warmup_epochs=1)
    factor = lr_factor_fn(cfg, steps_per_epoch=4)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # warmup, per iteration
    assert factor(11) == 1.0 and factor(12) == pytest.approx(0.1)  # epoch 3 starts at step 12
    assert factor(19) == pytest.approx(0.1) and factor(20) == pytest.approx(0.01)


def test_cosine_schedule_decays_per_iteration_from_end_of_warmup_to_zero():
    cfg = OptimConfig(epochs=10, schedule="cosine", warmup_epochs=2)
    factor = lr_factor_fn(cfg, steps_per_epoch=5)
    assert factor(9) == 1.0 and factor(10) == 1.0  # warmup ends, cosine starts at 1
    assert factor(30) == pytest.approx(0.5)  # halfway through the 40 post-warmup steps
    assert factor(49) < factor(48) < factor(47) and factor(50) == pytest.approx(0.0, abs=1e-12)


def test_constant_schedule_and_optimizer_choice():
    assert lr_factor_fn(OptimConfig(schedule="constant"), 3)(500) == 1.0
    with pytest.raises(ConfigError) as error:  # built in code, past the YAML validator: not silently constant
        lr_factor_fn(OptimConfig(schedule="Cosine"), 3)
    assert str(error.value) == "optim.schedule must be one of step, cosine, constant; got 'Cosine'"
    import typing

    from crossmodal.engine.optim import SCHEDULES

    assert typing.get_args(typing.get_type_hints(OptimConfig)["schedule"]) == SCHEDULES  # the validator's list
    params = [nn.Parameter(torch.zeros(2))]
    sgd = build_optimizer(params, OptimConfig(name="sgd", lr=0.2, momentum=0.9, nesterov=True))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["lr"] == 0.2
    assert isinstance(build_optimizer(params, OptimConfig(name="adamw", lr=1e-3)), torch.optim.AdamW)
    with pytest.raises(ConfigError, match="nesterov needs optim.momentum > 0"):
        build_optimizer(params, OptimConfig(nesterov=True, momentum=0.0))


# ----------------------------------------------------------------------------- samplers


def test_block_sampler_ranks_split_each_global_batch_of_the_single_process_order():
    n, batch, world = 37, 8, 2
    single = list(BlockDistributedSampler(n, batch, seed=5))
    ranks = [list(BlockDistributedSampler(n, batch, rank=r, world_size=world, seed=5)) for r in range(world)]
    assert len(single) == 32  # 4 full global batches; the incomplete last one is dropped
    for step in range(4):
        global_batch = single[step * batch:(step + 1) * batch]
        assert ranks[0][step * 4:(step + 1) * 4] + ranks[1][step * 4:(step + 1) * 4] == global_batch
    assert len(set(single)) == 32


def test_block_sampler_order_is_a_function_of_seed_and_epoch():
    a, b = BlockDistributedSampler(50, 10, seed=1), BlockDistributedSampler(50, 10, seed=1)
    a.set_epoch(3), b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)
    assert list(a) != list(BlockDistributedSampler(50, 10, seed=2))
    capped = BlockDistributedSampler(50, 10, seed=1, max_batches=2)
    capped.set_epoch(3)
    assert list(capped) == list(a)[:20]


def test_block_sampler_rejects_batches_that_do_not_fit():
    with pytest.raises(ConfigError, match="batch_size 10 is not divisible by the 3 DDP processes"):
        BlockDistributedSampler(100, 10, rank=0, world_size=3)
    with pytest.raises(ConfigError, match="batch_size 64 is larger than the training split \\(40 samples\\)"):
        BlockDistributedSampler(40, 64)


def test_shard_sampler_covers_every_test_sample_once():
    shards = [list(ShardSampler(10, r, 3)) for r in range(3)]
    assert sum(shards, []) == list(range(10))


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_files_are_refused_with_one_line_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt: not a crossmodal checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="missing.pt: no such checkpoint file"):
        load_model(tmp_path / "missing.pt")
    save_checkpoint(tmp_path / "ok.pt", {"format": "crossmodal-checkpoint", "x": torch.ones(2)})
    assert torch.equal(load_checkpoint(tmp_path / "ok.pt")["x"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.pt", "junk.pt", "ok.pt"]


# ----------------------------------------------------------------------------- the loop


def test_run_writes_every_artifact_and_scores_agree_with_the_saved_model(tmp_path):
    data = make_prepared(tmp_path)
    cfg = make_cfg(data, tmp_path / "runs", arch="test_tinynet_bn", epochs=3)
    summary = make_trainer(cfg).fit()
    run = tmp_path / "runs" / "run"
    expected = {"config.yaml", "metrics.csv", "last.pt", "best.pt", "summary.json", "curves.png"}
    assert expected <= {p.name for p in run.iterdir()}
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_config(run / "config.yaml", TeachConfig) == cfg

    rows = read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert list(rows[0]) == ["epoch", "lr", "train_loss", "train_ce", "train_top1", "images_per_s",
                             "test_loss", "test_top1", "test_top5", "epoch_time_s"]
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.1, 0.01])
    assert all(r["train_loss"] == pytest.approx(r["train_ce"], rel=1e-5) for r in rows)

    best_epoch = max(rows, key=lambda r: r["test_top1"])["epoch"]
    saved = json.loads((run / "summary.json").read_text())
    assert saved["best_epoch"] == summary["best_epoch"] == best_epoch == load_checkpoint(run / "best.pt")["epoch"]
    assert saved["epochs"] == 3 and load_checkpoint(run / "last.pt")["epoch"] == 3

    # The logged test top-1/top-5/loss are those of the saved weights on the test split.
    model, meta = load_model(run / "last.pt")
    _, test = build_datasets(cfg, ["rgb"])
    x = torch.stack([test[i]["rgb"] for i in range(len(test))])
    y = torch.from_numpy(test.labels)
    with torch.no_grad():
        logits = model(x)["logits"]
    assert rows[-1]["test_top1"] == pytest.approx(100.0 * (logits.argmax(1) == y).double().mean().item(), abs=1e-3)
    top5 = (logits.topk(4, dim=1).indices == y[:, None]).any(1).double().mean().item()
    assert rows[-1]["test_top5"] == pytest.approx(100.0 * top5, abs=1e-3)
    assert rows[-1]["test_loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-4)
    assert meta["arch"] == "test_tinynet_bn" and meta["num_classes"] == 4 and meta["class_names"][0] == "class0"


def make_learnable(tmp_path: Path) -> Path:
    """A make_prepared file whose images show their class: the red channel's brightness encodes the label."""
    path = make_prepared(tmp_path)
    with h5py.File(path, "r+") as f:
        for split in ("train", "test"):
            rgb, labels = f[split]["rgb"][:], f[split]["label"][:]
            rgb[:, 0] = (labels[:, None, None] * 60 + 20).astype(np.uint8)
            f[split]["rgb"][...] = rgb
    return path


def test_training_learns_a_visible_class(tmp_path):
    cfg = make_cfg(make_learnable(tmp_path), tmp_path / "runs", epochs=8, lr=0.05, milestones=[6])
    make_trainer(cfg).fit()
    rows = read_metrics(tmp_path / "runs" / "run" / "metrics.csv")
    assert rows[0]["test_top1"] < 60 and rows[-1]["test_top1"] >= 90
    assert rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"]


def test_max_steps_per_epoch_caps_steps_and_the_schedule_counts_iterations(tmp_path):
    data = make_prepared(tmp_path)
    cfg = make_cfg(data, tmp_path / "runs", epochs=2)
    cfg.engine.max_steps_per_epoch = 2
    make_trainer(cfg).fit()
    ckpt = load_checkpoint(tmp_path / "runs" / "run" / "last.pt")
    assert ckpt["scheduler"]["last_epoch"] == 2 * 2
    assert [r["images_per_s"] > 0 for r in ckpt["metrics"]] == [True, True]


def test_grad_clip_bounds_the_update(tmp_path):
    data = make_prepared(tmp_path)
    cfg = make_cfg(data, tmp_path / "runs", epochs=1, lr=1.0, momentum=0.0, weight_decay=0.0, grad_clip=1e-3)
    cfg.engine.max_steps_per_epoch = 1
    trainer = make_trainer(cfg)
    before = {k: v.clone() for k, v in trainer.task.model.state_dict().items()}
    trainer.fit()
    after = model_weights(tmp_path / "runs" / "run" / "last.pt")
    step = math.sqrt(sum(((after[k] - before[k]) ** 2).sum().item() for k in before))
    assert 0 < step <= 1e-3 * (1 + 1e-5)


def test_engine_settings_are_applied_or_refused_in_one_line(tmp_path):
    data = make_prepared(tmp_path)
    cfg = make_cfg(data, tmp_path / "runs")
    cfg.engine.precision = "fp16"
    with pytest.raises(ConfigError, match="engine.precision fp16 needs CUDA \\(device is cpu\\); use bf16 or fp32"):
        make_trainer(cfg)
    cfg.engine.precision, cfg.engine.device = "fp32", "cuda:7"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="engine.device 'cuda:7': CUDA is not available here"):
            make_trainer(cfg)
    cfg.engine.device, cfg.engine.deterministic = "cpu", True
    try:
        make_trainer(cfg)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_bf16_autocast_trains_on_cpu(tmp_path):
    cfg = make_cfg(make_prepared(tmp_path), tmp_path / "runs", epochs=1)
    cfg.engine.precision, cfg.engine.channels_last = "bf16", True
    summary = make_trainer(cfg).fit()
    metrics = load_checkpoint(tmp_path / "runs" / "run" / "last.pt")["metrics"]
    assert summary["precision"] == "bf16" and math.isfinite(metrics[0]["train_loss"])


def test_weights_do_not_depend_on_the_number_of_loader_workers(tmp_path):
    """Each epoch's augmentations reach persistent workers: 2 workers give the weights of 0 workers."""
    data = make_prepared(tmp_path)
    for workers in (0, 2):
        cfg = make_cfg(data, tmp_path / f"w{workers}", epochs=2)
        cfg.data.workers = workers
        make_trainer(cfg).fit()
    assert max_weight_diff(model_weights(tmp_path / "w0" / "run" / "last.pt"),
                           model_weights(tmp_path / "w2" / "run" / "last.pt")) == 0.0


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads child processes from /proc (Linux)")
def test_fit_ends_its_persistent_loader_workers_and_the_trainer_can_still_evaluate(tmp_path):
    """A process that trains run after run (library use) must not keep each run's loader workers alive."""
    data = make_prepared(tmp_path)
    cfg = make_cfg(data, tmp_path / "runs", epochs=1)
    cfg.data.workers = 2
    before = set(child_pids(os.getpid(), helpers=False))
    trainer = make_trainer(cfg)
    trainer.fit()
    assert set(child_pids(os.getpid(), helpers=False)) - before == set()  # ended with fit(), not at gc
    assert 0.0 <= trainer.evaluate()["test_top1"] <= 100.0  # the loaders still work afterwards
    import gc
    import time

    del trainer  # evaluate() outside fit() keeps its workers, like any DataLoader, until the trainer goes
    gc.collect()
    deadline = time.monotonic() + 10
    while set(child_pids(os.getpid(), helpers=False)) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(child_pids(os.getpid(), helpers=False)) - before == set()


def test_an_existing_run_is_not_overwritten_and_resume_needs_a_checkpoint(tmp_path):
    data = make_prepared(tmp_path)
    cfg = make_cfg(data, tmp_path / "runs", epochs=1)
    with pytest.raises(ConfigError, match="nothing to resume; run without --resume"):
        make_trainer(cfg, resume=True).fit()
    make_trainer(cfg).fit()
    with pytest.raises(ConfigError, match="already holds a run \\(last.pt\\); pass --resume"):
        make_trainer(cfg).fit()


class FailAtEpoch:
    """Wraps a dataset and raises when the engine enters epoch `fail_epoch` (a crash after a checkpoint)."""

    def __init__(self, dataset, fail_epoch: int):
        self.dataset, self.fail_epoch = dataset, fail_epoch

    def __getattr__(self, name):
        return getattr(self.dataset, name)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i]

    def set_epoch(self, epoch):
        if epoch == self.fail_epoch:
            raise KeyboardInterrupt("simulated crash")
        self.dataset.set_epoch(epoch)


def test_resume_after_a_crash_ends_with_the_uninterrupted_weights(tmp_path):
    data = make_prepared(tmp_path)
    straight = make_cfg(data, tmp_path / "a", arch="test_tinynet_bn", epochs=4, milestones=[3], warmup_epochs=1)
    make_trainer(straight).fit()
    crashed = make_cfg(data, tmp_path / "b", arch="test_tinynet_bn", epochs=4, milestones=[3], warmup_epochs=1)
    with pytest.raises(KeyboardInterrupt):
        make_trainer(crashed, train_wrapper=lambda d: FailAtEpoch(d, 2)).fit()
    assert load_checkpoint(tmp_path / "b" / "run" / "last.pt")["epoch"] == 2
    torch.manual_seed(1234)  # the resumed process starts from unrelated RNG and init; the checkpoint must win
    make_trainer(crashed, resume=True).fit()
    a = load_checkpoint(tmp_path / "a" / "run" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "run" / "last.pt")
    assert max_weight_diff(a["model"], b["model"]) == 0.0
    assert a["metrics"][-1]["train_loss"] == b["metrics"][-1]["train_loss"]
    assert [r["epoch"] for r in read_metrics(tmp_path / "b" / "run" / "metrics.csv")] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- DDP


@pytest.mark.parametrize("nproc", [1, 2])
def test_ddp_matches_single_process(tmp_path, nproc):
    """N gloo processes (torchrun) with global batch 8 end with the weights of 1 plain process with batch 8.

    nproc 1 runs the DDP path (process group, DistributedDataParallel) with a single process, as
    `torchrun --nproc_per_node 1` does on a one-GPU machine."""
    data = make_prepared(tmp_path)
    single = make_cfg(data, tmp_path / "single", epochs=2, milestones=[1])
    make_trainer(single).fit()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           __file__, str(data), str(tmp_path / "ddp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    a = model_weights(tmp_path / "single" / "run" / "last.pt")
    b = model_weights(tmp_path / "ddp" / "run" / "last.pt")
    assert max_weight_diff(a, b) < 1e-5
    rows_a = read_metrics(tmp_path / "single" / "run" / "metrics.csv")
    rows_b = read_metrics(tmp_path / "ddp" / "run" / "metrics.csv")
    assert rows_b[-1]["test_top1"] == rows_a[-1]["test_top1"]
    assert rows_b[-1]["train_loss"] == pytest.approx(rows_a[-1]["train_loss"], rel=1e-4)
    assert json.loads((tmp_path / "ddp" / "run" / "summary.json").read_text())["world_size"] == nproc


def _torchrun_env(monkeypatch) -> None:
    """The environment torchrun gives a 1-process job, on a free local port."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for key, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)


def _record_group_exits(monkeypatch) -> list:
    """Log ("barrier" / "destroy") of every barrier and group teardown, each still done."""
    calls = []
    barrier, destroy = torch.distributed.barrier, torch.distributed.destroy_process_group

    def logged(name, fn):
        def call(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)
        return call

    monkeypatch.setattr(torch.distributed, "barrier", logged("barrier", barrier))
    monkeypatch.setattr(torch.distributed, "destroy_process_group", logged("destroy", destroy))
    return calls


def test_run_teach_owns_the_process_group_it_joins(tmp_path, monkeypatch):
    """Under torchrun, run_teach joins the job and leaves it when it returns (and when it fails), so a Python
    caller is cleaned up like the CLI; a group the caller joined first is the caller's and stays. A run that
    ends normally waits for every rank at a barrier before leaving; a failed one leaves at once (the other
    ranks may never arrive)."""
    from crossmodal.engine.distributed import launch_rank
    from crossmodal.tasks.teach import run_teach

    data = make_prepared(tmp_path)
    assert launch_rank() == 0 and not torch.distributed.is_initialized()
    _torchrun_env(monkeypatch)
    calls = _record_group_exits(monkeypatch)
    summary = run_teach(make_cfg(data, tmp_path / "a", epochs=1))
    assert summary["world_size"] == 1  # the DDP path ran
    assert not torch.distributed.is_initialized()
    assert calls[-2:] == ["barrier", "destroy"]
    calls.clear()
    with pytest.raises(ConfigError):  # fails after joining (the run folder exists): left all the same
        run_teach(make_cfg(data, tmp_path / "a", epochs=1))
    assert not torch.distributed.is_initialized()
    assert calls == ["destroy"]
    torch.distributed.init_process_group("gloo", init_method="env://")
    try:
        run_teach(make_cfg(data, tmp_path / "b", epochs=1))
        assert torch.distributed.is_initialized()
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.filterwarnings("error::FutureWarning")
def test_a_trainer_used_directly_leaves_the_group_it_joined(tmp_path, monkeypatch):
    """Without run_teach, a Trainer under torchrun joins the job itself and leaves it when fit() ends, also when
    fit() fails; a group the caller joined before is the caller's and stays. Wrapping the task in DDP warns
    nothing (torch 2.14 deprecates `broadcast_buffers`, which every supported version still takes)."""
    data = make_prepared(tmp_path)
    _torchrun_env(monkeypatch)
    calls = _record_group_exits(monkeypatch)
    trainer = make_trainer(make_cfg(data, tmp_path / "a", epochs=1))
    assert trainer.dist.distributed and torch.distributed.is_initialized()
    trainer.fit()
    assert not torch.distributed.is_initialized()
    assert calls[-2:] == ["barrier", "destroy"]  # a normal end waits for every rank
    calls.clear()
    failing = make_trainer(make_cfg(data, tmp_path / "a", epochs=1))  # the run folder holds a run: fit() fails
    with pytest.raises(ConfigError):
        failing.fit()
    assert not torch.distributed.is_initialized()
    assert calls == ["destroy"]
    torch.distributed.init_process_group("gloo", init_method="env://")
    try:
        make_trainer(make_cfg(data, tmp_path / "b", epochs=1)).fit()
        assert torch.distributed.is_initialized()
    finally:
        torch.distributed.destroy_process_group()


def test_launch_rank_reads_torchrun_environment_only_when_launched(monkeypatch):
    from crossmodal.engine.distributed import launch_rank

    monkeypatch.setenv("RANK", "3")  # a stray RANK without the rest of torchrun's environment
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert launch_rank() == 0
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert launch_rank() == 3


def _ddp_worker(data: str, out_dir: str) -> None:
    """Body of one torchrun process: check the gather helper, then train like the single-process run."""
    register_tiny_models()
    cfg = make_cfg(Path(data), Path(out_dir), epochs=2, milestones=[1])
    trainer = make_trainer(cfg)  # joins the process group, also with one process
    rank, world = trainer.dist.rank, trainer.dist.world_size
    assert trainer.dist.distributed and torch.distributed.is_initialized()
    gathered = all_gather_concat(torch.full((2, 3), float(rank)))
    assert gathered[:, 0].tolist() == [float(r) for r in range(world) for _ in range(2)], gathered
    trainer.fit()
    assert not torch.distributed.is_initialized(), "the Trainer joined the job, so fit() must leave it"


if __name__ == "__main__":
    _ddp_worker(*sys.argv[1:3])
