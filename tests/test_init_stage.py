"""The init stage of AB/FT/FSP runs as RepDistiller's does: the student in eval mode (BatchNorm statistics
frozen, even where the stage trains its weights) and FT's paraphraser at lr 0.01 for resnet/wrn students."""
from __future__ import annotations

import pytest
import torch
import yaml

from crossmodal.engine import load_checkpoint
from crossmodal.errors import ConfigError
from crossmodal.tasks.distill import run_distill
from test_distill import distill_cfg, logged_lines, prepared, rgb_teacher  # noqa: F401  (module fixtures)
from test_engine import FailAtEpoch

torch.set_num_threads(1)


def running_stats(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


@pytest.mark.parametrize("method, student", [("ab", "wrn_16_2"), ("fsp", "resnet8")])
def test_init_stage_trains_the_student_weights_but_not_its_batchnorm_statistics(tmp_path, prepared, rgb_teacher,
                                                                                method, student):
    """AB's student (wrn_16_2, twice the resnet8 teacher's widths) needs connectors: the stage trains them too."""
    cfg = distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb")], {"ce": 1.0, method: 1.0}, student=student,
                      loss_params={method: {"init_epochs": 1}})
    from crossmodal.engine import seed_everything
    from crossmodal.tasks.distill import build_distill_datasets, build_distill_task

    seed_everything(cfg.seed)
    task = build_distill_task(cfg, build_distill_datasets(cfg)[0])
    fresh = task.model.state_dict()
    own = {k.replace("losses.", "stage_losses.", 1): v for k, v in task.losses.state_dict(prefix="losses.").items()
           if k.endswith("weight")}
    run_distill(cfg)
    ckpt = load_checkpoint(tmp_path / "runs" / "student" / "init" / "last.pt")
    init = ckpt["model"]
    stats = running_stats(init)
    assert stats and all(torch.equal(v, fresh[k]) for k, v in stats.items())  # eval mode: no update
    convs = [k for k in init if k.endswith("weight") and init[k].dim() == 4]
    assert any(not torch.equal(init[k], fresh[k]) for k in convs)  # ... while the weights did train
    assert len(own) == (6 if method == "ab" else 0)  # three connectors: conv and BN weights
    assert all(not torch.equal(ckpt["task"][k], v) for k, v in own.items())  # ... and the connectors too


@pytest.mark.parametrize("student, expected", [("resnet8", 0.01), ("wrn_16_1", 0.01), ("vgg8", 0.05)])
def test_ft_init_lr_is_the_reference_rule_unless_the_config_sets_it(tmp_path, prepared, rgb_teacher, student,
                                                                     expected):
    cfg = distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb")], {"ce": 1.0, "ft": 200.0}, student=student,
                      loss_params={"ft": {"init_epochs": 1}}, epochs=2)
    cfg.optim.schedule, cfg.optim.warmup_epochs = "cosine", 1.0
    assert cfg.optim.lr == 0.05
    with logged_lines() as lines:
        run_distill(cfg)
    assert "student: init stage of ft for 1 epochs" in lines
    init_cfg = yaml.safe_load((tmp_path / "runs" / "student" / "init" / "config.yaml").read_text())
    assert init_cfg["optim"]["lr"] == expected
    # The init stage trains at that lr throughout, as the references do, whatever the main phase's schedule.
    assert (init_cfg["optim"]["schedule"], init_cfg["optim"]["warmup_epochs"], init_cfg["optim"]["epochs"]) == \
        ("constant", 0.0, 1)
    cfg2 = distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb")], {"ce": 1.0, "ft": 200.0}, student=student,
                       loss_params={"ft": {"init_epochs": 1}}, name="explicit")
    cfg2.init_lr = 0.2
    run_distill(cfg2)
    assert yaml.safe_load((tmp_path / "runs" / "explicit" / "init" / "config.yaml").read_text())["optim"]["lr"] == 0.2


class CrashAtEpoch(FailAtEpoch):
    """A training split that raises when the engine starts its `call`-th epoch (counted across both phases)."""

    def __init__(self, dataset, call: int):
        super().__init__(dataset, fail_epoch=None)
        self.calls_left, self.current = call, None

    def set_epoch(self, epoch):  # the engine may repeat an epoch's call (batches carry their epoch): count changes
        if epoch != self.current:
            self.current, self.calls_left = epoch, self.calls_left - 1
            if self.calls_left == 0:
                raise KeyboardInterrupt("simulated kill")
        self.dataset.set_epoch(epoch)


@pytest.mark.parametrize("call, init_done, flag", [(2, False, True), (3, True, True), (3, True, False),
                                                    (4, True, True)])
def test_a_run_killed_in_or_after_its_init_stage_resumes_to_the_uninterrupted_weights(
        tmp_path, prepared, rgb_teacher, monkeypatch, call, init_done, flag):
    """Killed in the second of two init epochs (call 2), `--resume` continues the init stage from
    <run>/init/last.pt, then starts the main phase, which has no checkpoint yet. Killed in the main phase's first
    epoch (call 3), the finished init stage is loaded with its RNG state (CRD draws its negatives from it), with
    `--resume` or without (the main phase has nothing to overwrite), but not under another config. Killed in the
    main phase's second epoch (call 4), the main phase resumes from <run>/last.pt and the init stage is not run
    again. Each way the run ends where the run that was never killed ends."""
    import crossmodal.tasks.distill as distill_module

    losses = {"ce": 1.0, "ab": 1.0, "fsp": 1.0, "crd": 0.8}
    params = {"ab": {"init_epochs": 2}, "fsp": {"init_epochs": 2}, "crd": {"nce_k": 8}}
    with logged_lines() as lines:
        run_distill(distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb")], losses, loss_params=params, name="full",
                                epochs=2))
    assert "full: init stage of ab, fsp for 2 epochs" in lines
    part = distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb")], losses, loss_params=params, name="part", epochs=2)
    real = distill_module.build_distill_datasets
    with monkeypatch.context() as patch:
        patch.setattr(distill_module, "build_distill_datasets",
                      lambda *args: (lambda train, test: (CrashAtEpoch(train, call), test))(*real(*args)))
        with pytest.raises(KeyboardInterrupt):
            run_distill(part)
    runs = tmp_path / "runs"
    assert load_checkpoint(runs / "part" / "init" / "last.pt")["epoch"] == (2 if init_done else 1)
    assert (runs / "part" / "init" / "summary.json").exists() == init_done
    assert (runs / "part" / "last.pt").exists() == (call == 4)
    init_written = (runs / "part" / "init" / "last.pt").stat().st_mtime_ns
    if not init_done:
        with pytest.raises(ConfigError, match="already holds a run"):  # without --resume nothing is overwritten
            run_distill(part)
    if not flag:
        changed = distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb")], losses, loss_params=params, name="part",
                              epochs=2)
        changed.init_lr = 0.02
        with pytest.raises(ConfigError, match=r"part/init: --resume with a changed 'init_lr' \(null when the run "
                                              r"started, now 0.02\)"):
            run_distill(changed)
    torch.manual_seed(1234)  # the resumed process starts from unrelated RNG; the checkpoints must win
    run_distill(part, resume=flag)
    if init_done:
        assert (runs / "part" / "init" / "last.pt").stat().st_mtime_ns == init_written  # not trained again
    for stage in ("init/last.pt", "last.pt"):
        a, b = load_checkpoint(runs / "full" / stage), load_checkpoint(runs / "part" / stage)
        assert a["epoch"] == b["epoch"]
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), (stage, k)
        assert a["metrics"][-1]["train_loss"] == b["metrics"][-1]["train_loss"], stage


def test_resume_without_a_checkpoint_of_either_phase_says_nothing_to_resume(tmp_path, prepared, rgb_teacher):
    cfg = distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb")], {"ce": 1.0, "ab": 1.0},
                      loss_params={"ab": {"init_epochs": 1}})
    with pytest.raises(ConfigError, match=r"init/last.pt: nothing to resume; run without --resume"):
        run_distill(cfg, resume=True)
    assert not (tmp_path / "runs" / "student" / "init" / "last.pt").exists()
