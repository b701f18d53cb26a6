"""Config loading: typed validation, one-line errors naming file and key, overrides, shipped configs."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
import yaml

from crossmodal.config import REQUIRED, config_to_dict, load_config, save_config
from crossmodal.errors import ConfigError
from crossmodal.sections import ModelConfig, RunConfig
from crossmodal.tasks.teach import TeachConfig

REPO = Path(__file__).resolve().parents[1]
MINIMAL = "data: {path: data/x.h5}\nmodel: {arch: resnet8}\n"


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# A schema shaped like distill's, to prove new top-level schemas need no loader changes.
@dataclass
class TeacherSpec:
    path: str = REQUIRED
    modality: str = "rgb"


@dataclass
class DistillLike(RunConfig):
    student: ModelConfig = field(default_factory=ModelConfig)
    teachers: list[TeacherSpec] = field(default_factory=list)
    losses: dict[str, float] = field(default_factory=dict)
    loss_params: dict[str, dict] = field(default_factory=dict)
    temperature: Optional[float] = None


def test_defaults_fill_unset_keys_and_name_is_the_file_stem(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL, "resnet8_cifar.yaml"), TeachConfig)
    assert cfg.name == "resnet8_cifar"
    assert cfg.data.path == "data/x.h5" and cfg.model.arch == "resnet8"
    assert cfg.optim.lr == 0.05 and cfg.optim.milestones == [150, 180, 210]
    assert cfg.engine.device == "auto" and cfg.data.augment.crop is None


def test_unknown_key_names_file_dotted_key_and_nearest_valid_key(tmp_path):
    path = write(tmp_path, MINIMAL + "optim: {lrr: 0.1}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, TeachConfig)
    message = str(err.value)
    assert str(path) in message and "'optim.lrr'" in message and "did you mean 'optim.lr'" in message
    assert "\n" not in message


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'model.zzzz' \(valid keys here: arch, modality, pretrained\)"):
        load_config(write(tmp_path, MINIMAL.replace("arch: resnet8", "arch: resnet8, zzzz: 1")), TeachConfig)


@pytest.mark.parametrize("line, key, expected", [
    ("optim: {lr: fast}", "optim.lr", "float"),
    ("optim: {epochs: 2.5}", "optim.epochs", "int"),
    ("data: {path: data/x.h5, preload: 1}", "data.preload", "bool"),
    ("optim: {schedule: linear}", "optim.schedule", "one of 'step', 'cosine', 'constant'"),
    ("optim: {milestones: [10, x]}", "optim.milestones.1", "int"),
    ("data: {path: data/x.h5, augment: 3}", "data.augment", "a mapping"),
])
def test_wrong_type_names_key_expected_type_and_value(tmp_path, line, key, expected):
    text = MINIMAL if line.startswith("optim") else "model: {arch: resnet8}\n"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text + line + "\n"), TeachConfig)
    message = str(err.value)
    assert f"{key!r}" in message and expected in message, message


def test_float_fields_accept_ints_and_yaml11_exponent_strings(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + "optim: {lr: 1, weight_decay: 5e-4}\n"), TeachConfig)
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.weight_decay == pytest.approx(5e-4)


def test_missing_required_key(tmp_path):
    with pytest.raises(ConfigError, match=r"missing required key 'model.arch'"):
        load_config(write(tmp_path, "data: {path: x.h5}\n"), TeachConfig)


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "data:\n  path: [unclosed\nmodel: {arch: a}\n")
    with pytest.raises(ConfigError, match=rf"{path}: not valid YAML \(line \d+\)"):
        load_config(path, TeachConfig)


def test_overrides_strings_and_pairs_reach_nested_keys(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), TeachConfig,
                      ["optim.lr=0.2", "data.augment.hflip=true", "optim.milestones=[5, 8]",
                       ("engine.device", "cpu"), "optim.grad_clip=null"])
    assert cfg.optim.lr == 0.2 and cfg.data.augment.hflip is True
    assert cfg.optim.milestones == [5, 8] and cfg.engine.device == "cpu" and cfg.optim.grad_clip is None


def test_override_errors_name_the_set_flag(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match=r"--set optim\.lrr: unknown key 'optim\.lrr'; did you mean 'optim\.lr'"):
        load_config(path, TeachConfig, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE"):
        load_config(path, TeachConfig, ["optim.lr"])
    with pytest.raises(ConfigError, match=r"^--set optim.lr: 'optim.lr' must be float, got 'abc'"):
        load_config(path, TeachConfig, ["optim.lr=abc"])


def test_nested_schema_lists_of_dataclasses_and_typed_dicts(tmp_path):
    text = """
data: {path: d.h5}
student: {arch: resnet8x4, modality: ab}
teachers:
  - {path: runs/t1/best.pt, modality: L}
  - {path: runs/t2/best.pt}
losses: {ce: 1, crd: 0.8}
loss_params: {crd: {feat_dim: 128, nce_k: 4096}}
"""
    path = write(tmp_path, text)
    cfg = load_config(path, DistillLike, ["teachers.1.modality=depth", "losses.kd=0.9", "loss_params.crd.nce_t=0.1"])
    assert [t.modality for t in cfg.teachers] == ["L", "depth"]
    assert cfg.teachers[0].path == "runs/t1/best.pt"
    assert cfg.losses == {"ce": 1.0, "crd": 0.8, "kd": 0.9} and all(type(v) is float for v in cfg.losses.values())
    assert cfg.loss_params == {"crd": {"feat_dim": 128, "nce_k": 4096, "nce_t": 0.1}}

    bad_item = text.replace("{path: runs/t2/best.pt}", "{pth: runs/t2/best.pt}")
    with pytest.raises(ConfigError, match=r"unknown key 'teachers.1.pth'; did you mean 'teachers.1.path'"):
        load_config(write(tmp_path, bad_item), DistillLike)
    with pytest.raises(ConfigError, match=r"'losses.crd' must be float, got 'high'"):
        load_config(write(tmp_path, text.replace("crd: 0.8", "crd: high")), DistillLike)
    with pytest.raises(ConfigError, match=r"the list has 2 items, there is no item 5"):
        load_config(path, DistillLike, ["teachers.5.path=x"])
    with pytest.raises(ConfigError, match=r"missing required key 'teachers.0.path'"):
        load_config(write(tmp_path, text.replace("path: runs/t1/best.pt, ", "")), DistillLike)


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), TeachConfig, ["optim.lr=0.3", "seed=7"])
    out = tmp_path / "run" / "config.yaml"
    save_config(cfg, out)
    assert yaml.safe_load(out.read_text())["optim"]["lr"] == 0.3
    again = load_config(out, TeachConfig)
    assert config_to_dict(again) == config_to_dict(cfg)
    assert [p.name for p in out.parent.iterdir()] == ["config.yaml"]  # no temporary file left behind


# Teach configs are the shipped YAMLs with a `model` section (distill's have `student`).
TEACH_CONFIGS = [p for p in sorted((REPO / "configs").rglob("*.yaml"))
                 if "model" in (yaml.safe_load(p.read_text()) or {})]
CIFAR100_TEACH = [p for p in TEACH_CONFIGS if p.parent.name == "cifar100"]


def test_every_teacher_and_baseline_of_the_paper_has_a_config():
    names = {p.stem for p in CIFAR100_TEACH}
    paper = {"resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13", "ResNet50", "resnet20", "resnet32",
             "resnet8x4", "wrn_16_2", "wrn_40_1", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2"}
    assert paper <= names


@pytest.mark.parametrize("path", TEACH_CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_shipped_teach_configs_validate_and_document_the_prepare_step(path):
    cfg = load_config(path, TeachConfig)
    head = path.read_text().split("\ndata:")[0]
    command = f"teach configs/{path.relative_to(REPO / 'configs')}"  # `crossmodal teach` or `torchrun ... -m cli teach`
    assert "crossmodal prepare" in head and (f"crossmodal {command}" in head or f"-m cli {command}" in head)
    assert cfg.data.path.startswith("data/") and cfg.data.path.endswith(".h5")
    from crossmodal.models import list_models

    assert cfg.model.arch in list_models() or cfg.model.arch.startswith("timm:")


@pytest.mark.parametrize("path", CIFAR100_TEACH, ids=lambda p: p.stem)
def test_cifar100_configs_follow_the_paper(path):
    cfg = load_config(path, TeachConfig)
    o = cfg.optim
    assert (o.name, o.epochs, o.batch_size, o.schedule, o.gamma) == ("sgd", 240, 64, "step", 0.1)
    assert o.milestones == [150, 180, 210]
    assert (o.momentum, o.weight_decay, o.warmup_epochs) == (0.9, 5e-4, 0.0)
    assert o.lr == (0.01 if cfg.model.arch in ("MobileNetV2", "ShuffleV1", "ShuffleV2") else 0.05)
    a = cfg.data.augment
    assert (a.crop, a.padding, a.hflip, a.random_resized_crop) == (32, 4, True, None)
    assert cfg.model.arch == path.stem and cfg.model.modality == "rgb"


# ----------------------------------------------------------------------------- recipes (`base:`)


RECIPE = ("data: {path: data/c.h5, augment: {crop: 32, padding: 4}, workers: 4}\n"
          "optim: {lr: 0.05, epochs: 240, milestones: [150, 180, 210]}\n"
          "losses: {ce: 1.0, kd: 0.9}\n")


def test_a_config_extends_its_recipe_section_by_section(tmp_path):
    (tmp_path / "recipes").mkdir()
    write(tmp_path / "recipes", RECIPE, "cifar.yaml")
    (tmp_path / "pairs").mkdir()
    path = write(tmp_path / "pairs", "base: ../recipes/cifar.yaml\nstudent: {arch: resnet8}\n"
                                     "optim: {lr: 0.01, milestones: [5]}\ndata: {augment: {hflip: true}}\n"
                                     "losses: {crd: 0.8}\n", "pair.yaml")
    cfg = load_config(path, DistillLike, ["optim.epochs=3"])
    assert cfg.name == "pair"  # the extending file's name, not the recipe's
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.optim.milestones) == (0.01, 3, [5])  # file beats recipe, --set both
    assert cfg.optim.momentum == 0.9  # neither file: the schema default
    assert (cfg.data.path, cfg.data.workers) == ("data/c.h5", 4)
    assert (cfg.data.augment.crop, cfg.data.augment.padding, cfg.data.augment.hflip) == (32, 4, True)  # merged deep
    assert cfg.losses == {"crd": 0.8}  # a mapping value replaces the recipe's whole: no stray kd term
    saved = tmp_path / "resolved.yaml"  # what a run folder's config.yaml holds: everything, resolved, no base
    save_config(cfg, saved)
    again = yaml.safe_load(saved.read_text())
    assert "base" not in again and again["data"]["workers"] == 4 and again["optim"]["lr"] == 0.01
    assert load_config(saved, DistillLike) == cfg


def test_recipes_chain_and_errors_name_the_file_that_holds_the_culprit(tmp_path):
    write(tmp_path, "optim: {lr: 0.05, momentum: 0.5}\n", "root.yaml")
    write(tmp_path, "base: root.yaml\noptim: {epochs: 7}\n", "mid.yaml")
    cfg = load_config(write(tmp_path, "base: mid.yaml\n" + MINIMAL), TeachConfig)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.epochs) == (0.05, 0.5, 7)

    def error(text: str, recipe: str) -> str:
        write(tmp_path, recipe, "r.yaml")
        with pytest.raises(ConfigError) as e:
            load_config(write(tmp_path, text), TeachConfig)
        return str(e.value)

    r = str(tmp_path / "r.yaml")
    assert error("base: r.yaml\n" + MINIMAL, "optim: {lrr: 0.1}\n") == (
        f"{r}: unknown key 'optim.lrr'; did you mean 'optim.lr'?")
    assert error("base: r.yaml\n" + MINIMAL, "optim: {lr: -1}\n") == f"{r}: 'optim.lr' must be > 0, got -1.0"
    assert error("base: r.yaml\n" + MINIMAL, "optim: {epochs: many}\n").startswith(f"{r}: 'optim.epochs' must be")
    run = str(tmp_path / "run.yaml")
    assert error("base: r.yaml\nmodel: {arch: resnet8}\n", "optim: {lr: 0.1}\n") == (
        f"{run}: missing required key 'data.path'")  # in neither file
    assert error("base: r.yaml\n" + MINIMAL, "base: run.yaml\n").startswith(f"{r}: base 'run.yaml' extends itself")
    assert error("base: nowhere.yaml\n" + MINIMAL, "").startswith(f"{run}: base 'nowhere.yaml': no such file")
    assert error("base: [r.yaml]\n" + MINIMAL, "").startswith(f"{run}: 'base' must be the path of the config")
    assert error("base: r.yaml\n" + MINIMAL, "- a list\n").startswith(f"{r}: the top level must be a mapping")
