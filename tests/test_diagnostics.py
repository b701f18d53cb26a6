"""Teacher-student diagnostics: linear CKA, logit-correlation difference (CRD Fig. 2), `probe compare`."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import app
from crossmodal.errors import ConfigError
from crossmodal.sections import DataConfig, EngineConfig, ModelConfig, OptimConfig
from crossmodal.tasks.teach import TeachConfig
from crossmodal.probe.diagnostics import (correlation_difference, linear_cka, logit_correlation,
                                          plot_correlation_difference)
from crossmodal.tasks.teach import run_teach

torch.set_num_threads(1)


def test_cka_of_a_representation_with_itself_is_one():
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transform_and_isotropic_scaling():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 12, generator=g)
    y = x @ torch.randn(12, 8, generator=g) + 0.5 * torch.randn(300, 8, generator=g)  # related, not equal
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    base = linear_cka(x, y)
    assert 0.2 < base < 0.99
    assert linear_cka(x, y.double() @ q) == pytest.approx(base, abs=1e-9)
    assert linear_cka(7.5 * x, 0.01 * y) == pytest.approx(base, abs=1e-9)
    assert linear_cka(x + 3.0, y - 2.0) == pytest.approx(base, abs=1e-9)  # centring removes offsets
    # ... but not to anisotropic scaling, which changes which directions dominate.
    assert abs(linear_cka(x * torch.linspace(0.1, 10, 12), y) - base) > 1e-3


def test_cka_of_independent_random_features_is_small():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(4000, 10, generator=g), torch.randn(4000, 10, generator=g)
    assert linear_cka(x, y) < 0.02


def test_logit_correlation_matches_numpy_corrcoef():
    logits = torch.randn(50, 5, generator=torch.Generator().manual_seed(3))
    expected = np.corrcoef(logits.numpy(), rowvar=False)
    assert np.allclose(logit_correlation(logits).numpy(), expected, atol=1e-10)


def test_correlation_difference_is_zero_for_per_class_affine_logits_and_positive_otherwise():
    g = torch.Generator().manual_seed(4)
    teacher = torch.randn(100, 6, generator=g)
    student = teacher * torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5, 4.0]) + torch.arange(6.0)  # same correlations
    assert correlation_difference(teacher, student).abs().max() < 1e-6  # float32 rounding of the affine map
    # Student whose classes 0 and 1 become copies of each other: their correlation goes to 1.
    student = teacher.clone()
    student[:, 1] = student[:, 0]
    diff = correlation_difference(teacher, student)
    expected = abs(np.corrcoef(teacher[:, 0], teacher[:, 1])[0, 1] - 1.0)
    assert diff[0, 1].item() == pytest.approx(expected, abs=1e-9)
    assert diff.shape == (6, 6) and torch.allclose(diff, diff.T)


def test_heatmap_png_is_written(tmp_path):
    diff = correlation_difference(torch.randn(40, 4), torch.randn(40, 4))
    path = plot_correlation_difference(diff.float(), tmp_path / "sub" / "diff.png", [f"c{i}" for i in range(4)])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temporary file


def _teacher(tmp_path, data, name, modality="rgb", seed=0):
    cfg = TeachConfig(name=name, seed=seed, out_dir=str(tmp_path / "runs"), data=DataConfig(path=str(data)),
                      model=ModelConfig(arch="resnet8", modality=modality),
                      optim=OptimConfig(lr=0.05, batch_size=8, epochs=1, schedule="constant"),
                      engine=EngineConfig(device="cpu", progress=False, log_every=1000))
    run_teach(cfg)
    return tmp_path / "runs" / name / "best.pt"


def gram_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA from centred Gram matrices: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float(np.sum(k * l_) / np.sqrt(np.sum(k * k) * np.sum(l_ * l_)))


def independent_comparison(teacher, student, data) -> dict:
    """Mean |corr_t - corr_s| of the test logits and CKA of embeddings and logits, with numpy."""
    from crossmodal.data.dataset import PreparedDataset
    from crossmodal.engine import load_model

    outputs = []
    for checkpoint in (teacher, student):
        model, meta = load_model(checkpoint)
        dataset = PreparedDataset(data, "test", [meta["modality"]])  # the file the network trained on: same stats
        x = torch.stack([dataset[i][meta["modality"]] for i in range(len(dataset))])
        with torch.no_grad():
            out = model.eval()(x)
        outputs.append({k: out[k].double().numpy() for k in ("logits", "embedding")})
    t, s = outputs
    corr = np.abs(np.corrcoef(t["logits"], rowvar=False) - np.corrcoef(s["logits"], rowvar=False)).mean()
    return {"corr": corr, "cka_embedding": gram_cka(t["embedding"], s["embedding"]),
            "cka_logits": gram_cka(t["logits"], s["logits"])}


def test_cli_compare_writes_json_heatmap_and_report(tmp_path, make_prepared):
    data = make_prepared(splits={"train": 32, "test": 24}, modalities=("rgb", "L"))
    teacher = _teacher(tmp_path, data, "t_rgb")
    student = _teacher(tmp_path, data, "s_L", modality="L", seed=1)
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["probe", "compare", "--teacher", str(teacher), "--student", str(student),
                                      "--data", str(data), "--out-dir", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "compare.json").read_text())
    assert summary["samples"] == 24 and summary["student_modality"] == "L"
    # The same numbers from the two networks' outputs, computed here with numpy (corrcoef, Gram-matrix CKA).
    expected = independent_comparison(teacher, student, data)
    assert summary["mean_abs_correlation_difference"] == pytest.approx(expected["corr"], abs=1e-5)
    assert summary["cka_embedding"] == pytest.approx(expected["cka_embedding"], abs=1e-5)
    assert summary["cka_logits"] == pytest.approx(expected["cka_logits"], abs=1e-5)
    assert 0.01 < expected["corr"] and expected["cka_embedding"] < 0.99  # two different networks
    assert (out / "correlation_difference.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "correlation_difference.png" in report and f"{summary['cka_embedding']:.4f}" in report
    # A network compared with itself: no correlation difference, CKA 1.
    result = CliRunner().invoke(app, ["probe", "compare", "--teacher", str(teacher), "--student", str(teacher),
                                      "--data", str(data), "--out-dir", str(tmp_path / "self"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    same = json.loads((tmp_path / "self" / "compare.json").read_text())
    assert same["mean_abs_correlation_difference"] < 1e-6 and same["cka_embedding"] == pytest.approx(1.0, abs=1e-6)


def test_cli_compare_refuses_different_class_counts(tmp_path, make_prepared):
    data4 = make_prepared(splits={"train": 32, "test": 8}, modalities=("rgb",), num_classes=4)
    data6 = make_prepared(splits={"train": 36, "test": 8}, modalities=("rgb",), num_classes=6)
    a, b = _teacher(tmp_path, data4, "a"), _teacher(tmp_path, data6, "b")
    result = CliRunner().invoke(app, ["probe", "compare", "--teacher", str(a), "--student", str(b),
                                      "--data", str(data4), "--out-dir", str(tmp_path / "x"), "--device", "cpu"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "4 classes" in result.output and "6" in result.output


def _drawn_heatmap(monkeypatch, diff, *args, **kwargs):
    """The Figure plot_correlation_difference hands to save_figure (nothing written)."""
    import crossmodal.probe.report as report

    drawn = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path: drawn.append(fig) or path)
    plot_correlation_difference(diff, "unused.png", *args, **kwargs)
    return drawn[-1]


def test_heatmap_size_colours_labels_and_title_by_hand(monkeypatch):
    diff = torch.tensor([[0.0, 0.25, 0.5, 0.125], [0.25, 0.0, 0.75, 0.0], [0.5, 0.75, 0.0, 1.0],
                         [0.125, 0.0, 1.0, 0.0]])
    names = ["cat", "dog", "car", "ship"]
    fig = _drawn_heatmap(monkeypatch, diff, names)
    side = 3.0 + 0.35 * 4  # 4.4 inches for 4 classes, plus 1.2 for the colour bar
    assert tuple(fig.get_size_inches()) == pytest.approx((side + 1.2, side))
    ax, bar = fig.axes
    image = ax.images[0]
    assert image.get_cmap().name == "viridis" and image.norm.vmin == 0.0 and image.norm.vmax == 1.0
    assert image.get_interpolation() == "nearest"
    assert np.array_equal(image.get_array(), diff.numpy())
    assert bar.get_ylabel() == "|corr_teacher - corr_student|"
    assert ax.get_title() == "logit correlation difference, mean 0.3281"  # 5.25 / 16
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert {t.get_rotation() for t in ax.get_xticklabels()} == {90.0}
    assert {t.get_fontsize() for t in ax.get_xticklabels() + ax.get_yticklabels()} == {7.0}
    assert ax.title.get_fontsize() == 9.0
    assert _drawn_heatmap(monkeypatch, diff, names, title="given").axes[0].get_title() == "given"
    # The colour scale starts at 0 even where no entry is 0, and the colour bar shows the image's scale.
    ax, bar = _drawn_heatmap(monkeypatch, diff + 0.5).axes
    assert ax.images[0].norm.vmin == 0.0 and tuple(bar.get_ylim()) == (0.0, 1.5)


def test_heatmap_names_classes_up_to_30_and_caps_its_side_at_10_inches(monkeypatch):
    names = [f"c{i}" for i in range(31)]
    fig = _drawn_heatmap(monkeypatch, torch.zeros(30, 30), names[:30])
    assert tuple(fig.get_size_inches()) == pytest.approx((11.2, 10.0))  # 3 + 0.35 * 30 = 13.5, capped
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == names[:30]
    fig = _drawn_heatmap(monkeypatch, torch.zeros(31, 31), names)
    assert "c0" not in [t.get_text() for t in fig.axes[0].get_xticklabels()]  # 31 classes: numbers, no names
    fig = _drawn_heatmap(monkeypatch, torch.zeros(20, 20))
    assert tuple(fig.get_size_inches()) == pytest.approx((11.2, 10.0))  # 3 + 0.35 * 20 = 10
    fig = _drawn_heatmap(monkeypatch, torch.zeros(19, 19))
    assert tuple(fig.get_size_inches()) == pytest.approx((3.0 + 0.35 * 19 + 1.2, 3.0 + 0.35 * 19))


def test_a_constant_class_correlates_0_with_every_class_itself_included():
    logits = torch.tensor([[1.0, 5.0, 2.0], [2.0, 5.0, 0.0], [4.0, 5.0, 1.0]])  # class 1 constant
    corr = logit_correlation(logits)
    assert corr[1].tolist() == [0.0, 0.0, 0.0] and corr[:, 1].tolist() == [0.0, 0.0, 0.0]
    # classes 0 and 2 centred: (-4/3, -1/3, 5/3) and (1, -1, 0); r = (-4/3 + 1/3) / (sqrt(42/9) * sqrt(2))
    assert corr[0, 2].item() == pytest.approx(-1.0 / math.sqrt(42 / 9 * 2), abs=1e-12)
    assert corr[0, 0].item() == pytest.approx(1.0) and corr[2, 2].item() == pytest.approx(1.0)


def test_correlation_difference_refuses_different_shapes_with_the_whole_message():
    with pytest.raises(ConfigError) as error:
        correlation_difference(torch.randn(5, 3), torch.randn(5, 4))
    assert str(error.value) == ("teacher logits (5, 3) and student logits (5, 4) differ; compare networks of the "
                                "same classes on the same data")
