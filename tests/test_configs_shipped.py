"""Every YAML under configs/ validates against its schema and names real models, modalities and losses."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from crossmodal.config import load_config
from crossmodal.losses import list_distillers
from crossmodal.modalities import MODALITIES
from crossmodal.models import list_models
from crossmodal.tasks.distill import DistillConfig, resolve_weights
from crossmodal.tasks.probe import ProbeConfig
from crossmodal.tasks.teach import TeachConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted((CONFIG_DIR / "recipes").glob("*.yaml"))  # bases that configs extend (`base:`), not runs
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if p not in RECIPES)


def schema_of(path: Path):
    raw = yaml.safe_load(path.read_text())
    if "method" in raw or "checkpoint" in raw:
        return ProbeConfig
    return DistillConfig if "student" in raw or "teachers" in raw else TeachConfig


def test_configs_exist_for_every_paper_pair():
    names = {p.stem for p in CONFIGS}
    for pair in ("resnet32x4_resnet8x4", "wrn_40_2_wrn_16_2", "vgg13_MobileNetV2", "ResNet50_vgg8"):
        for method in ("kd", "crd", "crd_kd"):
            assert f"{pair}_{method}" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_shipped_config_validates(path):
    schema = schema_of(path)
    cfg = load_config(path, schema)
    models = set(list_models())
    if schema is ProbeConfig:
        assert cfg.method in ("linear", "finetune", "dense") and cfg.checkpoint
    elif schema is TeachConfig:
        arch_ok = cfg.model.arch in models or cfg.model.arch.startswith("timm:")
        assert arch_ok and cfg.model.modality in MODALITIES
    else:
        assert cfg.student.arch in models or cfg.student.arch.startswith("timm:")
        assert cfg.student.modality in MODALITIES and cfg.teachers
        assert set(cfg.losses) <= set(list_distillers())
        assert resolve_weights(cfg)


def test_every_recipe_checks_and_is_extended():
    """A recipe's keys and values are checked on their own (no required keys), and some config extends it."""
    from crossmodal.config import check_partial, read_yaml
    from crossmodal.sections import RunConfig

    bases = {(p.parent / yaml.safe_load(p.read_text())["base"]).resolve() for p in CONFIGS
             if "base" in yaml.safe_load(p.read_text())}
    assert RECIPES
    for recipe in RECIPES:
        check_partial(RunConfig, read_yaml(recipe), str(recipe))
        assert recipe.resolve() in bases, f"{recipe.name}: no config extends it"
    assert len([p for p in CONFIGS if p.parent.name == "cifar100"]) == 54
    assert all("base" in yaml.safe_load(p.read_text()) for p in CONFIGS if p.parent.name == "cifar100")
