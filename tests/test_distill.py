"""`distill`: compression, cross-modal, ensemble and init-stage runs end to end on tiny files."""
from __future__ import annotations

import contextlib
import csv
import json
import logging

import pytest
import torch
from click.testing import CliRunner

from cli.main import app
from crossmodal.config import load_config
from crossmodal.engine import load_checkpoint, load_model
from crossmodal.engine.checkpoint import file_sha256
from crossmodal.engine.teachers import TeacherInput
from crossmodal.errors import ConfigError
from crossmodal.losses import list_distillers
from crossmodal.sections import DataConfig, EngineConfig, ModelConfig, OptimConfig
from crossmodal.tasks.distill import DistillConfig, TeacherConfig, run_distill
from crossmodal.tasks.teach import TeachConfig, run_teach

torch.set_num_threads(1)


def small_optim(epochs=1):
    return OptimConfig(lr=0.05, batch_size=8, epochs=epochs, schedule="constant", weight_decay=0.0)


def quiet_engine():
    return EngineConfig(device="cpu", progress=False, log_every=1000)


def teach_teacher(tmp_path, data, modality="rgb", name="teacher", seed=0, arch="resnet8"):
    """Train a 1-epoch teacher on `modality` and return its best.pt path."""
    cfg = TeachConfig(name=name, seed=seed, out_dir=str(tmp_path / "runs"), data=DataConfig(path=str(data)),
                      model=ModelConfig(arch=arch, modality=modality), optim=small_optim(), engine=quiet_engine())
    run_teach(cfg)
    return tmp_path / "runs" / name / "best.pt"


def distill_cfg(tmp_path, data, teachers, losses, student="resnet8", modality="rgb", name="student",
                epochs=1, loss_params=None, train_split="train"):
    return DistillConfig(
        name=name, out_dir=str(tmp_path / "runs"), data=DataConfig(path=str(data), train_split=train_split),
        student=ModelConfig(arch=student, modality=modality),
        teachers=[TeacherConfig(checkpoint=str(t), modality=m) for t, m in teachers],
        losses=losses, loss_params=loss_params or {}, optim=small_optim(epochs), engine=quiet_engine())


@contextlib.contextmanager
def logged_lines():
    """The messages the crossmodal logger emits inside the block."""
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("crossmodal").addHandler(handler)
    try:
        yield lines
    finally:
        logging.getLogger("crossmodal").removeHandler(handler)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from conftest import make_prepared

    return make_prepared(tmp_path_factory.mktemp("data"), splits={"train": 32, "test": 16},
                         modalities=("rgb", "L", "ab"), size=16)


@pytest.fixture(scope="module")
def rgb_teacher(tmp_path_factory, prepared):
    return teach_teacher(tmp_path_factory.mktemp("teacher"), prepared)


def test_compression_crd_kd_records_teacher_and_crd_state(tmp_path, prepared, rgb_teacher):
    cfg = distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb")], {"ce": 1.0, "kd": 1.0, "crd": 0.8},
                      loss_params={"crd": {"nce_k": 16}})
    with logged_lines() as lines:
        summary = run_distill(cfg)
    # The start of the run names the memories' size: 2 x 32 rows x 128 float32 = 32,768 bytes.
    assert "student: crd: memories 2 x 32 rows x 128 float32 = 32.8 kB; loss_params.crd.memory_dtype: float16 " \
           "halves it" in lines
    run = tmp_path / "runs" / "student"
    ckpt = load_checkpoint(run / "last.pt")
    teacher = ckpt["task_meta"]["teachers"][0]
    assert teacher["sha256"] == file_sha256(rgb_teacher) and teacher["modality"] == "rgb"
    assert ckpt["task_meta"]["losses"] == {"ce": 1.0, "kd": 1.0, "crd": 0.8}
    state = ckpt["task"]
    # CRD's heads, memories (one unit row per training sample) and Z values are saved with the run.
    for side in ("student", "teacher"):
        rows = state[f"losses.crd.0.memory_{side}.rows"]
        assert rows.shape == (32, 128)
        torch.testing.assert_close(rows.norm(dim=1), torch.ones(32))
        assert state[f"losses.crd.0.z_{side}_anchor.initialised"].item()
    assert state["losses.crd.0.embed_student.linear.weight"].shape == (128, 64)
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for term in ("train_ce", "train_kd", "train_crd"):
        assert term in rows[0]
    # One epoch: the best test top-1 is that epoch's, a whole number of the 16 test samples.
    assert summary["best_test_top1"] == pytest.approx(float(rows[-1]["test_top1"]), abs=1e-3)
    assert (summary["best_test_top1"] * 16 / 100) == pytest.approx(round(summary["best_test_top1"] * 16 / 100))
    # The student is a normal model checkpoint: probe/distill can load it.
    model, meta = load_model(run / "best.pt")
    assert meta["arch"] == "resnet8" and meta["modality"] == "rgb"


def test_cross_modal_without_labels_trains_L_student_from_rgb_teacher(tmp_path, prepared, rgb_teacher):
    cfg = distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb")], {"crd": 1.0}, modality="L", epochs=2,
                      loss_params={"crd": {"nce_k": 16, "mode": "relax"}})
    run_distill(cfg)
    ckpt = load_checkpoint(tmp_path / "runs" / "student" / "last.pt")
    assert ckpt["meta"]["modality"] == "L" and ckpt["meta"]["in_chans"] == 1
    rows = (tmp_path / "runs" / "student" / "metrics.csv").read_text().splitlines()
    assert "train_crd" in rows[0] and "train_ce" not in rows[0]
    from crossmodal.tasks.distill import build_distill_datasets, build_distill_task

    assert not build_distill_task(cfg, build_distill_datasets(cfg)[0]).select_best_by_accuracy
    # No loss trains the classifier head, so best.pt is the latest epoch, not the luckiest head.
    assert load_checkpoint(tmp_path / "runs" / "student" / "best.pt")["epoch"] == 2


def test_ensemble_gets_one_crd_per_teacher_and_one_kd(tmp_path, prepared, rgb_teacher):
    second = teach_teacher(tmp_path, prepared, modality="L", name="teacher_L", seed=1)
    cfg = distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb"), (second, "L")], {"kd": 0.9, "crd": 0.8, "ce": 0.1},
                      loss_params={"crd": {"nce_k": 16}, "kd": {"temperature": 2.5}, "ce": {"label_smoothing": 0.1}})
    from crossmodal.tasks.distill import build_distill_datasets, build_distill_task

    train, _ = build_distill_datasets(cfg)
    task = build_distill_task(cfg, train)
    assert len(task.losses["crd"]) == 2 and len(task.losses["kd"]) == 1
    # each instance gets its loss_params: the per-teacher CRDs and the one teacher-combining KD alike
    assert [m.nce_k for m in task.losses["crd"]] == [16, 16] and task.losses["kd"][0].temperature == 2.5
    assert task.losses["ce"][0].label_smoothing == 0.1  # a loss without a teacher too
    assert task.combined == {"kd"}  # KD sees every teacher at once; each CRD its own
    assert task.meta.data_path == str(prepared) and task.meta.modality == "rgb"  # what the checkpoint will say
    assert task.select_best_by_accuracy  # kd and ce train the classifier head
    batch = {k: torch.stack([train[i][k] for i in range(4)]) for k in ("rgb", "L", "label", "index")}
    total, terms, logits = task(batch)
    assert torch.isclose(total, sum(terms.values()))
    assert logits.shape == (4, 4)
    run_distill(cfg)
    teachers = load_checkpoint(tmp_path / "runs" / "student" / "last.pt")["task_meta"]["teachers"]
    assert [t["modality"] for t in teachers] == ["rgb", "L"]


def test_distill_loss_is_the_weighted_sum_of_its_terms(tmp_path, prepared, rgb_teacher):
    """Weights other than 1 multiply each term (ce, kd, crd), in the total and in the logged terms."""
    weights = {"ce": 0.3, "kd": 2.5, "crd": 0.7}
    cfg = distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb")], weights, loss_params={"crd": {"nce_k": 16}})
    from crossmodal.tasks.distill import build_distill_datasets, build_distill_task

    train, _ = build_distill_datasets(cfg)
    task = build_distill_task(cfg, train).eval()  # eval: CRD leaves its memories and Z as they are
    batch = {k: torch.stack([train[i][k] for i in range(6)]) for k in ("rgb", "label", "index")}
    torch.manual_seed(3)  # CRD's negatives
    total, terms, _ = task(batch)
    with torch.no_grad():
        s_out, t_out = task.model(batch["rgb"]), task.teacher_outputs(batch)[0]
        labels = batch["label"]
        ce = torch.nn.functional.cross_entropy(s_out["logits"], labels)
        p_t = torch.softmax(t_out["logits"] / 4, dim=1)
        kd = 16 * (p_t * (p_t.log() - torch.log_softmax(s_out["logits"] / 4, dim=1))).sum(1).mean()
        torch.manual_seed(3)
        crd = task.losses["crd"][0](s_out, t_out, batch)
    unweighted = {"ce": ce.item(), "kd": kd.item(), "crd": crd.item()}
    for name, weight in weights.items():
        assert terms[name].item() == pytest.approx(weight * unweighted[name], rel=1e-4), name
    assert total.item() == pytest.approx(sum(w * unweighted[n] for n, w in weights.items()), rel=1e-4)
    assert min(unweighted.values()) > 1e-3  # every term counts, so a dropped weight changes the total


def test_init_stage_runs_first_and_only_trains_what_it_names(tmp_path, prepared, rgb_teacher):
    cfg = distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb")], {"ce": 1.0, "ft": 200.0},
                      loss_params={"ft": {"init_epochs": 1}})
    teacher_before = {k: v.clone() for k, v in load_model(rgb_teacher)[0].state_dict().items()}
    run_distill(cfg)
    init_run = tmp_path / "runs" / "student" / "init"
    assert (init_run / "summary.json").exists()
    init_ckpt = load_checkpoint(init_run / "last.pt")
    header = (init_run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train_init_ft" in header and "test_top1" in header  # the stage is evaluated on the test split too
    # FT's init stage trains the paraphraser only: the student's weights are untouched by it.
    from crossmodal.tasks.distill import build_distill_datasets, build_distill_task

    torch.manual_seed(cfg.seed)
    from crossmodal.engine import seed_everything

    seed_everything(cfg.seed)
    train, _ = build_distill_datasets(cfg)
    fresh = build_distill_task(cfg, train)
    for k, v in fresh.model.state_dict().items():
        assert torch.equal(v, init_ckpt["model"][k]), k
    # ... while the paraphraser it names did learn.
    paraphraser = [k for k in init_ckpt["task"] if "paraphraser" in k and k.endswith("weight")]
    assert paraphraser and any(
        not torch.equal(init_ckpt["task"][k], fresh.state_dict()[k.replace("stage_losses.", "losses.")])
        for k in paraphraser)
    # ... and the teacher is never trained.
    for k, v in load_model(rgb_teacher)[0].state_dict().items():
        assert torch.equal(v, teacher_before[k])


def test_init_stage_task_total_is_the_sum_of_each_losses_init_loss_and_ddp_finds_unused_parameters(
        tmp_path, prepared, rgb_teacher):
    """The init stage's total adds every named loss's init_loss (each computed on its own here) from 0, logs each
    as init_<name>, and lets DDP find the parameters a stage leaves without gradient (the student's, for FT)."""
    cfg = distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb")], {"ce": 1.0, "ab": 1.0, "fsp": 50.0})
    from crossmodal.tasks.distill import InitStageTask, build_distill_datasets, build_distill_task

    train, _ = build_distill_datasets(cfg)
    task = build_distill_task(cfg, train).eval()
    stage = InitStageTask(task, ["ab", "fsp"])
    batch = {k: torch.stack([train[i][k] for i in range(6)]) for k in ("rgb", "label", "index")}
    total, terms, logits = stage(batch)
    with torch.no_grad():
        s_out, t_out = task.model(batch["rgb"]), task.teacher_outputs(batch)[0]
        ab = task.losses["ab"][0].init_loss(s_out, t_out, batch).item()
        fsp = task.losses["fsp"][0].init_loss(s_out, t_out, batch).item()
    assert min(ab, fsp) > 1e-6  # both count, so a sign or a start other than 0 shows
    assert sorted(terms) == ["init_ab", "init_fsp"]
    assert terms["init_ab"].item() == pytest.approx(ab, rel=1e-5)
    assert terms["init_fsp"].item() == pytest.approx(fsp, rel=1e-5)
    assert total.item() == pytest.approx(ab + fsp, rel=1e-5)
    assert torch.equal(logits, s_out["logits"])
    assert stage.ddp_find_unused_parameters is True


@pytest.mark.parametrize("memory_dtype", ["float32", "float16"])
def test_resume_after_interruption_matches_uninterrupted_crd_run(tmp_path, prepared, rgb_teacher, memory_dtype):
    losses, params = {"ce": 1.0, "crd": 0.8}, {"crd": {"nce_k": 16, "memory_dtype": memory_dtype}}
    full = distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb")], losses, loss_params=params, name="full", epochs=2)
    run_distill(full)
    part = distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb")], losses, loss_params=params, name="part", epochs=1)
    run_distill(part)
    resumed = distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb")], losses, loss_params=params, name="part",
                          epochs=2)
    run_distill(resumed, resume=True)
    a = load_checkpoint(tmp_path / "runs" / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "runs" / "part" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["task"]:
        assert torch.equal(a["task"][k], b["task"][k]), k  # CRD memories included
    assert b["task"]["losses.crd.0.memory_student.rows"].dtype == getattr(torch, memory_dtype)  # saved as stored


def test_teacher_input_renormalises_between_stats():
    data = {"mean": [0.5, 0.4], "std": [0.2, 0.1]}
    teacher = {"mean": [0.45, 0.5], "std": [0.25, 0.2]}
    renorm = TeacherInput(data, teacher)
    raw = torch.rand(3, 2, 4, 4)
    x = (raw - torch.tensor(data["mean"]).view(2, 1, 1)) / torch.tensor(data["std"]).view(2, 1, 1)
    expected = (raw - torch.tensor(teacher["mean"]).view(2, 1, 1)) / torch.tensor(teacher["std"]).view(2, 1, 1)
    assert torch.allclose(renorm(x), expected, atol=1e-5)
    assert TeacherInput(data, data).identity


def test_config_errors_name_the_key(tmp_path, prepared, rgb_teacher):
    cfg = distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb")], {"crdd": 1.0})
    with pytest.raises(ConfigError, match=r"losses.crdd.*did you mean 'crd'"):
        run_distill(cfg)
    cfg = distill_cfg(tmp_path, prepared, [], {"ce": 1.0, "kd": 0.9, "crd": 0.8})
    with pytest.raises(ConfigError) as error:
        run_distill(cfg)
    assert str(error.value) == "losses kd, crd need a teacher; add `teachers: [{checkpoint: ...}]`"
    known = ", ".join(list_distillers())
    for losses, params, message in (
            ({"zzz": 1.0}, {}, f"losses.zzz: unknown loss 'zzz' (known: {known})"),
            ({"ce": 0.0, "kd": 0.0}, {}, "losses: every weight is 0 (ce, kd); nothing would train the student"),
            ({"ce": 1.0}, {"crd": {"nce_k": 4}}, "loss_params.crd: 'crd' is not in `losses` (ce)")):
        cfg = distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb")], losses, loss_params=params)
        with pytest.raises(ConfigError) as error:
            run_distill(cfg)
        assert str(error.value) == message
    cfg = distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb")], {})
    with pytest.raises(ConfigError, match=r"^losses: give at least one loss, e.g. \{ce: 1, kd: 1, crd: 0.8\}$"):
        run_distill(cfg)
    cfg = distill_cfg(tmp_path, prepared, [(rgb_teacher, "ab")], {"kd": 1.0})
    with pytest.raises(ConfigError, match="teachers.0.modality"):
        run_distill(cfg)


def test_kd_refuses_a_teacher_with_other_classes(tmp_path, rgb_teacher):
    from conftest import make_prepared

    other = make_prepared(tmp_path, splits={"train": 16, "test": 8}, num_classes=3, name="three.h5")
    cfg = distill_cfg(tmp_path, other, [(rgb_teacher, "rgb")], {"ce": 1.0, "kd": 1.0})
    with pytest.raises(ConfigError, match="teacher predicts 4 classes, the student 3"):
        run_distill(cfg)
    # CRD compares embeddings, so a teacher of other classes is fine (transfer across label sets).
    ok = distill_cfg(tmp_path, other, [(rgb_teacher, "rgb")], {"ce": 1.0, "crd": 0.8},
                     loss_params={"crd": {"nce_k": 4}})
    assert run_distill(ok)["epochs"] == 1


def test_cli_distill_from_yaml_and_bad_key_exit_code(tmp_path, prepared, rgb_teacher):
    config = tmp_path / "d.yaml"
    config.write_text(json.dumps({
        "data": {"path": str(prepared)}, "student": {"arch": "resnet8", "modality": "L"},
        "teachers": [{"checkpoint": str(rgb_teacher), "modality": "rgb"}],
        "losses": {"ce": 1, "crd": None}, "loss_params": {"crd": {"nce_k": 8}},
        "optim": {"epochs": 1, "batch_size": 8, "schedule": "constant"}, "engine": {"device": "cpu", "progress": False},
    }))
    result = CliRunner().invoke(app, ["distill", str(config), "--out-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    weights = load_checkpoint(tmp_path / "runs" / "d" / "last.pt")["task_meta"]["losses"]
    assert weights["crd"] == pytest.approx(0.8)  # null weight -> CRD's reference default
    loaded = load_config(config, DistillConfig)
    assert loaded.teachers[0].modality == "rgb"
    result = CliRunner().invoke(app, ["distill", str(config), "--set", "student.archh=resnet8"])
    assert result.exit_code == 2 and "student.arch" in result.output


def test_rgb_to_depth_without_any_label_trains_and_keeps_latest_as_best(tmp_path, rgb_teacher):
    from conftest import make_prepared

    rgbd = make_prepared(tmp_path, splits={"unlabeled": 16}, modalities=("rgb", "depth"), name="rgbd.h5")
    cfg = distill_cfg(tmp_path, rgbd, [(rgb_teacher, "rgb")], {"crd": 1.0}, modality="depth", epochs=2,
                      loss_params={"crd": {"nce_k": 8, "mode": "relax"}}, train_split="unlabeled")
    cfg.data.test_split = "unlabeled"
    with logged_lines() as lines:
        summary = run_distill(cfg)
    assert f"{rgbd}: split 'unlabeled' has no labels; training without test accuracy" in lines
    assert summary["best_test_top1"] is None and summary["best_epoch"] == 2
    run = tmp_path / "runs" / "student"
    assert load_checkpoint(run / "best.pt")["epoch"] == 2
    assert "test_top1" not in (run / "metrics.csv").read_text().splitlines()[0]


def test_student_pretrained_needs_a_timm_model_and_reaches_timm(tmp_path, prepared, rgb_teacher, monkeypatch):
    cfg = distill_cfg(tmp_path, prepared, [(rgb_teacher, "rgb")], {"ce": 1.0, "kd": 1.0})
    cfg.student.pretrained = True
    with pytest.raises(ConfigError, match=r"student.pretrained needs a timm model \('timm:<name>'\), not 'resnet8'"):
        run_distill(cfg)
    timm = pytest.importorskip("timm")
    asked = []

    def offline(name, pretrained=False, **kwargs):  # what timm does when the weights cannot be fetched
        asked.append(pretrained)
        raise OSError("offline: weights not in the cache")

    monkeypatch.setattr(timm, "create_model", offline)
    cfg.student = ModelConfig(arch="timm:resnet18", modality="rgb", pretrained=True)
    with pytest.raises(ConfigError, match="could not load pretrained weights for timm:resnet18"):
        run_distill(cfg)
    assert asked == [True]


def test_distill_task_flags_checkpoint_meta_notes_and_teacher_outputs_by_hand():
    """DistillTask's flags for each mix of losses, its checkpoint meta, start notes and teacher outputs, on a bare
    task (a linear student, stand-in teachers), without the data or a trained teacher."""
    from types import SimpleNamespace

    from crossmodal.losses import build_distiller
    from crossmodal.losses.base import Distiller
    from crossmodal.tasks.distill import DistillTask

    class Stage(Distiller):  # a loss with an init stage of `epochs` epochs and a note
        needs_teacher = False

        def __init__(self, epochs=0, note=None):
            super().__init__(None)
            self.init_epochs, self.note = epochs, note

        def state_note(self):
            return self.note

    def task(losses, weights=None, teachers=()):
        return DistillTask(torch.nn.Linear(2, 2), None, list(teachers),
                           {n: torch.nn.ModuleList([m]) for n, m in losses.items()},
                           weights or {n: 1.0 for n in losses}, set())

    ce, kd, rkd = build_distiller("ce", None), build_distiller("kd", None), build_distiller("rkd", None)
    # Best by accuracy only when a loss that trains the head has a weight above 0.
    assert task({"ce": ce, "rkd": rkd}).select_best_by_accuracy
    assert not task({"ce": ce, "rkd": rkd}, {"ce": 0.0, "rkd": 1.0}).select_best_by_accuracy
    assert not task({"rkd": rkd}).select_best_by_accuracy
    # DDP looks for unused parameters only when a loss has an init stage of at least one epoch.
    assert task({"a": Stage(1), "b": Stage(0)}).ddp_find_unused_parameters is True
    assert task({"a": Stage(0), "rkd": rkd}).ddp_find_unused_parameters is False
    # Capturable only when every loss is.
    assert task({"ce": ce, "kd": kd}).capturable is True
    assert task({"ce": ce, "rkd": rkd}).capturable is False
    # Notes of the losses that have one, in order.
    assert task({"a": Stage(note="first"), "b": Stage(), "c": Stage(note="third")}).start_notes() == ["first", "third"]
    # Checkpoint meta: four keys of each teacher's meta (None when absent) and its modality; the weights.
    weight = torch.nn.Parameter(torch.tensor(2.0))
    teachers = [SimpleNamespace(meta={"path": "t.pt", "sha256": "ab12", "arch": "resnet8", "epoch": 3, "lr": 0.1},
                                modality="rgb"),
                SimpleNamespace(meta={"path": "u.pt", "arch": "vgg8"}, modality="L")]
    distill = task({"ce": ce}, {"ce": 0.5}, teachers)
    assert distill.checkpoint_meta() == {
        "teachers": [{"path": "t.pt", "sha256": "ab12", "arch": "resnet8", "epoch": 3, "modality": "rgb"},
                     {"path": "u.pt", "sha256": None, "arch": "vgg8", "epoch": None, "modality": "L"}],
        "losses": {"ce": 0.5}}
    # Teacher outputs: every teacher's, in order, without a graph.
    callers = [lambda batch: {"logits": weight * batch["x"]}, lambda batch: {"logits": -weight * batch["x"]}]
    outputs = task({"ce": ce}, teachers=callers).teacher_outputs({"x": torch.tensor([1.0, 3.0])})
    assert [o["logits"].tolist() for o in outputs] == [[2.0, 6.0], [-2.0, -6.0]]
    assert not any(o["logits"].requires_grad for o in outputs)


def test_distill_datasets_carry_the_configured_augments_loading_seed_and_resolved_teacher_modality(
        tmp_path, rgb_teacher):
    """build_distill_datasets by hand: the train split gets data.augment, the test split data.eval_augment, both the
    run's preload, seed and decode; the teacher's modality, left unset, is resolved into the config; a test split
    whose labels are all 0 (one class) still gives test accuracy."""
    from conftest import make_prepared

    from crossmodal.data.transforms import PairedAugment
    from crossmodal.sections import AugmentConfig
    from crossmodal.tasks.distill import build_distill_datasets

    data = make_prepared(tmp_path, num_classes=1)  # every label 0
    cfg = distill_cfg(tmp_path, data, [(rgb_teacher, None)], {"ce": 1.0, "kd": 1.0})
    cfg.data.augment = AugmentConfig(crop=12, padding=2, hflip=True)
    cfg.data.eval_augment = AugmentConfig(center_crop=12)
    cfg.data.preload, cfg.seed = True, 7
    train, test = build_distill_datasets(cfg)
    assert cfg.teachers[0].modality == "rgb"  # resolved from the checkpoint, written into the run's config
    assert train.modalities == ["rgb"] and test.modalities == ["rgb"]
    want_train = PairedAugment.from_config(cfg.data.augment)
    assert (train.augment.crop, train.augment.padding, train.augment.hflip) == (12, 2, True)
    assert vars(train.augment) == vars(want_train)
    assert test is not None and test.augment.center_crop == 12 and not test.augment.hflip
    for ds in (train, test):
        assert (ds.preload, ds.seed, ds.decode) == (True, 7, "cpu")
