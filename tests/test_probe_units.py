"""Fast unit tests of the probe modules (dense, features, report, fit_linear_probe) against values by hand.

Each expected value is computed here independently: by hand, or by a small reference written for the
test (bilinear resizing, a per-pixel linear head, plain gradient descent with the loss written out), never
by calling the function under test.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import struct

import numpy as np
import pytest
import torch
import torch.nn as nn

from crossmodal.errors import ConfigError, DataError
from crossmodal.probe import dense, features, linear, report
from crossmodal.probe.dense import (DenseHead, confusion_matrix, fit_dense_head, kfold_by_index, predict_dense,
                                    segmentation_class_names, segmentation_scores, stage_maps)
from crossmodal.probe.features import (CACHE_VERSION, InputAdapter, cache_key, cache_path, cached, extract_features,
                                       file_stamp, resolve_stage, stage_features)
from crossmodal.probe.linear import fit_linear_probe
from crossmodal.sections import OptimConfig

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- references


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D linear resizing with half-pixel centres (align_corners=False), no antialias."""
    w = np.zeros((n_out, n_in))
    for o in range(n_out):
        src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0
        w[o, i0] += 1 - frac
        w[o, i1] += frac
    return w


def resize(x: np.ndarray, size) -> np.ndarray:
    """Bilinear resize of (..., h, w) to size (H, W)."""
    rows, cols = bilinear_matrix(x.shape[-2], size[0]), bilinear_matrix(x.shape[-1], size[1])
    return np.einsum("Hh,...hw,Ww->...HW", rows, x, cols)


def reference_head(maps, size, mean, var, gamma, beta, weight, bias, out_size, eps=1e-5):
    """Per-pixel linear head by hand: resize to `size`, stack channels, normalise, W x + b, resize to out_size."""
    stacked = np.concatenate([resize(np.asarray(m, dtype=np.float64), size) for m in maps], axis=1)  # (B, C, h, w)
    norm = (stacked - mean[:, None, None]) / np.sqrt(var[:, None, None] + eps) * gamma[:, None, None] \
        + beta[:, None, None]
    logits = np.einsum("kc,bchw->bkhw", weight, norm) + bias[:, None, None]
    return resize(logits, out_size)


def set_head(head: DenseHead, mean, var, gamma, beta, weight, bias):
    with torch.no_grad():
        head.norm.running_mean.copy_(torch.tensor(mean))
        head.norm.running_var.copy_(torch.tensor(var))
        head.norm.weight.copy_(torch.tensor(gamma))
        head.norm.bias.copy_(torch.tensor(beta))
        head.classify.weight.copy_(torch.tensor(weight)[:, :, None, None])
        head.classify.bias.copy_(torch.tensor(bias))


# ----------------------------------------------------------------------------- dense


def test_segmentation_class_names_name_values_1_to_c_and_number_the_unnamed():
    names = ["unlabeled", "wall", "floor"]
    assert segmentation_class_names(names, 2) == ["wall", "floor"]
    assert segmentation_class_names(names, 1) == ["wall", "floor"]  # C is at least len - 1
    assert segmentation_class_names(names, 0) == ["wall", "floor"]
    assert segmentation_class_names(names, 3) == ["wall", "floor", "class 3"]  # value 3 == len: unnamed
    assert segmentation_class_names(names, np.int64(5)) == ["wall", "floor", "class 3", "class 4", "class 5"]
    assert segmentation_class_names(["unlabeled"], 2) == ["class 1", "class 2"]


def test_dense_head_layers_for_hidden_0_and_hidden_above_0():
    head = DenseHead([2, 3], 4)  # hidden defaults to 0: one 1x1 conv
    assert head.norm.num_features == 5 and isinstance(head.norm, nn.BatchNorm2d)
    assert isinstance(head.classify, nn.Conv2d)
    assert (head.classify.in_channels, head.classify.out_channels, head.classify.kernel_size) == (5, 4, (1, 1))
    deep = DenseHead([2, 3], 4, hidden=1)
    first, relu, last = deep.classify
    assert (first.in_channels, first.out_channels, first.kernel_size) == (5, 1, (1, 1))
    assert isinstance(relu, nn.ReLU)
    assert (last.in_channels, last.out_channels, last.kernel_size) == (1, 4, (1, 1))
    with torch.no_grad():  # the ReLU really sits between the convs: a negative hidden unit gives the bias only
        first.weight.fill_(-1.0)
        first.bias.zero_()
        last.weight.fill_(2.0)
        last.bias.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    deep.eval()
    out = deep([torch.ones(1, 2, 2, 2), torch.ones(1, 3, 2, 2)], (2, 2))
    assert torch.allclose(out, torch.tensor([0.0, 1.0, 2.0, 3.0])[None, :, None, None].expand(1, 4, 2, 2))


def test_dense_head_resizes_to_the_largest_map_by_area_then_to_the_label_size():
    # Sizes (2, 4) area 8, (1, 6) area 6 (largest h + w), (4, 1) area 4 (largest h / w, h - w): the first wins.
    rng = np.random.default_rng(0)
    maps = [rng.normal(size=(2, 1, 2, 4)), rng.normal(size=(2, 2, 1, 6)), rng.normal(size=(2, 1, 4, 1))]
    mean, var = np.array([0.5, -1.0, 0.0, 2.0]), np.array([4.0, 0.25, 1.0, 9.0])
    gamma, beta = np.array([1.0, 2.0, -1.0, 0.5]), np.array([0.0, 0.1, -0.2, 0.3])
    weight, bias = rng.normal(size=(3, 4)), np.array([0.5, -0.5, 0.0])
    head = DenseHead([1, 2, 1], 3)
    set_head(head, mean, var, gamma, beta, weight, bias)
    head.eval()
    tensors = [torch.tensor(maps[0]), torch.tensor(maps[1]).float(), torch.tensor(maps[2]).half()]  # any dtype
    out = head(tensors, (3, 5))
    assert out.shape == (2, 3, 3, 5) and out.dtype == torch.float32
    expected = reference_head(maps[:2] + [torch.tensor(maps[2]).half().double().numpy()], (2, 4), mean, var,
                              gamma, beta, weight, bias, (3, 5))
    np.testing.assert_allclose(out.detach().double().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_confusion_matrix_by_hand_ignores_unlabelled_pixels_and_refuses_values_above_the_classes():
    target = torch.tensor([[0, 1, 2], [3, 3, 1], [2, 0, 3]], dtype=torch.uint8)  # raw, 0 unlabeled
    pred = torch.tensor([[2, 0, 0], [2, 1, 0], [1, 2, 2]], dtype=torch.uint8)
    # raw 1 -> class 0: (0,1) pred 0, (1,2) pred 0; raw 2 -> class 1: (0,2) pred 0, (2,0) pred 1;
    # raw 3 -> class 2: (1,0) pred 2, (1,1) pred 1, (2,2) pred 2.
    cm = confusion_matrix(pred, target, 3)
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[2, 0, 0], [1, 1, 0], [0, 1, 2]]
    # 20 classes in uint8: 19 * 20 + 19 = 399 does not fit a byte.
    assert confusion_matrix(torch.tensor([19], dtype=torch.uint8), torch.tensor([20], dtype=torch.uint8),
                            20)[19, 19] == 1
    assert confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 0]), 2).tolist() == [[0, 0], [0, 0]]
    assert confusion_matrix(torch.tensor([1]), torch.tensor([2]), 2).tolist() == [[0, 0], [0, 1]]  # value C is fine
    with pytest.raises(DataError) as err:  # value C + 1 is not
        confusion_matrix(torch.tensor([0]), torch.tensor([3]), 2)
    assert str(err.value) == "segmentation value 3 exceeds the 2 classes named in the file"
    with pytest.raises(DataError) as err:
        confusion_matrix(torch.tensor([0, 1, 0]), torch.tensor([1, 4, 3]), 2)
    assert str(err.value) == "segmentation value 4 exceeds the 2 classes named in the file"


def test_segmentation_scores_by_hand_with_an_absent_class_and_a_one_pixel_class():
    # rows = true, columns = predicted. Class "d" has one pixel, predicted right: IoU 1 / 1.
    cm = torch.tensor([[3, 1, 0, 0],
                       [2, 4, 0, 0],
                       [0, 0, 0, 0],   # "c" absent from the ground truth, never predicted either
                       [0, 0, 0, 1]])
    scores = segmentation_scores(cm, ["a", "b", "c", "d"])
    assert scores["labelled_pixels"] == 11 and isinstance(scores["labelled_pixels"], int)
    assert scores["pixel_acc"] == pytest.approx(100 * 8 / 11)
    # a: 3 / (4 + 5 - 3); b: 4 / (6 + 5 - 4); d: 1 / (1 + 1 - 1)
    assert scores["class_iou"] == {"a": pytest.approx(50.0), "b": pytest.approx(400 / 7), "c": None,
                                   "d": pytest.approx(100.0)}
    assert scores["miou"] == pytest.approx((50.0 + 400 / 7 + 100.0) / 3)
    # A class predicted but absent from the ground truth still costs the true class its IoU.
    fp = segmentation_scores(torch.tensor([[1, 1], [0, 0]]), ["a", "b"])
    assert fp["class_iou"] == {"a": pytest.approx(50.0), "b": None} and fp["miou"] == pytest.approx(50.0)
    empty = segmentation_scores(torch.zeros(2, 2, dtype=torch.int64), ["a", "b"])
    assert math.isnan(empty["pixel_acc"]) and math.isnan(empty["miou"])
    assert empty["class_iou"] == {"a": None, "b": None} and empty["labelled_pixels"] == 0


def test_kfold_by_index_by_hand_and_its_bounds():
    folds = kfold_by_index(5, 3)
    assert [(train.tolist(), test.tolist()) for train, test in folds] == [
        ([1, 2, 4], [0, 3]), ([0, 2, 3], [1, 4]), ([0, 1, 3, 4], [2])]
    assert [(a.tolist(), b.tolist()) for a, b in kfold_by_index(2, 2)] == [([1], [0]), ([0], [1])]
    for n, k in ((5, 1), (5, 6), (1, 2)):
        with pytest.raises(DataError) as err:
            kfold_by_index(n, k)
        assert str(err.value) == f"dense.folds {k}: need 2 <= folds <= {n} labelled frames"


def test_stage_maps_picks_the_listed_features_in_order():
    out = {"features": ["stem", "s1", "s2", "s3"], "embedding": None}
    seen = []
    model = lambda x: seen.append(x) or out  # noqa: E731
    assert stage_maps(model, "input", [3, 1]) == ["s3", "s1"]
    assert seen == ["input"]


def plain_descent_dense(head, maps, targets, train_index, lr, epochs, batch, seed):
    """Reference training: shuffled minibatches, cross-entropy over labelled pixels written out, w -= lr * grad."""
    params = [p for p in head.parameters()]
    generator = torch.Generator().manual_seed(seed)
    steps = -(-len(train_index) // batch)
    history = []
    head.train()
    for epoch in range(epochs):
        order = train_index[torch.randperm(len(train_index), generator=generator)]
        total = 0.0
        for s in range(steps):
            idx = order[s * batch:(s + 1) * batch]
            logits = head([m[idx] for m in maps], tuple(targets.shape[-2:]))
            logp = torch.log_softmax(logits, dim=1)
            t = targets[idx].long() - 1
            picked = logp.gather(1, t.clamp(min=0)[:, None])[:, 0]
            loss = -picked[t >= 0].mean()
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p -= lr * g
            total += loss.item() * len(idx)
        history.append({"epoch": epoch + 1, "train_loss": total / len(train_index)})
    return history


def test_fit_dense_head_is_plain_minibatch_descent_on_the_labelled_pixels_of_the_train_frames():
    g = torch.Generator().manual_seed(1)
    maps = [torch.randn(7, 2, 2, 2, generator=g), torch.randn(7, 1, 4, 4, generator=g)]
    targets = torch.randint(0, 4, (7, 4, 4), generator=g)  # raw 0..3, 0 unlabeled; 3 classes
    train_index = torch.tensor([0, 2, 3, 5, 6])
    torch.manual_seed(0)
    head = DenseHead([2, 1], 3)
    reference = copy.deepcopy(head)
    head.eval()  # fit must put it in training mode (batch statistics)
    calls = []

    def maps_of(idx, training):
        calls.append((idx.tolist(), training))
        return [m[idx] for m in maps]

    optim = OptimConfig(name="sgd", lr=0.3, momentum=0.0, weight_decay=0.0, batch_size=2, epochs=2,
                        schedule="constant")
    params = list(head.parameters())
    history = fit_dense_head(head, maps_of, targets, train_index, optim, params, seed=4, device=torch.device("cpu"))
    expected = plain_descent_dense(reference, maps, targets, train_index, 0.3, 2, 2, 4)
    assert [h["epoch"] for h in history] == [1, 2]
    assert [h["train_loss"] for h in history] == pytest.approx([h["train_loss"] for h in expected], rel=1e-5)
    for p, q in zip(head.parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-5), (p, q)
    assert torch.allclose(head.norm.running_mean, reference.norm.running_mean, atol=1e-6)
    # 5 frames in batches of 2: 3 steps an epoch, the last of one frame, every train frame once an epoch.
    assert all(training for _, training in calls) and [len(i) for i, _ in calls] == [2, 2, 1] * 2
    assert sorted(sum((i for i, _ in calls[:3]), [])) == [0, 2, 3, 5, 6]
    # A batch above the split is the whole split, one step an epoch.
    calls.clear()
    optim_big = OptimConfig(name="sgd", lr=0.3, momentum=0.0, weight_decay=0.0, batch_size=64, epochs=1,
                            schedule="constant")
    fit_dense_head(head, maps_of, targets, train_index, optim_big, list(head.parameters()), 0, torch.device("cpu"))
    assert [len(i) for i, _ in calls] == [5]


def test_fit_dense_head_follows_the_schedule_per_step():
    # cosine over 2 epochs x 3 steps: lr factors 1, 0.5(1 + cos(pi/6)), ..., one per optimiser step.
    g = torch.Generator().manual_seed(2)
    maps = [torch.randn(6, 2, 3, 3, generator=g)]
    targets = torch.randint(0, 3, (6, 3, 3), generator=g)
    torch.manual_seed(1)
    head = DenseHead([2], 2)
    reference = copy.deepcopy(head)
    optim = OptimConfig(name="sgd", lr=0.5, momentum=0.0, weight_decay=0.0, batch_size=2, epochs=2,
                        schedule="cosine")
    fit_dense_head(head, lambda idx, t: [m[idx] for m in maps], targets, torch.arange(6), optim,
                   list(head.parameters()), 7, torch.device("cpu"))
    generator = torch.Generator().manual_seed(7)
    params = list(reference.parameters())
    reference.train()
    step = 0
    for _ in range(2):
        order = torch.randperm(6, generator=generator)
        for s in range(3):
            idx = order[2 * s:2 * s + 2]
            logp = torch.log_softmax(reference([maps[0][idx]], (3, 3)), dim=1)
            t = targets[idx] - 1
            loss = -logp.gather(1, t.clamp(min=0)[:, None])[:, 0][t >= 0].mean()
            lr = 0.5 * 0.5 * (1 + math.cos(math.pi * step / 6))
            with torch.no_grad():
                for p, gr in zip(params, torch.autograd.grad(loss, params)):
                    p -= lr * gr
            step += 1
    for p, q in zip(head.parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-5)


def test_predict_dense_is_the_eval_mode_argmax_in_batches():
    rng = np.random.default_rng(3)
    maps = rng.normal(size=(5, 2, 2, 2))
    mean, var, gamma, beta = np.array([1.0, -1.0]), np.array([0.5, 2.0]), np.array([1.0, -2.0]), np.zeros(2)
    weight, bias = np.array([[1.0, 0.5], [-1.0, 1.0], [0.2, -0.3]]), np.array([0.0, 0.3, -0.1])
    head = DenseHead([2], 3)
    set_head(head, mean, var, gamma, beta, weight, bias)
    head.train()  # predict must use the running statistics, not the batch's
    calls = []

    def maps_of(idx, training):
        calls.append((idx.tolist(), training))
        return [torch.tensor(maps)[idx]]

    index = torch.tensor([4, 0, 2, 3])
    pred = predict_dense(head, maps_of, index, (4, 3), batch_size=3)
    expected = reference_head([maps[index.numpy()]], (2, 2), mean, var, gamma, beta, weight, bias, (4, 3))
    assert pred.shape == (4, 4, 3) and pred.tolist() == expected.argmax(axis=1).tolist()
    assert calls == [([4, 0, 2], False), ([3], False)]
    assert not head.training


# ----------------------------------------------------------------------------- features


def test_input_adapter_identity_and_description():
    stats = {"mean": [0.5], "std": [0.25]}
    plain = InputAdapter("rgb")
    assert plain.identity and plain.renorm is None and plain.size is None and plain.modality == "rgb"
    assert plain.describe() == {"resize_shorter_side": None, "renormalised": False}
    same = InputAdapter("L", data_stats=stats, model_stats=dict(stats))  # equal stats: nothing to re-normalise
    assert same.identity and same.renorm is None
    assert InputAdapter("L", data_stats=stats).identity and InputAdapter("L", model_stats=stats).identity
    other = InputAdapter("L", data_stats=stats, model_stats={"mean": [0.25], "std": [0.5]})
    assert not other.identity and other.describe() == {"resize_shorter_side": None, "renormalised": True}
    sized = InputAdapter("L", size=8)
    assert not sized.identity and sized.describe() == {"resize_shorter_side": 8, "renormalised": False}
    x = torch.randn(1, 1, 8, 12)
    assert torch.equal(sized(x), x) and torch.equal(plain(x), x)  # shorter side already 8: untouched


def test_input_adapter_renormalises_then_resizes_the_shorter_side_by_hand():
    # data (mean 0.5, std 0.25) -> model (mean 0.25, std 0.5): x -> (0.25 x + 0.5 - 0.25) / 0.5 = 0.5 x + 0.5
    adapter = InputAdapter("L", data_stats={"mean": [0.5], "std": [0.25]}, model_stats={"mean": [0.25], "std": [0.5]})
    x = torch.tensor([[[[2.0, -1.0], [0.0, 4.0]]]])
    assert torch.allclose(adapter(x), torch.tensor([[[[1.5, 0.0], [0.5, 2.5]]]]))
    # 24 x 32 to shorter side 8: 8 x round(32 / 3) = 8 x 11; 30 x 20 to 10: 15 x 10
    assert InputAdapter("L", size=8)(torch.zeros(2, 1, 24, 32)).shape == (2, 1, 8, 11)
    assert InputAdapter("L", size=10)(torch.zeros(1, 1, 30, 20)).shape == (1, 1, 15, 10)
    assert InputAdapter("L", size=4)(torch.zeros(1, 1, 2, 3)).shape == (1, 1, 4, 6)  # upscaling too
    assert InputAdapter("rgb", size=3)(torch.zeros(1, 3, 6, 10)).shape == (1, 3, 3, 5)  # 3 channels: not a side
    # Downscaling 4 -> 2 antialiased: output pixel 0's triangle filter of half-width 2 centred at 1.0 weighs input
    # pixels 0..3 by 0.75, 0.75, 0.25, 0: a row 0, 0, 4, 0 gives 4 * 0.25 / 1.75 (plain bilinear would give 0).
    row = torch.tensor([0.0, 0.0, 4.0, 0.0])
    out = InputAdapter("L", size=2)(row.expand(1, 1, 4, 4).clone())
    assert out.shape == (1, 1, 2, 2)
    assert out[0, 0, 0].tolist() == pytest.approx([4 * 0.25 / 1.75, 4 * 0.75 / 1.75])
    # Upscaling 2 -> 4 is plain bilinear: 0, 4 -> 0, 1, 3, 4
    up = InputAdapter("L", size=4)(torch.tensor([0.0, 4.0]).expand(1, 1, 2, 2).clone())
    assert up[0, 0, 0].tolist() == pytest.approx([0.0, 1.0, 3.0, 4.0])
    # depth, depth_valid and segmentation take the nearest value: 4 -> 2 picks pixels 0 and 2
    for modality in ("depth", "depth_valid", "segmentation"):
        nearest = InputAdapter(modality, size=2)(row.expand(1, 1, 4, 4).clone())
        assert nearest[0, 0, 0].tolist() == [0.0, 4.0], modality


def test_resolve_stage_by_hand_and_its_messages():
    assert resolve_stage("embedding", 4) == "embedding"
    assert [resolve_stage(s, 4) for s in (0, 3, -1, -4, "2", "-1", "0")] == [0, 3, 3, 0, 2, 3, 0]
    for bad in (4, -5, "4", "-5"):
        with pytest.raises(ConfigError) as err:
            resolve_stage(bad, 4)
        assert str(err.value) == (f"stage {int(bad)}: the network has 4 stage maps (0..3, stem first); "
                                  "pick one of them or 'embedding'")
    with pytest.raises(ConfigError) as err:
        resolve_stage("last", 4)
    assert str(err.value) == "stage 'last': use 'embedding' or a stage index 0..3 (negative counts from the end)"
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_stage_features_pool_a_stage_map_or_return_the_embedding():
    fmap = torch.arange(16.0).view(2, 2, 2, 2)
    output = {"embedding": torch.ones(2, 5), "features": [torch.zeros(2, 1, 1, 1), fmap]}
    assert stage_features(output, "embedding") is output["embedding"]
    assert stage_features(output, 1).tolist() == [[1.5, 5.5], [9.5, 13.5]]  # means of 0..3, 4..7, 8..11, 12..15


class Foreign:
    """Not a tensor, nor anything torch.load(weights_only=True) accepts."""


class TinyNet(nn.Module):
    """features: [x, 2x]; embedding: the mean of x per channel; logits: the sum of x; dropout only in training."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        x = self.drop(x)
        return {"features": [x, 2 * x], "embedding": x.mean(dim=(2, 3)).double(),
                "logits": x.sum(dim=(1, 2, 3))[:, None].half()}


def test_extract_features_runs_the_adapted_inputs_in_eval_mode_in_order():
    samples = [{"L": torch.full((1, 2, 2), float(i)), "label": i % 3 - 1} for i in range(5)]
    adapter = InputAdapter("L", data_stats={"mean": [1.0], "std": [2.0]}, model_stats={"mean": [0.0], "std": [1.0]})
    net = TinyNet().train()
    out = extract_features(net, samples, "L", 1, adapter, torch.device("cpu"), batch_size=2)
    assert not net.training
    adapted = [2.0 * i + 1.0 for i in range(5)]  # x * 2 + 1 for the model's stats
    assert out["features"].dtype == torch.float32 and out["features"].tolist() == [[2 * v] for v in adapted]
    assert out["logits"].dtype == torch.float32 and out["logits"].tolist() == [[4 * v] for v in adapted]
    assert out["labels"].tolist() == [-1, 0, 1, -1, 0]
    emb = extract_features(net, samples, "L", "embedding", InputAdapter("L"), torch.device("cpu"))
    assert emb["features"].tolist() == [[float(i)] for i in range(5)]


def test_file_stamp_and_cache_key_by_hand(tmp_path):
    data = tmp_path / "sub" / ".." / "data.h5"
    (tmp_path / "sub").mkdir()
    data.write_bytes(b"12345")
    os.utime(data, ns=(1_000_000_007, 2_000_000_011))
    stamp = {"path": str(tmp_path.resolve() / "data.h5"), "bytes": 5, "mtime_ns": 2_000_000_011}
    assert file_stamp(data) == stamp and file_stamp(str(data)) == stamp
    adapter = InputAdapter("rgb", size=32)
    key = cache_key("abc", data, "train", "rgb", 2, adapter)
    assert CACHE_VERSION == 1
    assert key == {"version": 1, "network": "abc", "data": stamp, "split": "train", "modality": "rgb", "stage": 2,
                   "input": {"resize_shorter_side": 32, "renormalised": False}}
    assert cache_key("abc", data, "train", "rgb", 2, adapter, transform="centre crop 28") == {
        **key, "transform": "centre crop 28"}


def test_cache_path_is_24_hex_of_the_key_whatever_its_order(tmp_path):
    key = {"a": 1, "b": {"c": [1, 2], "d": "x"}}
    path = cache_path(tmp_path, key)
    assert path.parent == tmp_path and path.suffix == ".pt" and len(path.stem) == 24
    int(path.stem, 16)
    assert cache_path(str(tmp_path), {"b": {"d": "x", "c": [1, 2]}, "a": 1}) == path
    assert cache_path(tmp_path, {"a": 2, "b": {"c": [1, 2], "d": "x"}}) != path
    # A stable name: entries written by an earlier version of the package must still be found. The digest is
    # sha256 of '{"a": 1, "b": {"c": [1, 2], "d": "x"}}' (sorted keys, json's default separators).
    text = '{"a": 1, "b": {"c": [1, 2], "d": "x"}}'
    assert path.stem == hashlib.sha256(text.encode()).hexdigest()[:24]


def test_cached_stores_once_reads_back_and_recomputes_foreign_or_damaged_entries(tmp_path):
    key = {"network": "n", "stage": 1}
    calls = []

    def compute(value=1.0):
        calls.append(value)
        return {"features": torch.full((2, 3), value), "logits": torch.zeros(2, 4), "labels": torch.tensor([0, -1])}

    entry, hit = cached(None, key, compute)
    assert not hit and calls == [1.0] and entry["features"].tolist() == [[1.0] * 3] * 2
    assert list(tmp_path.iterdir()) == []
    entry, hit = cached(tmp_path, key, compute)
    assert not hit and calls == [1.0, 1.0]
    (path,) = tmp_path.iterdir()
    assert path == cache_path(tmp_path, key)
    stored = torch.load(path, weights_only=True)
    assert stored["key"] == key and set(stored) == {"key", "features", "logits", "labels"}
    entry, hit = cached(tmp_path, key, lambda: compute(2.0))
    assert hit and calls == [1.0, 1.0] and set(entry) == {"features", "logits", "labels"}
    assert entry["features"].tolist() == [[1.0] * 3] * 2 and entry["labels"].tolist() == [0, -1]
    # A file at the key's path holding another key (a foreign entry) is recomputed and replaced.
    torch.save({"key": {"other": 1}, "features": torch.zeros(1), "logits": torch.zeros(1), "labels": torch.zeros(1)},
               path)
    entry, hit = cached(tmp_path, key, lambda: compute(3.0))
    assert not hit and entry["features"][0, 0] == 3.0 and torch.load(path, weights_only=True)["key"] == key
    path.write_bytes(b"not a torch file")
    entry, hit = cached(tmp_path, key, lambda: compute(4.0))
    assert not hit and entry["features"][0, 0] == 4.0
    assert cached(tmp_path, key, lambda: compute(5.0))[0]["features"][0, 0] == 4.0
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind
    # An entry holding an arbitrary pickled object is not unpickled (weights_only): recomputed and replaced.
    torch.save({"key": key, "features": torch.zeros(1), "logits": torch.zeros(1), "labels": torch.zeros(1),
                "extra": Foreign()}, path)
    entry, hit = cached(tmp_path, key, lambda: compute(6.0))
    assert not hit and entry["features"][0, 0] == 6.0 and "extra" not in torch.load(path, weights_only=True)


# ----------------------------------------------------------------------------- report

ROWS = [{"method": "linear", "checkpoint": "a.pt", "arch": "resnet8", "modality": "rgb", "stage": "embedding",
         "top1": 12.5, "top5": None},
        {"method": "dense", "checkpoint": "random-init", "arch": "wrn", "modality": "depth", "stage": 2,
         "top1": float("nan"), "top5": 100.0}]


def test_format_table_by_hand():
    assert report.format_table(ROWS).split("\n") == [
        "method  checkpoint   arch     modality  stage      top-1  top-5",
        "------  -----------  -------  --------  ---------  -----  ------",
        "linear  a.pt         resnet8  rgb       embedding  12.50  -",
        "dense   random-init  wrn      depth     2          nan    100.00"]
    # Metric columns only where some row has a value; missing keys print "-"; 1e-3 rounds to 0.00.
    assert report.format_table([{"method": "m", "miou": None, "pixel_acc": 1e-3}, {"method": "n"}]).split("\n") == [
        "method  checkpoint  arch  modality  stage  pixel acc",
        "------  ----------  ----  --------  -----  ---------",
        "m       -           -     -         -      0.00",
        "n       -           -     -         -      -"]


def test_markdown_table_by_hand_escapes_bars():
    rows = [dict(ROWS[0], checkpoint="a|b.pt"), ROWS[1]]
    assert report.markdown_table(rows) == (
        "| method | checkpoint | arch | modality | stage | top-1 | top-5 |\n"
        "|---|---|---|---|---|---|---|\n"
        "| linear | a\\|b.pt | resnet8 | rgb | embedding | 12.50 | - |\n"
        "| dense | random-init | wrn | depth | 2 | nan | 100.00 |")
    assert report.markdown_table([{"miou": 50.0, "top5": None}]) == (
        "| method | checkpoint | arch | modality | stage | mIoU |\n|---|---|---|---|---|---|\n"
        "| - | - | - | - | - | 50.00 |")


def test_write_json_writes_nan_as_null_at_any_depth(tmp_path):
    payload = {"a": float("nan"), "b": [1.5, float("nan"), (2, float("nan"))], "c": {"d": float("nan"), "e": "x"},
               "f": None}
    path = report.write_json(str(tmp_path / "new" / "r.json"), payload)
    assert path == tmp_path / "new" / "r.json"
    assert path.read_text() == ('{\n  "a": null,\n  "b": [\n    1.5,\n    null,\n    [\n      2,\n      null\n'
                                '    ]\n  ],\n  "c": {\n    "d": null,\n    "e": "x"\n  },\n  "f": null\n}\n')
    assert math.isnan(payload["a"])  # the caller's payload is left as it was


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_save_figure_writes_a_png_at_110_dpi(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1))
    fig.add_subplot().plot([0, 1], [0, 1])
    path = report.save_figure(fig, str(tmp_path / "f.png"))
    assert path == tmp_path / "f.png" and png_size(path.read_bytes()) == (220, 110)
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]
    import matplotlib

    with matplotlib.rc_context({"savefig.format": "svg"}):  # PNG whatever the user's default format
        assert png_size(report.save_figure(fig, tmp_path / "g.png").read_bytes()) == (220, 110)


def drawn(monkeypatch, plot, *args):
    figures = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path: figures.append(fig) or path)
    assert plot(*args) == args[1]
    (fig,) = figures
    return fig


def test_plot_histories_draws_one_labelled_line_per_network(monkeypatch):
    histories = {"teacher": [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.5}],
                 "random-init": [{"epoch": 1, "train_loss": 3.0}]}
    fig = drawn(monkeypatch, report.plot_histories, histories, "loss.png", "the title")
    assert tuple(fig.get_size_inches()) == pytest.approx((6.0, 3.6))
    (ax,) = fig.axes
    assert [(line.get_label(), list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines] == [
        ("teacher", [1, 2], [2.0, 1.5]), ("random-init", [1], [3.0])]
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "training loss of the probe"
    assert ax.get_title() == "the title" and ax.title.get_fontsize() == 9
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["teacher", "random-init"]
    assert all(t.get_fontsize() == 8 for t in legend.get_texts())


def test_plot_class_iou_groups_bars_and_skips_classes_absent_everywhere(monkeypatch):
    ious = {"net A": {"wall": 50.0, "floor": None, "bed": 20.0}, "net B": {"wall": 40.0, "floor": None, "bed": None}}
    fig = drawn(monkeypatch, report.plot_class_iou, ious, "iou.png")
    assert tuple(fig.get_size_inches()) == pytest.approx((5.0, 3.8))  # 0.6 * 2 + 2 < 5
    (ax,) = fig.axes
    bars = [(round(p.get_x() + p.get_width() / 2, 9), p.get_width(), p.get_height()) for p in ax.patches]
    # width 0.8 / 2 networks; net B's bars sit 0.4 right of net A's; a missing IoU is drawn as 0
    assert bars == [(0.0, pytest.approx(0.4), 50.0), (1.0, pytest.approx(0.4), 20.0),
                    (0.4, pytest.approx(0.4), 40.0), (1.4, pytest.approx(0.4), 0.0)]
    assert list(ax.get_xticks()) == pytest.approx([0.2, 1.2])
    labels = ax.get_xticklabels()
    assert [t.get_text() for t in labels] == ["wall", "bed"]
    assert all(t.get_rotation() == 45 and t.get_ha() == "right" and t.get_fontsize() == 8 for t in labels)
    assert ax.get_ylabel() == "IoU (%)"
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["net A", "net B"]
    assert all(t.get_fontsize() == 8 for t in legend.get_texts())
    six = {"only": {f"c{i}": float(i) for i in range(6)}}
    fig = drawn(monkeypatch, report.plot_class_iou, six, "six.png")
    assert tuple(fig.get_size_inches()) == pytest.approx((0.6 * 6 + 2, 3.8))
    (ax,) = fig.axes
    assert [p.get_width() for p in ax.patches] == pytest.approx([0.8] * 6)  # one network: the full 0.8
    assert list(ax.get_xticks()) == pytest.approx([i + 0.4 - 0.4 for i in range(6)])


def test_write_report_by_hand_copies_images_in(tmp_path):
    elsewhere = tmp_path / "plots" / "loss.png"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"png bytes")
    out = tmp_path / "a" / "report"
    (out).mkdir(parents=True)
    inside = out / "iou.png"
    inside.write_bytes(b"already here")
    path = report.write_report(str(out), "Probe", ROWS, notes=["first note", "second"],
                               images=[str(elsewhere), inside], extra_sections=[("Notes", "body text")])
    assert path == out / "report.md"
    assert path.read_text() == (
        "# Probe\n\n- first note\n- second\n\n## Results\n\n"
        "| method | checkpoint | arch | modality | stage | top-1 | top-5 |\n|---|---|---|---|---|---|---|\n"
        "| linear | a.pt | resnet8 | rgb | embedding | 12.50 | - |\n"
        "| dense | random-init | wrn | depth | 2 | nan | 100.00 |"
        "\n\n"
        "## Notes\n\nbody text\n\n## Plots\n\n![loss](loss.png)\n\n![iou](iou.png)\n")
    assert (out / "loss.png").read_bytes() == b"png bytes" and inside.read_bytes() == b"already here"
    bare = report.write_report(tmp_path / "new" / "dir", "T", [])
    assert bare.read_text() == "# T\n\n"


# ----------------------------------------------------------------------------- fit_linear_probe


def plain_descent_linear(features, labels, num_classes, lr, epochs, batch, seed, smoothing=0.0, standardize=True,
                         schedule="constant"):
    """Reference: seeded nn.Linear init, population standardisation (std <= 1e-6 -> 1), seeded shuffled minibatches,
    label-smoothed cross-entropy written out, w -= lr * factor * grad; returns W, b, mean, std, history."""
    keep = labels >= 0
    x, y = features[keep].float(), labels[keep].long()
    n, dim = x.shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        init = nn.Linear(dim, num_classes)
    w, b = init.weight.detach().clone().requires_grad_(), init.bias.detach().clone().requires_grad_()
    if standardize:
        mean = x.mean(0)
        std = ((x - mean) ** 2).mean(0).sqrt()
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
    else:
        mean, std = torch.zeros(dim), torch.ones(dim)
    generator = torch.Generator().manual_seed(seed)
    steps = -(-n // batch)
    history, step = [], 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        loss_sum, correct = 0.0, 0
        for s in range(steps):
            idx = order[s * batch:(s + 1) * batch]
            z = ((x[idx] - mean) / std) @ w.T + b
            logp = torch.log_softmax(z, dim=1)
            nll = -logp.gather(1, y[idx][:, None])[:, 0]
            loss = ((1 - smoothing) * nll - smoothing * logp.mean(dim=1)).mean()
            gw, gb = torch.autograd.grad(loss, [w, b])
            factor = 1.0 if schedule == "constant" else 0.5 * (1 + math.cos(math.pi * step / (epochs * steps)))
            with torch.no_grad():
                w -= lr * factor * gw
                b -= lr * factor * gb
            step += 1
            loss_sum += loss.item() * len(idx)
            correct += int((z.argmax(1) == y[idx]).sum())
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / n, "train_top1": 100.0 * correct / n})
    return w.detach(), b.detach(), mean, std, history


def sgd(**keys) -> OptimConfig:
    return OptimConfig(**{"name": "sgd", "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant", **keys})


def assert_fit_matches(probe, history, reference):
    w, b, mean, std, expected = reference
    assert probe.linear.weight.device.type == "cpu" and not probe.training
    assert torch.allclose(probe.linear.weight, w, atol=1e-5) and torch.allclose(probe.linear.bias, b, atol=1e-5)
    assert torch.allclose(probe.mean, mean, atol=1e-6) and torch.allclose(probe.std, std, atol=1e-6)
    assert [h["epoch"] for h in history] == [h["epoch"] for h in expected]
    assert [h["train_loss"] for h in history] == pytest.approx([h["train_loss"] for h in expected], rel=1e-5)
    assert [h["train_top1"] for h in history] == pytest.approx([h["train_top1"] for h in expected])
    assert set(history[0]) == {"epoch", "train_loss", "train_top1"}


def linear_data(seed=0, n=12, dim=3, classes=3):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % (classes + 1) - 1  # -1, 0, 1, 2, -1, ...: unlabeled rows among them
    features = 5.0 + 3.0 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    features[labels >= 0] += 2.0 * labels[labels >= 0, None]
    features[:, -1] = 7.0  # a constant dimension keeps std 1
    return features, labels


def test_fit_linear_probe_is_seeded_minibatch_descent_with_label_smoothing_and_a_cosine_schedule():
    features, labels = linear_data()
    optim = sgd(lr=0.4, batch_size=4, epochs=3, schedule="cosine", label_smoothing=0.2)
    probe, history = fit_linear_probe(features, labels, 4, optim, seed=3)
    # 9 labelled rows in batches of 4: 3 steps an epoch (the last of 1 row); 4 classes, one never seen
    assert_fit_matches(probe, history, plain_descent_linear(features, labels, 4, 0.4, 3, 4, 3, smoothing=0.2,
                                                            schedule="cosine"))
    assert probe.linear.weight.shape == (4, 3) and probe.mean.dtype == torch.float32
    assert history[1]["train_top1"] != 0.0


def test_fit_linear_probe_defaults_seed_0_standardised_full_batch_on_the_cpu():
    features, labels = linear_data(seed=1)
    probe, history = fit_linear_probe(features, labels, 3, sgd(lr=0.5, batch_size=64, epochs=2))
    assert_fit_matches(probe, history, plain_descent_linear(features, labels, 3, 0.5, 2, 64, 0))
    raw, raw_history = fit_linear_probe(features, labels, 3, sgd(lr=0.01, batch_size=5, epochs=2), seed=2,
                                        standardize=False)
    assert raw.mean.tolist() == [0.0] * 3 and raw.std.tolist() == [1.0] * 3
    assert_fit_matches(raw, raw_history, plain_descent_linear(features, labels, 3, 0.01, 2, 5, 2, standardize=False))


def test_fit_linear_probe_init_does_not_depend_on_the_global_rng_and_no_label_is_refused():
    features, labels = linear_data(seed=2)
    optim = sgd(lr=0.1, batch_size=4, epochs=1)
    torch.manual_seed(11)
    first, _ = fit_linear_probe(features, labels, 3, optim, seed=5)
    torch.manual_seed(12)
    second, _ = fit_linear_probe(features, labels, 3, optim, seed=5)
    assert torch.equal(first.linear.weight, second.linear.weight)
    # ... nor the global stream after it on the probe's seed: the seeding happens in a fork
    after = []
    for global_seed in (11, 12):
        torch.manual_seed(global_seed)
        fit_linear_probe(features, labels, 3, optim, seed=5)
        after.append(torch.rand(4))
    assert not torch.equal(*after)
    # ... and leaves the global stream where it was: building the head (nn.Linear's own init) happens in the fork too
    torch.manual_seed(13)
    state = torch.get_rng_state()
    fit_linear_probe(features, labels, 3, optim, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(DataError) as err:
        fit_linear_probe(features, torch.full((12,), -1), 3, optim)
    assert str(err.value) == "linear probe: the training split has no labelled sample"
