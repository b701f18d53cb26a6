"""`crossmodal probe`: linear (cached features), finetune, dense, transfer, random-init rows, CLI and report."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import app
from crossmodal.data.dataset import PreparedDataset
from crossmodal.engine import load_model
from crossmodal.modalities import MODALITIES
from crossmodal.probe.dense import confusion_matrix, kfold_by_index, segmentation_scores
from crossmodal.probe.features import InputAdapter
from crossmodal.probe.linear import evaluate_linear_probe, fit_linear_probe
from crossmodal.sections import DataConfig, EngineConfig, ModelConfig, OptimConfig
from crossmodal.tasks.probe import ProbeOptimConfig, load_probe_config, resolve_input_size, run_probe, with_class_head
from crossmodal.tasks.teach import TeachConfig, run_teach

torch.set_num_threads(1)


def teach(tmp_path, data, name="teacher", modality="rgb", epochs=1):
    """A resnet8 trained `epochs` epochs on `modality` of `data`; returns its best.pt."""
    cfg = TeachConfig(name=name, out_dir=str(tmp_path / "runs"), data=DataConfig(path=str(data)),
                      model=ModelConfig(arch="resnet8", modality=modality),
                      optim=OptimConfig(lr=0.05, batch_size=8, epochs=epochs, schedule="constant"),
                      engine=EngineConfig(device="cpu", progress=False, log_every=1000))
    run_teach(cfg)
    return tmp_path / "runs" / name / "best.pt"


def colour_coded(path, num_classes=4):
    """Overwrite a prepared rgb file so class c is a flat colour (plus noise): a task features solve."""
    palette = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30]], np.float32)
    rng = np.random.default_rng(0)
    with h5py.File(path, "r+") as f:
        pixels = []
        for split in ("train", "test"):
            labels = f[split]["label"][:]
            n, _, h, w = f[split]["rgb"].shape
            images = palette[labels % num_classes][:, :, None, None] + rng.normal(0, 25, (n, 3, h, w))
            f[split]["rgb"][...] = np.clip(images, 0, 255).astype(np.uint8)
            if split == "train":
                pixels = f[split]["rgb"][:].transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
        stats = json.loads(f.attrs["stats"])
        stats["rgb"] = {"mean": pixels.mean(1).tolist(), "std": pixels.std(1).tolist()}
        f.attrs["stats"] = json.dumps(stats)
    return path


def probe_cfg(tmp_path, checkpoint, data, method="linear", **keys):
    overrides = [("checkpoint", str(checkpoint)), ("data.path", str(data)), ("out_dir", str(tmp_path / "probe")),
                 ("engine.device", "cpu"), ("engine.progress", False), ("optim.epochs", 30)]
    overrides += [(key.replace("__", "."), value) for key, value in keys.items()]  # optim__epochs -> optim.epochs
    return load_probe_config(None, overrides, method=method)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from conftest import make_prepared

    return make_prepared(tmp_path_factory.mktemp("data"), splits={"train": 32, "test": 16}, size=16,
                         with_segmentation=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, prepared):
    return teach(tmp_path_factory.mktemp("teacher"), prepared)


# ----------------------------------------------------------------------------- linear


def test_linear_classifier_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    centres = 4.0 * torch.randn(5, 20, generator=g)
    labels = torch.arange(200) % 5
    features = 1000.0 + 50.0 * (centres[labels] + torch.randn(200, 20, generator=g))  # far from 0, large scale
    optim = ProbeOptimConfig(epochs=50, batch_size=64, lr=0.01)
    probe, history = fit_linear_probe(features[:150], labels[:150], 5, optim, seed=0)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    scores = evaluate_linear_probe(probe, features[150:], labels[150:])
    assert scores["top1"] == 100.0 and scores["top5"] == 100.0


def test_linear_probe_on_informative_features_reaches_high_accuracy(tmp_path, make_prepared):
    data = colour_coded(make_prepared(splits={"train": 40, "test": 20}, modalities=("rgb",)))
    ckpt = teach(tmp_path, data)
    results = run_probe(probe_cfg(tmp_path, ckpt, data))
    (row,) = results["rows"]
    assert row["top1"] >= 90.0, results
    assert row["stage"] == "embedding" and row["feature_dim"] == 64 and row["arch"] == "resnet8"
    on_disk = json.loads((tmp_path / "probe" / "teacher_linear" / "results.json").read_text())
    assert on_disk["rows"][0]["top1"] == pytest.approx(row["top1"])


def test_feature_cache_is_reused_and_keyed_by_stage(tmp_path, prepared, checkpoint):
    cfg = probe_cfg(tmp_path, checkpoint, prepared, stage=2)
    first = run_probe(cfg)
    cache = tmp_path / "probe" / "feature_cache"
    files = sorted(cache.glob("*.pt"))
    assert first["cache_hits"] == [False, False] and len(files) == 2
    second = run_probe(cfg)
    assert second["cache_hits"] == [True, True] and sorted(cache.glob("*.pt")) == files
    assert second["rows"][0]["top1"] == first["rows"][0]["top1"]  # same features, same seeded head
    # Pooled stage-2 maps of resnet8 have 32 channels; the embedding (another key) has 64.
    assert first["rows"][0]["feature_dim"] == 32
    third = run_probe(probe_cfg(tmp_path, checkpoint, prepared))
    assert third["cache_hits"] == [False, False] and len(list(cache.glob("*.pt"))) == 4
    assert third["rows"][0]["feature_dim"] == 64
    assert not list(cache.glob(".*.tmp"))


def test_random_init_row_probes_the_same_architecture(tmp_path, prepared, checkpoint):
    results = run_probe(probe_cfg(tmp_path, checkpoint, prepared, random_init=True, optim__epochs=5))
    trained, random_init = results["rows"]
    assert trained["checkpoint"] == str(checkpoint) and random_init["checkpoint"] == "random-init"
    assert random_init["arch"] == trained["arch"] == "resnet8"
    assert random_init["feature_dim"] == trained["feature_dim"]
    for r in results["rows"]:  # 4 classes: top-5 covers them all; top-1 counts whole test samples (16)
        assert r["top5"] == 100.0 and r["top1"] * 16 / 100 == pytest.approx(round(r["top1"] * 16 / 100))


# ----------------------------------------------------------------------------- finetune, transfer


def test_with_class_head_keeps_the_body_and_replaces_the_head(checkpoint):
    model, meta = load_model(checkpoint)
    same = with_class_head(model, "resnet8", 3, meta["class_names"], list(meta["class_names"]))
    assert same is model
    six = with_class_head(model, "resnet8", 3, meta["class_names"], [f"n{i}" for i in range(6)])
    assert six.classifier.out_features == 6
    for key, value in model.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(six.state_dict()[key], value), key


def test_finetune_on_other_classes_writes_a_loadable_checkpoint(tmp_path, make_prepared, checkpoint):
    data6 = make_prepared(splits={"train": 24, "test": 12}, modalities=("rgb",), num_classes=6)
    cfg = probe_cfg(tmp_path, checkpoint, data6, method="finetune", optim__epochs=1, optim__batch_size=8)
    results = run_probe(cfg)
    (row,) = results["rows"]
    model, meta = load_model(row["finetuned_checkpoint"])
    assert meta["num_classes"] == 6 and meta["class_names"] == [f"class{c}" for c in range(6)]
    assert meta["data_path"] == str(data6)
    assert model(torch.zeros(2, 3, 16, 16))["logits"].shape == (2, 6)
    assert row["epochs"] == 1
    # The reported top-1 is the saved network's accuracy on the test split, recomputed here.
    test = PreparedDataset(data6, "test", ["rgb"])
    x = torch.stack([test[i]["rgb"] for i in range(len(test))])
    with torch.no_grad():
        predicted = model.eval()(x)["logits"].argmax(1)
    assert row["top1"] == pytest.approx(100.0 * (predicted == torch.as_tensor(test.labels)).float().mean().item())
    assert (tmp_path / "probe" / "teacher_finetune" / "metrics.csv").exists()


def test_transfer_to_another_file_and_image_size(tmp_path, make_prepared, prepared, checkpoint):
    other = make_prepared(splits={"train": 30, "test": 12}, modalities=("rgb", "L"), size=24, num_classes=3)
    assert resolve_input_size("checkpoint", checkpoint) == 16  # no crop recorded: the training file's size
    results = run_probe(probe_cfg(tmp_path, checkpoint, other, input_size="checkpoint", stats="checkpoint"))
    notes = "\n".join(results["notes"])
    assert "transfer" in notes and "shorter side is 16" in notes and "checkpoint's channel stats" in notes
    assert results["rows"][0]["top5"] == 100.0  # 3 classes: top-5 covers them all
    native = run_probe(probe_cfg(tmp_path, checkpoint, other, name="native"))
    assert "shorter side" not in "\n".join(native["notes"])


def test_input_adapter_resizes_shorter_side_and_renormalises():
    data, model = {"mean": [0.5], "std": [0.25]}, {"mean": [0.25], "std": [0.5]}
    adapter = InputAdapter("L", size=8, data_stats=data, model_stats=model)
    x = torch.full((2, 1, 24, 32), 2.0)  # raw 2 * 0.25 + 0.5 = 1.0 -> (1.0 - 0.25) / 0.5 = 1.5 for the model
    out = adapter(x)
    assert out.shape == (2, 1, 8, 11) and torch.allclose(out, torch.full_like(out, 1.5))
    depth = InputAdapter("depth", size=2)
    holes = torch.tensor([[[[0.0, 0.0, 5.0, 5.0]] * 4]])  # (1, 1, 4, 4)
    assert set(depth(holes).unique().tolist()) <= {0.0, 5.0}  # nearest: no blended "half-hole" depths


# ----------------------------------------------------------------------------- dense


def test_dense_scores_match_a_hand_computed_example():
    target = torch.tensor([[[0, 1, 1],
                            [2, 2, 0],
                            [3, 1, 2]]])  # raw labels, 0 = unlabeled
    pred = torch.tensor([[[2, 0, 1],
                          [1, 1, 0],
                          [1, 0, 2]]])  # classes 0..2 = raw 1..3; predictions on raw-0 pixels never count
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[2, 1, 0],   # raw 1: (0,1) and (2,1) right, (0,2) called raw 2
                           [0, 2, 1],   # raw 2: (1,0) and (1,1) right, (2,2) called raw 3
                           [0, 1, 0]]   # raw 3: (2,0) called raw 2
    scores = segmentation_scores(cm, ["a", "b", "c"])
    assert scores["labelled_pixels"] == 7
    assert scores["pixel_acc"] == pytest.approx(100.0 * 4 / 7)
    # IoU = TP / (row + column - TP): a = 2 / (3 + 2 - 2), b = 2 / (3 + 4 - 2), c = 0 / (1 + 1 - 0)
    assert scores["class_iou"] == pytest.approx({"a": 200 / 3, "b": 40.0, "c": 0.0})
    assert scores["miou"] == pytest.approx((200 / 3 + 40.0 + 0.0) / 3)
    # A class absent from the ground truth is left out of the mean, not counted as 0.
    absent = segmentation_scores(confusion_matrix(torch.tensor([0, 2]), torch.tensor([1, 1]), 3), ["a", "b", "c"])
    assert absent["class_iou"]["b"] is None and absent["miou"] == pytest.approx(50.0)


def test_kfold_by_index_tests_every_frame_once():
    folds = kfold_by_index(7, 2)
    tested = torch.cat([test for _, test in folds]).sort().values
    assert tested.tolist() == list(range(7))
    assert folds[0][1].tolist() == [0, 2, 4, 6] and folds[0][0].tolist() == [1, 3, 5]


def assert_dense_scores_consistent(row):
    """mIoU is the mean of the present classes' IoUs; pixel accuracy counts whole labelled pixels."""
    present = [v for v in row["class_iou"].values() if v is not None]
    assert row["miou"] == pytest.approx(sum(present) / len(present))
    correct = row["pixel_acc"] * row["labelled_pixels"] / 100
    assert correct == pytest.approx(round(correct), abs=1e-6)


def test_dense_probe_k_folds_one_split_and_says_it_is_tiny(tmp_path, prepared, checkpoint):
    results = run_probe(probe_cfg(tmp_path, checkpoint, prepared, method="dense", data__train_split="test",
                                  optim__epochs=5, random_init=True, report=str(tmp_path / "report")))
    assert len(results["rows"]) == 2
    with h5py.File(prepared) as f:
        labelled = int((f["test"]["segmentation"][:] > 0).sum())
    for row in results["rows"]:
        assert_dense_scores_consistent(row)
        assert row["labelled_pixels"] == labelled  # the folds test every labelled pixel exactly once
        assert set(row["class_iou"]) == {"class1", "class2", "class3"}
    notes = "\n".join(results["notes"])
    assert "2-fold by frame index" in notes and "TINY" in notes
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| pixel acc | mIoU |" in report and "TINY" in report and "(class_iou.png)" in report
    assert (tmp_path / "report" / "class_iou.png").exists()


def test_dense_probe_with_finetuned_backbone_scores_every_labelled_pixel(tmp_path, prepared, checkpoint):
    results = run_probe(probe_cfg(tmp_path, checkpoint, prepared, method="dense", data__train_split="test",
                                  optim__epochs=2, optim__batch_size=4, dense__finetune=True, dense__hidden=8))
    (row,) = results["rows"]
    assert row["stage"] == "1+2+3 (finetuned)"
    assert_dense_scores_consistent(row)
    with h5py.File(prepared) as f:
        assert row["labelled_pixels"] == int((f["test"]["segmentation"][:] > 0).sum())


# ----------------------------------------------------------------------------- CLI


def invoke(*args):
    return CliRunner().invoke(app, ["probe", *map(str, args)])


def test_cli_linear_prints_the_table_and_writes_the_report(tmp_path, prepared, checkpoint):
    report = tmp_path / "rep"
    result = invoke("linear", "--checkpoint", checkpoint, "--data", prepared, "--out-dir", tmp_path / "p",
                    "--device", "cpu", "--epochs", 5, "--random-init", "--stage", "-1", "--report", report,
                    "--name", "cli")
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if line.startswith("method"))
    assert header.split() == ["method", "checkpoint", "arch", "modality", "stage", "top-1", "top-5"]
    assert "random-init" in result.output
    saved = json.loads((tmp_path / "p" / "cli" / "results.json").read_text())
    assert [r["stage"] for r in saved["rows"]] == ["3", "3"]  # -1 -> the last of resnet8's 4 maps
    text = (report / "report.md").read_text()
    assert "| method | checkpoint | arch | modality | stage | top-1 | top-5 |" in text
    assert f"{saved['rows'][0]['top1']:.2f}" in text and (report / "linear_probe_loss.png").exists()


def test_cli_config_file_and_method_mismatch(tmp_path, prepared, checkpoint):
    config = tmp_path / "p.yaml"
    config.write_text(f"method: dense\ncheckpoint: {checkpoint}\ndata: {{path: {prepared}}}\n")
    result = invoke("linear", config)
    assert result.exit_code == 2 and "crossmodal probe dense" in result.output


@pytest.mark.parametrize("case", ["missing checkpoint", "dense without segmentation", "modality channels",
                                  "modality absent", "bad stage"])
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, make_prepared, prepared, checkpoint, case):
    plain = make_prepared(splits={"train": 8, "test": 8}, modalities=("rgb", "L"))
    gray = make_prepared(splits={"train": 8, "test": 8}, modalities=("L",))
    common = ["--out-dir", tmp_path / "p", "--device", "cpu", "--epochs", 1]
    args, expected = {
        "missing checkpoint": (["linear", "--checkpoint", tmp_path / "nope.pt", "--data", prepared],
                               "nope.pt: no such checkpoint file"),
        "dense without segmentation": (["dense", "--checkpoint", checkpoint, "--data", plain],
                                       "has no segmentation"),
        "modality channels": (["linear", "--checkpoint", checkpoint, "--data", plain, "--modality", "L"],
                              "modality 'L' has 1 channels"),
        "modality absent": (["linear", "--checkpoint", checkpoint, "--data", gray], "has no modality 'rgb'"),
        "bad stage": (["linear", "--checkpoint", checkpoint, "--data", prepared, "--stage", 9],
                      "stage 9: the network has 4 stage maps"),
    }[case]
    result = invoke(*args, *common)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert expected in result.output


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs" / "probe").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_probe_configs_validate(path):
    from crossmodal.config import load_config
    from crossmodal.tasks.probe import ProbeConfig

    cfg = load_config(path, ProbeConfig)
    assert cfg.checkpoint.endswith(".pt") and cfg.data.path.endswith(".h5")
    assert cfg.modality in MODALITIES
    if cfg.method == "dense" and cfg.data.train_split == cfg.data.test_split:
        assert cfg.dense.folds >= 2
