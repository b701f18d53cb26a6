"""`crossmodal teach`: the CLI, its flags, ClassifierTask, load_model, and resume after SIGKILL."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner

from cli.main import app
from crossmodal.engine import ModelMeta, load_checkpoint, load_model
from crossmodal.engine.logging import read_metrics
from crossmodal.tasks.teach import ClassifierTask

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def write_config(tmp_path: Path, data: Path, **optim) -> Path:
    """A CPU teach config for resnet8 on a make_prepared file."""
    cfg = {
        "data": {"path": str(data), "augment": {"crop": 16, "padding": 2, "hflip": True}},
        "model": {"arch": "resnet8", "modality": "rgb"},
        "optim": {"lr": 0.05, "batch_size": 8, "epochs": 2, "milestones": [1], **optim},
        "engine": {"device": "cpu", "progress": False},
        "out_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / "teach.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_help_documents_every_option():
    result = CliRunner().invoke(app, ["teach", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())  # undo click's line wrapping
    for flag, key in [("--set", "KEY=VALUE"), ("--resume", "last.pt"), ("--name", "key: name"),
                      ("--out-dir", "key: out_dir"), ("--device", "key: engine.device"),
                      ("--epochs", "key: optim.epochs"),
                      ("--batch-size", "key: optim.batch_size"), ("--lr", "key: optim.lr"),
                      ("--workers", "key: data.workers"), ("--seed", "key: seed")]:
        assert flag in text and key in text, flag


def test_distill_help_lists_the_registered_losses_exactly():
    """The list in `distill --help` is read from the registry: a new distiller appears without editing the help."""
    from crossmodal.losses import list_distillers
    from crossmodal.losses.base import DISTILLERS

    def listed() -> list[str]:
        result = CliRunner().invoke(app, ["distill", "--help"])
        assert result.exit_code == 0
        return " ".join(result.output.split()).split("Losses: ", 1)[1].split(".", 1)[0].split()

    assert listed() == list_distillers() and "crd" in listed()
    DISTILLERS["zz_test_loss"] = DISTILLERS["kd"]
    try:
        assert listed()[-1] == "zz_test_loss"
    finally:
        del DISTILLERS["zz_test_loss"]


def test_config_errors_exit_2_with_one_line(tmp_path, make_prepared):
    config = write_config(tmp_path, make_prepared())
    result = CliRunner().invoke(app, ["teach", str(config), "--set", "optim.momentun=0.8"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --set optim.momentun: unknown key 'optim.momentun'; did you mean 'optim.momentum'?"]
    result = CliRunner().invoke(app, ["teach", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and "no such config file" in result.stderr


def test_teach_trains_on_labeled_samples_with_flags_mapped_to_keys(tmp_path, make_prepared):
    data = make_prepared(splits={"train": 40, "test": 20}, unlabeled=8)  # 32 labeled training rows
    config = write_config(tmp_path, data)
    out = tmp_path / "elsewhere"
    result = CliRunner().invoke(app, ["teach", str(config), "--name", "flags", "--out-dir", str(out), "--epochs", "3",
                                      "--batch-size", "16", "--lr", "0.02", "--seed", "5", "--workers", "0",
                                      "--device", "cpu", "--set", "optim.schedule=constant"])
    assert result.exit_code == 0, result.output
    run = out / "flags"
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert (resolved["name"], resolved["seed"]) == ("flags", 5)
    assert (resolved["data"]["workers"], resolved["engine"]["device"]) == (0, "cpu")
    assert (resolved["optim"]["epochs"], resolved["optim"]["batch_size"], resolved["optim"]["lr"],
            resolved["optim"]["schedule"]) == (3, 16, 0.02, "constant")
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["scheduler"]["last_epoch"] == 3 * (32 // 16)  # unlabeled rows are not trained on
    assert [r["lr"] for r in read_metrics(run / "metrics.csv")] == [0.02] * 3
    summary = json.loads((run / "summary.json").read_text())
    assert "flags: best test top-1" in result.output and summary["epochs"] == 3


def test_classifier_task_smooths_labels_and_ignores_unlabeled_samples():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    task = ClassifierTask(_LogitsModule(model), ModelMeta("linear", "rgb", 3, 3), label_smoothing=0.1)
    x, labels = torch.randn(4, 6), torch.tensor([0, -1, 2, 1])
    loss, terms, logits = task({"rgb": x, "label": labels})
    keep = labels >= 0
    log_p = F.log_softmax(model(x)[keep], dim=1)
    target = torch.full_like(log_p, 0.1 / 3).scatter_(1, labels[keep, None], 0.9 + 0.1 / 3)
    assert loss.item() == pytest.approx(-(target * log_p).sum(1).mean().item(), rel=1e-6)
    assert terms == {"ce": pytest.approx(loss.item())} and logits.shape == (4, 3)


class _LogitsModule(torch.nn.Module):
    def __init__(self, linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        return {"logits": self.linear(x)}


def test_load_model_rebuilds_the_teacher_with_its_metadata(tmp_path, make_prepared):
    data = make_prepared(modalities=("L", "ab"))
    config = write_config(tmp_path, data, epochs=1)
    result = CliRunner().invoke(app, ["teach", str(config), "--set", "model.modality=L", "--name", "lum"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "runs" / "lum" / "best.pt"
    model, meta = load_model(path)
    assert not model.training
    assert (meta["arch"], meta["modality"], meta["in_chans"], meta["num_classes"]) == ("resnet8", "L", 1, 4)
    assert meta["class_names"] == ["class0", "class1", "class2", "class3"] and meta["data_path"] == str(data)
    assert set(meta["stats"]) == {"L"} and len(meta["stats"]["L"]["mean"]) == 1
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    state = load_checkpoint(path)["model"]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert model(torch.zeros(2, 1, 16, 16))["logits"].shape == (2, 4)


def test_teach_refuses_a_split_without_labels(tmp_path, make_prepared):
    data = make_prepared(splits={"train": 20, "unlabeled": 20, "test": 8})
    config = write_config(tmp_path, data)
    result = CliRunner().invoke(app, ["teach", str(config), "--set", "data.train_split=unlabeled"])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {data}: split 'unlabeled'") and "label" in result.stderr


def test_sigkilled_run_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, make_prepared):
    """Kill a real `crossmodal teach` process after its first checkpoint, resume it, compare to a straight run."""
    data = make_prepared(splits={"train": 40, "test": 12})
    config = write_config(tmp_path, data, epochs=6, batch_size=4, milestones=[4], warmup_epochs=1)
    straight = CliRunner().invoke(app, ["teach", str(config), "--name", "straight"])
    assert straight.exit_code == 0, straight.output

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "cli", "teach", str(config), "--name", "killed"]
    run = tmp_path / "runs" / "killed"
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (run / "last.pt").exists():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(run / "last.pt")["epoch"]
    assert 1 <= killed_at < 6 and not (run / "summary.json").exists()

    resumed = subprocess.run(command + ["--resume"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming after epoch {killed_at}" in resumed.stderr
    a = load_checkpoint(tmp_path / "runs" / "straight" / "last.pt")
    b = load_checkpoint(run / "last.pt")
    assert b["epoch"] == 6
    assert max((a["model"][k].double() - b["model"][k].double()).abs().max().item() for k in a["model"]) <= 1e-6
    assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
@pytest.mark.shared_data
def test_teach_learns_real_cifar10_images(tmp_path, shared_data):
    """resnet8 on the 500 real CIFAR-10 images of cifar10-mini beats chance (10%) by far within 8 epochs."""
    data = tmp_path / "cifar10-mini.h5"
    prepared = CliRunner().invoke(app, ["prepare", "imagefolder", str(shared_data / "cifar10-mini.tar.gz"),
                                        "-m", "rgb", "--out", str(data)])
    assert prepared.exit_code == 0, prepared.output
    config = tmp_path / "mini.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"path": str(data), "augment": {"crop": 32, "padding": 4, "hflip": True}, "preload": True},
        "model": {"arch": "resnet8"}, "out_dir": str(tmp_path / "runs"),
        "optim": {"lr": 0.05, "batch_size": 32, "epochs": 8, "schedule": "cosine", "warmup_epochs": 1},
        "engine": {"device": "cpu", "progress": False}}))
    result = CliRunner().invoke(app, ["teach", str(config)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "runs" / "mini" / "summary.json").read_text())
    assert summary["best_test_top1"] >= 25.0
