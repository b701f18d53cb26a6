"""Probe scores against independent computations: top-k with partial hits and unlabeled samples, linear CKA."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crossmodal.probe.diagnostics import linear_cka
from crossmodal.probe.linear import LinearProbe, evaluate_linear_probe, topk_accuracy

torch.set_num_threads(1)


def hand_topk(logits: list[list[float]], labels: list[int], k: int) -> float:
    """Percent of labelled samples whose label has fewer than k classes scored strictly above it."""
    scored = [(row, y) for row, y in zip(logits, labels) if y >= 0]
    hits = sum(sum(v > row[y] for v in row) < k for row, y in scored)
    return 100.0 * hits / len(scored)


def test_topk_by_hand_with_partial_hits_and_unlabeled_samples():
    # 7 classes; the labelled samples' labels rank 1st, 2nd, 5th, 6th, 7th and 1st: top-1 2/6, top-3 3/6,
    # top-5 4/6. The two unlabeled rows (-1) would add misses to every k if they were counted.
    order = [7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]

    def row_with_rank(label, rank):
        others = [v for i, v in enumerate(order) if i != rank]
        row = others[:label] + [order[rank]] + others[label:]
        assert sorted(row, reverse=True).index(row[label]) == rank
        return row

    cases = [(3, 0), (0, 1), (6, 4), (2, 5), (5, 6), (1, 0)]
    logits = [row_with_rank(label, rank) for label, rank in cases] + [order, order[::-1]]
    labels = [label for label, _ in cases] + [-1, -1]
    scores = topk_accuracy(torch.tensor(logits), torch.tensor(labels), ks=(1, 3, 5))
    assert scores == pytest.approx({"top1": 100 * 2 / 6, "top3": 100 * 3 / 6, "top5": 100 * 4 / 6})


def test_topk_matches_rank_counting_on_random_logits_with_more_classes_than_k():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(60, 12, generator=g)
    labels = torch.randint(0, 12, (60,), generator=g)
    labels[::7] = -1
    scores = topk_accuracy(logits, labels, ks=(1, 2, 5, 12))
    for k in (1, 2, 5, 12):
        assert scores[f"top{k}"] == pytest.approx(hand_topk(logits.tolist(), labels.tolist(), k)), k
    assert 0 < scores["top1"] < scores["top5"] < scores["top12"] == 100.0


def test_topk_above_the_class_count_counts_every_class_and_no_label_gives_nan():
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 2.0, 1.0]])
    assert topk_accuracy(logits, torch.tensor([0, 1])) == {"top1": 0.0, "top5": 100.0}
    assert topk_accuracy(logits, torch.tensor([-1, 2])) == {"top1": 0.0, "top5": 100.0}  # one labelled row
    assert topk_accuracy(logits, torch.tensor([-1, 0]), ks=(1,)) == {"top1": 100.0}
    assert topk_accuracy(logits, torch.tensor([2, -1]), ks=(1,)) == {"top1": 100.0}
    empty = topk_accuracy(logits, torch.tensor([-1, -1]))
    assert set(empty) == {"top1", "top5"} and all(math.isnan(v) for v in empty.values())


def test_evaluate_linear_probe_scores_the_standardised_linear_map():
    probe = LinearProbe(2, 3)
    with torch.no_grad():
        probe.mean.copy_(torch.tensor([1.0, -1.0]))
        probe.std.copy_(torch.tensor([10.0, 1.0]))
        probe.linear.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        probe.linear.bias.zero_()
    features = torch.tensor([[11.0, 1.0], [-9.0, -3.0], [1.0, -1.5], [21.0, -1.0], [1.0, -1.0]])
    # standardised: (1, 2), (-1, -2), (0, -0.5), (2, 0) -> classes 1, 2, 2, 0, all right; the last row is a
    # three-way tie and unlabeled. Without the std the first row would be class 0, without the mean too.
    scores = evaluate_linear_probe(probe, features, torch.tensor([1, 2, 2, 0, -1]))
    assert scores["top1"] == 100.0


def gram_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA from centred Gram matrices: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = X X^T, L = Y Y^T."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float(np.sum(k * l_) / np.sqrt(np.sum(k * k) * np.sum(l_ * l_)))


@pytest.mark.parametrize("noise", [0.3, 1.0, 3.0])
def test_linear_cka_equals_the_gram_matrix_formula(noise):
    rng = np.random.default_rng(int(noise * 10))
    x = rng.normal(size=(80, 6)) + 2.0
    y = x @ rng.normal(size=(6, 9)) + noise * rng.normal(size=(80, 9))
    expected = gram_cka(x, y)
    assert 0.05 < expected < 0.95  # far from the fixed points 0 and 1, so a power of CKA would differ
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(expected, abs=1e-10)
    assert linear_cka(torch.from_numpy(x).float(), torch.from_numpy(y).float()) == pytest.approx(expected, abs=1e-5)


def test_linear_cka_flattens_maps_refuses_unpaired_rows_and_is_zero_for_constant_features():
    rng = np.random.default_rng(5)
    maps, other = rng.normal(size=(30, 2, 3)), rng.normal(size=(30, 4))
    expected = gram_cka(maps.reshape(30, 6), other)
    assert linear_cka(torch.from_numpy(maps), torch.from_numpy(other)) == pytest.approx(expected, abs=1e-10)
    with pytest.raises(ValueError, match="same samples: 30 vs 29 rows"):
        linear_cka(torch.from_numpy(maps), torch.from_numpy(other[:29]))
    assert linear_cka(torch.ones(30, 3), torch.from_numpy(other)) == 0.0  # centred to zero: no similarity


def test_set_standardization_takes_population_mean_and_std_and_keeps_1_at_or_below_eps():
    probe = LinearProbe(4, 2)
    features = torch.tensor([[0.0, 2.0, 5.0, 1.0], [4.0, 2.0, 5.0, 1.0], [2.0, 2.0, 5.0, 4.0],
                             [2.0, 2.0, 5.0, 2.0]])
    probe.set_standardization(features)
    assert probe.mean.tolist() == [2.0, 2.0, 5.0, 2.0]
    # population std: sqrt((4 + 4 + 0 + 0) / 4) = sqrt(2); constant columns keep 1; sqrt((1 + 1 + 4 + 0) / 4)
    assert probe.std.tolist() == pytest.approx([math.sqrt(2), 1.0, 1.0, math.sqrt(1.5)], abs=1e-6)
    wide = torch.tensor([[0.0, 0.0], [4.0, 2.0]])  # stds 2 and 1
    probe = LinearProbe(2, 2)
    probe.set_standardization(wide, eps=2.0)  # 2 is not above eps: kept at 1
    assert probe.std.tolist() == [1.0, 1.0] and probe.mean.tolist() == [2.0, 1.0]
    probe.set_standardization(wide, eps=1.5)
    assert probe.std.tolist() == [2.0, 1.0]
    narrow = LinearProbe(1, 2)
    narrow.set_standardization(torch.tensor([[0.0], [1.0]]))  # std 0.5, far above the default eps 1e-6
    assert narrow.std.tolist() == [0.5] and narrow.mean.tolist() == [0.5]
