"""The ImageNet recipe (configs/imagenet/, the CRD paper's Table 3): its settings, and every config run end to end
at a tiny budget on real ImageNet images (a subset of Imagenette at 224 px, ../shared/data), in one process and
as a 2-process gloo torchrun job whose ranks must hold identical CRD memories.

Budget of the runs: a few images per class stored as the recipe stores ImageNet (`prepare --encoding jpeg`),
shrunk to 72 px (--max-side), random-resized crops of 64 px, evaluation on the centre 64 px of the image resized
to 73 (crop_fraction 0.875), batch 8, 2 steps, one epoch.
Run as a script (under torchrun) this file is the DDP worker.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import SHARED_DATA  # noqa: E402
from crossmodal.config import load_config  # noqa: E402
from crossmodal.tasks.distill import DistillConfig, run_distill  # noqa: E402
from crossmodal.tasks.teach import TeachConfig, run_teach  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "imagenet"
ARCHIVE = SHARED_DATA / "imagenette2-224-sub.tgz"
PER_CLASS = {"train": 8, "val": 4}  # images per class taken from the archive: 80 train, 40 val (10 classes)
MAX_SIDE, SIZE = 72, 64  # stored images at most 72 px (prepare --max-side); training and evaluation crops of 64
TINY = ["optim.epochs=1", "optim.batch_size=8", "engine.max_steps_per_epoch=2", "engine.device=cpu",
        "engine.progress=false", "data.workers=0", f"data.augment.random_resized_crop={SIZE}",
        f"data.eval_augment.center_crop={SIZE}"]
CRD_TINY = ["loss_params.crd.nce_k=32"]  # below the 80 training rows (the recipe's 16384 is for 1.28M)
TABLE3 = ("resnet34_resnet18_kd", "resnet34_resnet18_crd", "resnet34_resnet18_crd_kd")


# ------------------------------------------------------------------------------------------ the settings
def raw(name: str) -> dict:
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())


def test_every_imagenet_config_has_the_table3_recipe():
    """100 epochs, global batch 256, SGD lr 0.1 momentum 0.9, x0.1 at 30/60/90, wd 1e-4, RandomResizedCrop 224
    + flip, torchvision-style resnets (timm), the prepared file of `prepare --encoding jpeg`."""
    names = {p.stem for p in CONFIGS.glob("*.yaml")}
    recipe = CONFIGS.parent / "recipes" / "imagenet.yaml"
    assert "crossmodal prepare imagefolder /path/to/imagenet --out data/imagenet.h5 --encoding jpeg" in recipe.read_text()
    assert {"resnet34", "resnet18", "resnet34_pretrained", *TABLE3} <= names
    for name in sorted(names - {"resnet34_pretrained"}):
        schema = DistillConfig if name in TABLE3 else TeachConfig
        cfg = load_config(CONFIGS / f"{name}.yaml", schema)
        optim = cfg.optim
        assert (optim.name, optim.lr, optim.momentum, optim.weight_decay, optim.batch_size, optim.epochs) == \
               ("sgd", 0.1, 0.9, 1e-4, 256, 100), name
        assert (optim.schedule, optim.milestones, optim.gamma, optim.warmup_epochs) == ("step", [30, 60, 90], 0.1, 0), name
        augment, evaluation = cfg.data.augment, cfg.data.eval_augment
        assert (augment.random_resized_crop, augment.scale, augment.hflip, augment.crop) == (224, [0.08, 1.0], True, None)
        assert (evaluation.center_crop, evaluation.crop_fraction) == (224, 0.875)  # Resize(256) + CenterCrop(224)
        assert cfg.data.path == "data/imagenet.h5" and not cfg.data.preload
        arch = cfg.student.arch if schema is DistillConfig else cfg.model.arch
        assert arch == ("timm:resnet34" if name == "resnet34" else "timm:resnet18"), name
    for name in TABLE3:
        cfg = load_config(CONFIGS / f"{name}.yaml", DistillConfig)
        assert [t.checkpoint for t in cfg.teachers] == ["runs/resnet34/last.pt"]
        if "crd" in cfg.losses:
            assert cfg.loss_params["crd"] == {"feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5,
                                              "mode": "exact", "memory_dtype": "float32"}
        if "kd" in cfg.losses:
            assert cfg.loss_params["kd"] == {"temperature": 4}
    assert raw("resnet34_resnet18_kd")["losses"] == {"ce": 0.1, "kd": 0.9}
    assert raw("resnet34_resnet18_crd")["losses"] == {"ce": 1.0, "crd": 0.8}
    assert raw("resnet34_resnet18_crd_kd")["losses"] == {"ce": 1.0, "kd": 1.0, "crd": 0.8}
    shortcut = load_config(CONFIGS / "resnet34_pretrained.yaml", TeachConfig)
    assert shortcut.model.arch == "timm:resnet34.tv_in1k" and shortcut.model.pretrained


# ------------------------------------------------------------------------------------ the runs, end to end
def subprocess_env() -> dict:
    """The environment of the prepare and torchrun subprocesses: one thread, this checkout's modules first."""
    path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": path}


@pytest.fixture(scope="module")
def imagenette(tmp_path_factory) -> Path:
    """A prepared file of the first PER_CLASS images of each class and split of imagenette2-224-sub: encoded JPEGs,
    shrunk to MAX_SIDE px."""
    if not ARCHIVE.is_file():
        pytest.skip(f"../shared/data absent: the ImageNet recipe test needs {ARCHIVE} (see README, 'Real data')")
    root = tmp_path_factory.mktemp("imagenette")
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(ARCHIVE) as archive:
        for member in archive:
            parts = Path(member.name).parts  # imagenette2-224/<split>/<wnid>/<file>
            if not member.isfile() or len(parts) != 4 or parts[1] not in PER_CLASS:
                continue
            key = (parts[1], parts[2])
            if taken.get(key, 0) >= PER_CLASS[parts[1]]:
                continue
            taken[key] = taken.get(key, 0) + 1
            target = root / "images" / Path(*parts[1:])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())
    out = root / "imagenette.h5"
    env = subprocess_env()
    done = subprocess.run([sys.executable, "-m", "cli", "prepare", "imagefolder", str(root / "images"), "--out",
                           str(out), "-m", "rgb", "--encoding", "jpeg", "--max-side", str(MAX_SIDE), "-j", "1"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


class Lines(logging.Handler):
    """Collects the 'crossmodal' logger's messages."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def run(name: str, schema, overrides: list[str], out_dir: Path) -> tuple[dict, list[str]]:
    """Run configs/imagenet/<name>.yaml at the tiny budget into out_dir; (summary, the run's log lines)."""
    cfg = load_config(CONFIGS / f"{name}.yaml", schema, TINY + overrides + [f"out_dir={out_dir}"])
    logger, lines = logging.getLogger("crossmodal"), Lines()
    logger.addHandler(lines)
    try:
        summary = (run_distill if schema is DistillConfig else run_teach)(cfg)
    finally:
        logger.removeHandler(lines)
    return summary, lines.lines


@pytest.fixture(scope="module")
def teacher(imagenette, tmp_path_factory) -> Path:
    """configs/imagenet/resnet34.yaml (the Table 3 teacher) at the tiny budget; its last.pt."""
    out_dir = tmp_path_factory.mktemp("teacher")
    summary, _ = run("resnet34", TeachConfig, [f"data.path={imagenette}"], out_dir)
    assert summary
    return out_dir / "resnet34" / "last.pt"


@pytest.mark.slow
def test_teacher_and_student_alone_configs_run(imagenette, teacher, tmp_path):
    """resnet34.yaml (the fixture) and resnet18.yaml train, and the pretrained shortcut runs its one short epoch
    (here without the download: pretrained false)."""
    assert teacher.is_file()
    for name, extra in (("resnet18", []), ("resnet34_pretrained", ["model.pretrained=false"])):
        summary, _ = run(name, TeachConfig, [f"data.path={imagenette}", *extra], tmp_path)
        assert (tmp_path / name / "last.pt").is_file() and summary


@pytest.mark.slow
@pytest.mark.parametrize("name", TABLE3)
def test_table3_distill_configs_run(name, imagenette, teacher, tmp_path):
    """KD, CRD and CRD+KD from the teacher: the run finishes, and a CRD run names its memories' size at start."""
    overrides = [f"data.path={imagenette}", f"teachers.0.checkpoint={teacher}"]
    overrides += CRD_TINY if "crd" in name else []
    summary, lines = run(name, DistillConfig, overrides, tmp_path)
    assert (tmp_path / name / "last.pt").is_file() and summary
    notes = [line for line in lines if "crd: memories" in line]
    if "crd" in name:  # 2 x 80 rows x 128 float32 = 81,920 bytes
        assert notes == [f"{name}: crd: memories 2 x 80 rows x 128 float32 = 81.9 kB; "
                         "loss_params.crd.memory_dtype: float16 halves it"]
    else:
        assert not notes


@pytest.mark.slow
def test_two_gloo_ranks_keep_identical_half_crd_memories(imagenette, teacher, tmp_path):
    """The CRD config under torchrun (2 processes, gloo) with memory_dtype float16: both ranks end with the same
    memories and Z, bit for bit, in float16; the 16 rows the 2 steps of 8 visited are unit rows."""
    env = subprocess_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
           str(imagenette), str(teacher), str(tmp_path)]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"crd_state.{rank}.pt", weights_only=True) for rank in range(2)]
    assert set(ranks[0]) == {"losses.crd.0.memory_student.rows", "losses.crd.0.memory_teacher.rows",
                             "losses.crd.0.z_student_anchor.log_z", "losses.crd.0.z_student_anchor.initialised",
                             "losses.crd.0.z_teacher_anchor.log_z", "losses.crd.0.z_teacher_anchor.initialised"}
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key
    for key in ("losses.crd.0.memory_student.rows", "losses.crd.0.memory_teacher.rows"):
        rows = ranks[0][key]
        assert rows.dtype == torch.float16 and rows.shape == (80, 128)
        unit = ((rows.float().norm(dim=1) - 1).abs() <= 2.0 ** -11).sum().item()  # a unit row, rounded
        assert unit >= 16, key
    assert bool(ranks[0]["losses.crd.0.z_student_anchor.initialised"])
    checkpoint = torch.load(tmp_path / "resnet34_resnet18_crd" / "last.pt", weights_only=True)
    assert checkpoint["task"]["losses.crd.0.memory_student.rows"].dtype == torch.float16


def _worker(data: str, teacher: str, out_dir: str) -> None:
    """One torchrun rank: the CRD config at the tiny budget, float16 memories; saves this rank's CRD state."""
    import crossmodal.tasks.distill as distill

    class RecordingTrainer(distill.Trainer):
        def fit(self):
            summary = super().fit()
            rank = torch.distributed.get_rank()
            state = {k: v for k, v in self.task.state_dict().items() if k.startswith("losses.crd.")
                     and not k.startswith("losses.crd.0.classes.") and "embed_" not in k}
            torch.save(state, Path(out_dir) / f"crd_state.{rank}.pt")
            return summary

    distill.Trainer = RecordingTrainer
    overrides = TINY + CRD_TINY + [f"data.path={data}", f"teachers.0.checkpoint={teacher}", f"out_dir={out_dir}",
                                   "loss_params.crd.memory_dtype=float16"]
    run_distill(load_config(CONFIGS / "resnet34_resnet18_crd.yaml", DistillConfig, overrides))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _worker(*sys.argv[1:4])
