"""The init stage of AB/FT/FSP runs as RepDistiller's does: the student in eval mode (BatchNorm statistics
frozen, even where the stage trains its weights) and FT's paraphraser at lr 0.01 for resnet/wrn students."""
from __future__ import annotations

import pytest
import torch
import yaml

from crossmodal.engine import load_checkpoint
from crossmodal.tasks.distill import run_distill
from test_distill import distill_cfg, prepared, rgb_teacher  # noqa: F401  (module fixtures)

torch.set_num_threads(1)


def running_stats(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


@pytest.mark.parametrize("method", ["ab", "fsp"])
def test_init_stage_trains_the_student_weights_but_not_its_batchnorm_statistics(tmp_path, prepared, rgb_teacher,
                                                                                method):
    cfg = distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb")], {"ce": 1.0, method: 1.0},
                      loss_params={method: {"init_epochs": 1}})
    from crossmodal.engine import seed_everything
    from crossmodal.tasks.distill import build_distill_datasets, build_distill_task

    seed_everything(cfg.seed)
    fresh = build_distill_task(cfg, build_distill_datasets(cfg)[0]).model.state_dict()
    run_distill(cfg)
    init = load_checkpoint(tmp_path / "runs" / "student" / "init" / "last.pt")["model"]
    stats = running_stats(init)
    assert stats and all(torch.equal(v, fresh[k]) for k, v in stats.items())  # eval mode: no update
    convs = [k for k in init if k.endswith("weight") and init[k].dim() == 4]
    assert any(not torch.equal(init[k], fresh[k]) for k in convs)  # ... while the weights did train


@pytest.mark.parametrize("student, expected", [("resnet8", 0.01), ("wrn_16_1", 0.01), ("vgg8", 0.05)])
def test_ft_init_lr_is_the_reference_rule_unless_the_config_sets_it(tmp_path, prepared, rgb_teacher, student,
                                                                     expected):
    cfg = distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb")], {"ce": 1.0, "ft": 200.0}, student=student,
                      loss_params={"ft": {"init_epochs": 1}})
    assert cfg.optim.lr == 0.05
    run_distill(cfg)
    init_cfg = yaml.safe_load((tmp_path / "runs" / "student" / "init" / "config.yaml").read_text())
    assert init_cfg["optim"]["lr"] == expected
    cfg2 = distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb")], {"ce": 1.0, "ft": 200.0}, student=student,
                       loss_params={"ft": {"init_epochs": 1}}, name="explicit")
    cfg2.init_lr = 0.2
    run_distill(cfg2)
    assert yaml.safe_load((tmp_path / "runs" / "explicit" / "init" / "config.yaml").read_text())["optim"]["lr"] == 0.2
