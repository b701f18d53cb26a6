"""The training step (crossmodal.engine.step): no host reads per step, the captured path and its fallback.

A CUDA graph cannot be captured on the CPU. What can be tested here: the setting is validated, the CPU
path stays the eager one, and the captured step's plumbing (static input buffers, the learning rate
read from a device tensor at replay, the metric sums, warm-up, the fallback when capture fails) gives
the eager run's weights, with a stand-in graph whose replay calls the recorded function again.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import make_prepared  # noqa: E402
from test_engine import make_cfg, make_trainer, max_weight_diff, tiny_models  # noqa: E402

import crossmodal.engine.step as step_module  # noqa: E402
import crossmodal.engine.trainer as trainer_module  # noqa: E402
from crossmodal.config import load_config  # noqa: E402
from crossmodal.engine import load_checkpoint  # noqa: E402
from crossmodal.engine.logging import read_metrics  # noqa: E402
from crossmodal.engine.step import CaptureFailed, cuda_graph_plan  # noqa: E402
from crossmodal.errors import ConfigError  # noqa: E402
from crossmodal.sections import EngineConfig, OptimConfig  # noqa: E402
from crossmodal.tasks.teach import ClassifierTask, TeachConfig  # noqa: E402

torch.set_num_threads(1)
__all__ = ["tiny_models"]  # test_engine's autouse fixture registers the tiny models here too


class ReplayGraph:
    """Stands in for CudaGraph on the CPU: capture keeps the function, replay calls it on the static buffers."""

    captures = 0

    def __init__(self, device=None):
        self.fn = None

    def warmup(self, fn):
        fn()

    def capture(self, fn):
        ReplayGraph.captures += 1
        self.fn = fn

    def replay(self):
        self.fn()


class FailingGraph(ReplayGraph):
    def capture(self, fn):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")


def _captured_on_cpu(monkeypatch, graph_cls):
    """Let the engine take the captured path on the CPU with `graph_cls` as the graph."""
    monkeypatch.setattr(trainer_module, "cuda_graph_plan", lambda *args, **kwargs: (True, "test"))
    monkeypatch.setattr(step_module, "CudaGraph", graph_cls)


def _run(tmp_path, name, data, **engine):
    cfg = make_cfg(data, tmp_path / name, arch="test_tinynet_bn", epochs=3, milestones=[2], warmup_epochs=1,
                   grad_clip=1.0)
    for key, value in engine.items():
        setattr(cfg.engine, key, value)
    make_trainer(cfg).fit()
    return load_checkpoint(tmp_path / name / "run" / "last.pt")


def test_cuda_graph_setting_is_validated_and_the_cpu_runs_eagerly(tmp_path):
    task = ClassifierTask(torch.nn.Linear(2, 2), meta=None)
    engine, optim = EngineConfig(), OptimConfig()
    assert cuda_graph_plan("auto", torch.device("cpu"), False, engine, optim, task) == (
        False, "auto: the device is cpu, not CUDA")
    assert cuda_graph_plan(False, torch.device("cuda"), False, engine, optim, task)[0] is False
    with pytest.raises(ConfigError, match="engine.cuda_graph true: the device is cpu, not CUDA; DDP runs eagerly; "
                                          "fp16's GradScaler reads the host"):
        cuda_graph_plan(True, torch.device("cpu"), True, EngineConfig(precision="fp16"), optim, task)
    assert "only SGD is captured" in cuda_graph_plan("auto", torch.device("cuda"), False, engine,
                                                     OptimConfig(name="adamw"), task)[1]
    data = make_prepared(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {{path: {data}}}\nmodel: {{arch: resnet8}}\nengine: {{cuda_graph: always}}\n")
    with pytest.raises(ConfigError, match="'engine.cuda_graph' must be one of 'auto' or bool"):
        load_config(config, TeachConfig)
    cfg = make_cfg(data, tmp_path / "runs", epochs=1)
    cfg.engine.cuda_graph = True
    with pytest.raises(ConfigError, match="engine.cuda_graph true: the device is cpu, not CUDA"):
        make_trainer(cfg).fit()
    cfg.engine.cuda_graph = "auto"
    trainer = make_trainer(cfg)
    trainer.fit()
    assert trainer.capture is False and type(trainer.step) is step_module.EagerStep
    assert trainer.optimizer.param_groups[0]["fused"] is None  # the CPU's optimiser is the one it always was


def test_captured_step_replays_give_the_eager_weights_and_metrics(tmp_path, monkeypatch):
    """Warm-up steps, then replays whose lr changes every step (warmup schedule) and whose batches change:
    the weights, metrics and lr equal a run whose capture failed and which therefore ran every step eagerly."""
    data = make_prepared(tmp_path)
    _captured_on_cpu(monkeypatch, FailingGraph)
    eager = _run(tmp_path, "eager", data)
    _captured_on_cpu(monkeypatch, ReplayGraph)
    ReplayGraph.captures = 0
    captured = _run(tmp_path, "captured", data)
    assert ReplayGraph.captures == 1
    assert max_weight_diff(eager["model"], captured["model"]) == 0.0
    assert eager["metrics"][-1]["train_loss"] == captured["metrics"][-1]["train_loss"]
    assert eager["metrics"][-1]["train_top1"] == captured["metrics"][-1]["train_top1"]
    assert eager["optimizer"]["param_groups"][0]["lr"] == captured["optimizer"]["param_groups"][0]["lr"]
    assert isinstance(captured["optimizer"]["param_groups"][0]["lr"], float)  # checkpoints keep plain numbers


def test_a_failed_capture_warns_under_auto_and_raises_under_true(tmp_path, monkeypatch, caplog):
    data = make_prepared(tmp_path)
    _captured_on_cpu(monkeypatch, FailingGraph)
    cfg = make_cfg(data, tmp_path / "auto", epochs=1)
    logger = logging.getLogger("crossmodal")  # does not propagate to the root logger: listen on it directly
    logger.addHandler(caplog.handler)
    try:
        make_trainer(cfg).fit()
    finally:
        logger.removeHandler(caplog.handler)
    assert ("engine.cuda_graph: the step could not be captured (operation not permitted when stream is capturing); "
            "running it eagerly") in caplog.text
    assert (tmp_path / "auto" / "run" / "last.pt").exists()
    cfg = make_cfg(data, tmp_path / "strict", epochs=1)
    cfg.engine.cuda_graph = True
    with pytest.raises(CaptureFailed, match="engine.cuda_graph true: the step could not be captured"):
        make_trainer(cfg).fit()


def test_the_step_reads_nothing_from_the_device_between_log_intervals(tmp_path, monkeypatch):
    """Host reads (item, tolist, float, bool) per epoch do not grow with the number of steps."""
    data = make_prepared(tmp_path, splits={"train": 64, "test": 8})
    reads = {"n": 0}
    for method in ("item", "tolist", "__float__", "__bool__", "__int__"):
        original = getattr(torch.Tensor, method)

        def counted(self, *args, _original=original, **kwargs):
            reads["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    counts = []
    for steps in (2, 7):
        cfg = make_cfg(data, tmp_path / f"s{steps}", epochs=1)
        cfg.engine.max_steps_per_epoch, cfg.engine.log_every = steps, 10**6
        trainer = make_trainer(cfg)
        reads["n"] = 0
        trainer.fit()
        counts.append(reads["n"])
    assert counts[0] == counts[1]
    assert read_metrics(tmp_path / "s7" / "run" / "metrics.csv")[0]["train_loss"] > 0


def test_a_captured_crd_kd_step_gives_the_eager_student_and_memories(tmp_path, monkeypatch):
    """CRD's sampling and in-place memory update inside the recorded step: same student, memories and Z."""
    from test_distill import distill_cfg, teach_teacher

    from crossmodal.tasks.distill import run_distill

    data = make_prepared(tmp_path, splits={"train": 48, "test": 8}, modalities=("rgb",), size=16)
    teacher = teach_teacher(tmp_path, data)
    states = {}
    for name, graph in (("eager", FailingGraph), ("captured", ReplayGraph)):
        _captured_on_cpu(monkeypatch, graph)
        cfg = distill_cfg(tmp_path, data, [(teacher, "rgb")], {"ce": 1.0, "kd": 1.0, "crd": 0.8}, name=name,
                          epochs=2, loss_params={"crd": {"nce_k": 16}})
        run_distill(cfg)
        states[name] = load_checkpoint(tmp_path / "runs" / name / "last.pt")
    assert max_weight_diff(states["eager"]["model"], states["captured"]["model"]) == 0.0
    crd = [k for k in states["eager"]["task"] if k.startswith("losses.crd.")]
    assert any(k.endswith("memory_teacher.rows") for k in crd) and any(k.endswith("log_z") for k in crd)
    for key in crd:
        assert torch.equal(states["eager"]["task"][key], states["captured"]["task"][key]), key


def test_a_captured_run_resumed_after_a_crash_ends_with_the_uninterrupted_weights(tmp_path, monkeypatch):
    """The resumed process warms up eagerly and captures again; its steps are the uninterrupted run's."""
    from test_engine import FailAtEpoch

    data = make_prepared(tmp_path)
    _captured_on_cpu(monkeypatch, ReplayGraph)
    straight = _run(tmp_path, "straight", data)
    cfg = make_cfg(data, tmp_path / "crashed", arch="test_tinynet_bn", epochs=3, milestones=[2], warmup_epochs=1,
                   grad_clip=1.0)
    with pytest.raises(KeyboardInterrupt):
        make_trainer(cfg, train_wrapper=lambda d: FailAtEpoch(d, 2)).fit()
    torch.manual_seed(7)
    make_trainer(cfg, resume=True).fit()
    resumed = load_checkpoint(tmp_path / "crashed" / "run" / "last.pt")
    assert max_weight_diff(straight["model"], resumed["model"]) == 0.0
    assert straight["optimizer"]["state"][0]["momentum_buffer"].equal(resumed["optimizer"]["state"][0]["momentum_buffer"])


def test_a_distill_task_is_captured_only_when_every_loss_is_marked_capturable():
    from crossmodal.losses import build_distiller, list_distillers
    from crossmodal.losses.base import DISTILLERS, Distiller
    from crossmodal.tasks.distill import DistillTask

    class ReadsTheHost(Distiller):  # a loss nobody checked for capture
        needs_teacher = False

        def forward(self, s_out, t_out, batch):
            return s_out["logits"].sum() * 0

    def task(losses):
        return DistillTask(torch.nn.Linear(2, 2), None, [], {n: torch.nn.ModuleList([m]) for n, m in losses.items()},
                           {n: 1.0 for n in losses}, set())

    list_distillers()  # loads every distiller module
    assert DISTILLERS["crd"].capturable and DISTILLERS["kd"].capturable and DISTILLERS["ce"].capturable
    cuda, engine, optim = torch.device("cuda"), EngineConfig(), OptimConfig()
    capturable = task({"ce": build_distiller("ce", None), "kd": build_distiller("kd", None)})
    assert cuda_graph_plan("auto", cuda, False, engine, optim, capturable) == (
        True, "auto: CUDA, one process, SGD, capturable task")
    mixed = task({"ce": build_distiller("ce", None), "host": ReadsTheHost(None)})
    assert cuda_graph_plan("auto", cuda, False, engine, optim, mixed) == (
        False, "auto: DistillTask has a loss that is not marked capturable")
