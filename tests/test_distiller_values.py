"""Every distiller's whole loss (the registered module's forward or init_loss) against a value computed by hand.

Helpers are tested in test_distillers.py; here each test feeds the module hand-written maps or embeddings and
compares its output with plain Python, so a changed reduction (mean/sum), distance (MSE/L1), stage weight or
normalisation fails. CRD's value is tested against its own reference in test_crd.py.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from crossmodal.losses import DistillSpec, OutputShapes, build_distiller, list_distillers

torch.set_num_threads(1)


def out(features=None, logits=None, embedding=None, preact=None):
    """A model output dict with only the fields a test needs."""
    return {"features": features, "logits": logits, "embedding": embedding, "preact_features": preact}


def shape_spec(s_maps, t_maps, s_emb=2, t_emb=2, n=4):
    """DistillSpec from lists of (C, H, W) stage shapes (preact the same) and embedding sizes."""
    s = OutputShapes(features=list(s_maps), preact_features=list(s_maps), embedding=s_emb, num_classes=2)
    t = OutputShapes(features=list(t_maps), preact_features=list(t_maps), embedding=t_emb, num_classes=2)
    return DistillSpec(s, t, n, 2)


def maps(*channels_rows):
    """A (B=1, C, H, W) tensor from nested lists [channel][row][column]."""
    return torch.tensor([channels_rows], dtype=torch.float32)


def hand_attention(channels, p=2):
    """Normalised mean-over-channels of |a|^p, for a map given as [channel][position] lists."""
    q = [sum(abs(c[i]) ** p for c in channels) / len(channels) for i in range(len(channels[0]))]
    norm = math.sqrt(sum(v * v for v in q))
    return [v / norm for v in q]


def test_at_sums_every_paired_stage_and_pools_the_larger_map():
    # Student: stem + 2 stages; teacher: stem + 3 stages -> pairs (s1, t2), (s2, t3). s1 is 1x4, t2 1x2: s1 pooled.
    s1, s2 = [[1.0, 3.0, 2.0, 0.0], [0.0, 1.0, 1.0, 1.0]], [[2.0, 1.0]]
    t2, t3 = [[1.0, 2.0], [2.0, 0.0]], [[0.0, 3.0]]
    s1_pooled = [[(c[0] + c[1]) / 2, (c[2] + c[3]) / 2] for c in s1]
    expected = 0.0
    for a, b in ((s1_pooled, t2), (s2, t3)):
        qa, qb = hand_attention(a), hand_attention(b)
        expected += sum((x - y) ** 2 for x, y in zip(qa, qb)) / len(qa)
    at = build_distiller("at", shape_spec([(1, 1, 4), (2, 1, 4), (1, 1, 2)], [(1, 1, 4), (1, 1, 4), (2, 1, 2), (1, 1, 2)]))
    stem = torch.zeros(1, 1, 1, 4)
    student = [stem, maps(*[[row] for row in s1]), maps(*[[row] for row in s2])]
    teacher = [stem, stem, maps(*[[row] for row in t2]), maps(*[[row] for row in t3])]
    assert at(out(student), out(teacher), {}).item() == pytest.approx(expected, rel=1e-6)


def test_at_with_p_3_raises_both_maps_to_the_cube_of_their_absolute_values():
    # One stage after the stem; entries of both signs. Either map at p = 2 instead of 3 changes the value.
    s, t = [[1.0, -2.0, 0.5], [-1.0, 0.0, 3.0]], [[2.0, 1.0, -1.0]]
    qs, qt = hand_attention(s, 3), hand_attention(t, 3)
    expected = sum((x - y) ** 2 for x, y in zip(qs, qt)) / 3
    at = build_distiller("at", shape_spec([(1, 1, 3), (2, 1, 3)], [(1, 1, 3), (1, 1, 3)]), p=3)
    stem = torch.zeros(1, 1, 1, 3)
    loss = at(out([stem, maps(*[[row] for row in s])]), out([stem, maps(*[[row] for row in t])]), {})
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_fitnet_is_the_mean_squared_error_of_the_regressed_hint():
    # Same-size hint at the default hint_layer 2: 1x1 conv (weights set here) + BN (eval: running mean 0,
    # var 1, so x / sqrt(1 + 1e-5)) + ReLU, then MSE against the teacher's map.
    fitnet = build_distiller("fitnet", shape_spec([(1, 1, 2)] * 3, [(2, 1, 2)] * 3)).eval()
    conv = fitnet.regressor[0]
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.5, 0.0]))
    hint = [1.0, -3.0]
    target = [[1.0, 1.0], [0.0, 2.0]]
    bn = 1 / math.sqrt(1 + 1e-5)
    guess = [[max(0.0, (2 * x + 0.5) * bn) for x in hint], [max(0.0, -x * bn) for x in hint]]
    expected = sum((g - t) ** 2 for gr, tr in zip(guess, target) for g, t in zip(gr, tr)) / 4
    unused = torch.zeros(1, 1, 1, 2)
    loss = fitnet(out([unused, unused, maps([hint])]), out([unused, unused, maps(*[[r] for r in target])]), {})
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def identity_heads(cc):
    """Set both CC heads to the identity map (weights I, bias 0)."""
    with torch.no_grad():
        for head in (cc.student_head, cc.teacher_head):
            head.linear.weight.copy_(torch.eye(2))
            head.linear.bias.zero_()
    return cc


CC_S, CC_T = [(1.0, 0.0), (3.0, 4.0), (0.0, 2.0)], [(1.0, 1.0), (1.0, 0.0), (-1.0, 0.0)]


def test_cc_default_loss_is_the_mean_product_of_consecutive_samples_absolute_differences():
    cc = identity_heads(build_distiller("cc", shape_spec([], []), feat_dim=2))
    d = [(abs(a[0] - b[0]), abs(a[1] - b[1])) for a, b in zip(CC_S, CC_T)]  # (0, 1), (2, 4), (1, 2)
    expected = sum(d[i][0] * d[i + 1][0] + d[i][1] * d[i + 1][1] for i in range(2)) / 2  # (4 + 10) / 2
    loss = cc(out(embedding=torch.tensor(CC_S)), out(embedding=torch.tensor(CC_T)), {})
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_cc_gaussian_loss_is_the_mean_squared_difference_of_taylor_rbf_correlations():
    gamma, order = 0.3, 2
    cc = identity_heads(build_distiller("cc", shape_spec([], []), feat_dim=2, correlation="gaussian", gamma=gamma))

    def correlations(points):
        units = [(x / math.hypot(x, y), y / math.hypot(x, y)) for x, y in points]
        kernel = []
        for a in units:
            row = []
            for b in units:
                c = a[0] * b[0] + a[1] * b[1]
                row.append(sum(math.exp(-2 * gamma) * (2 * gamma * c) ** p / math.factorial(p) for p in range(order + 1)))
            kernel.append(row)
        return kernel

    k_s, k_t = correlations(CC_S), correlations(CC_T)
    expected = sum((k_s[i][j] - k_t[i][j]) ** 2 for i in range(3) for j in range(3)) / 9
    loss = cc(out(embedding=torch.tensor(CC_S)), out(embedding=torch.tensor(CC_T)), {})
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_cc_gaussian_defaults_are_the_papers_gamma_0_4_and_order_2():
    # Taylor series of exp(-gamma ||x - y||^2) for unit x, y: sum_p exp(-2 gamma) (2 gamma c)^p / p!, by hand.
    def kernel(points, gamma=0.4, order=2):
        units = [(x / math.hypot(x, y), y / math.hypot(x, y)) for x, y in points]
        cos = [[a[0] * b[0] + a[1] * b[1] for b in units] for a in units]
        return [[sum(math.exp(-2 * gamma) * (2 * gamma * c) ** p / math.factorial(p) for p in range(order + 1))
                 for c in row] for row in cos]

    k_s, k_t = kernel(CC_S), kernel(CC_T)
    expected = sum((k_s[i][j] - k_t[i][j]) ** 2 for i in range(3) for j in range(3)) / 9
    cc = identity_heads(build_distiller("cc", shape_spec([], []), feat_dim=2, correlation="gaussian"))
    loss = cc(out(embedding=torch.tensor(CC_S)), out(embedding=torch.tensor(CC_T)), {})
    assert loss.item() == pytest.approx(expected, rel=1e-5)


class Scale(nn.Module):
    """x -> factor * x: a stand-in for a trained paraphraser or translator with a known output."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return self.factor * x


FT_S = [[[1.0, 2.0], [2.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]]  # two samples, each [channel][position]
FT_T = [[[2.0, 2.0], [1.0, 0.0]], [[3.0, 0.0], [0.0, 4.0]]]


def ft_with_identity_factors(**params):
    """FT whose translator and paraphraser encoder are the identity and whose paraphraser triples its input."""
    ft = build_distiller("ft", shape_spec([(2, 1, 2)], [(2, 1, 2)]), rate=1.0, **params)
    ft.translator, ft.paraphraser = Scale(1.0), Scale(3.0)
    ft.paraphraser.encoder = Scale(1.0)
    return ft


def unit(values):
    """A list scaled to unit Euclidean norm."""
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


@pytest.mark.parametrize("form", ["attention", "flat"])
def test_ft_is_the_mean_absolute_difference_of_unit_factors(form):
    def factor(sample):  # attention (default): mean over channels of squares per position; flat: every entry
        if form == "attention":
            return unit([sum(c[i] ** 2 for c in sample) / len(sample) for i in range(len(sample[0]))])
        return unit([v for channel in sample for v in channel])

    pairs = [(a, b) for x, y in zip(FT_S, FT_T) for a, b in zip(factor(x), factor(y))]
    expected = sum(abs(a - b) for a, b in pairs) / len(pairs)
    ft = ft_with_identity_factors(**({} if form == "attention" else {"factor_form": "flat"}))
    s_map, t_map = torch.tensor(FT_S).unsqueeze(2), torch.tensor(FT_T).unsqueeze(2)  # (2, 2, 1, 2)
    assert ft(out([s_map]), out([t_map]), {}).item() == pytest.approx(expected, rel=1e-6)


def test_ft_init_loss_is_the_paraphrasers_reconstruction_mse():
    ft = ft_with_identity_factors()
    s_map, t_map = torch.tensor(FT_S).unsqueeze(2), torch.tensor(FT_T).unsqueeze(2)
    # MSE between paraphraser(t) = 3 t and t, i.e. the mean of (2 t)^2
    expected = sum((2 * v) ** 2 for sample in FT_T for channel in sample for v in channel) / 8
    assert ft.init_loss(out([s_map]), out([t_map]), {}).item() == pytest.approx(expected, rel=1e-6)


def test_fsp_init_loss_sums_the_mse_of_every_consecutive_pair_of_fsp_matrices():
    # Maps: stem (1, 1x2), stage 1 (1, 1x2), stage 2 (2, 1x1): stage 1 is pooled to 1x1 for the second pair.
    def fsp(bottom, top):  # [channel][position] lists of the same size -> [C_bottom][C_top]
        return [[sum(a * b for a, b in zip(cb, ct)) / len(cb) for ct in top] for cb in bottom]

    def loss_of(f0, f1, f2):
        f1_pooled = [[sum(c) / len(c)] for c in f1]
        return fsp(f0, f1), fsp(f1_pooled, f2)

    s = ([[1.0, 2.0]], [[3.0, 4.0]], [[5.0], [-1.0]])
    t = ([[0.0, 1.0]], [[2.0, 2.0]], [[1.0], [2.0]])
    expected = 0.0
    for g_s, g_t in zip(loss_of(*s), loss_of(*t)):
        entries = [(a - b) ** 2 for rs, rt in zip(g_s, g_t) for a, b in zip(rs, rt)]
        expected += sum(entries) / len(entries)
    as_maps = lambda f: [maps(*[[c] for c in stage]) for stage in f]  # noqa: E731
    spec = shape_spec([(1, 1, 2), (1, 1, 2), (2, 1, 1)], [(1, 1, 2), (1, 1, 2), (2, 1, 1)])
    fsp_loss = build_distiller("fsp", spec, keep_after_init=True)
    assert fsp_loss.init_loss(out(as_maps(s)), out(as_maps(t)), {}).item() == pytest.approx(expected, rel=1e-6)
    assert fsp_loss(out(as_maps(s)), out(as_maps(t)), {}).item() == pytest.approx(expected, rel=1e-6)


def test_ab_init_loss_weights_stages_divides_by_batch_and_scales_by_3e_3():
    # Three pre-activation maps of equal shape: identity connectors, pairs (s1, t1) and (s2, t2) with stage
    # weights 1/2 and 1. Two samples, so the per-stage sums are divided by 2. Margin 0.5.
    margin = 0.5

    def boundary(source, target):
        return sum(max(0.0, margin - s) ** 2 if t > 0 else max(0.0, margin + s) ** 2 for s, t in zip(source, target))

    s1, t1 = [[0.2, -1.0], [1.0, 0.0]], [[1.0, 1.0], [-1.0, 2.0]]  # [sample][position]
    s2, t2 = [[2.0, -0.3], [0.1, -2.0]], [[-1.0, 1.0], [1.0, -1.0]]
    expected = 3e-3 * sum(w * sum(boundary(a, b) for a, b in zip(s, t)) / 2
                          for w, s, t in ((0.5, s1, t1), (1.0, s2, t2)))
    as_map = lambda rows: torch.tensor(rows).view(2, 1, 1, 2)  # noqa: E731
    stem = torch.zeros(2, 1, 1, 2)
    ab = build_distiller("ab", shape_spec([(1, 1, 2)] * 3, [(1, 1, 2)] * 3), margin=margin)
    s_out = {"preact_features": [stem, as_map(s1), as_map(s2)], "logits": torch.zeros(2, 2)}
    t_out = {"preact_features": [stem, as_map(t1), as_map(t2)]}
    assert ab.init_loss(s_out, t_out, {}).item() == pytest.approx(expected, rel=1e-6)


def test_nst_forward_sums_the_mmd_over_paired_stages():
    # Pairs (s1, t1), (s2, t2) of 1x2 maps; channels normalised, kernel (x.y)^2, means over channel pairs.
    def mmd(s, t):
        unit = lambda v: [x / math.hypot(*v) for x in v]  # noqa: E731
        s, t = [unit(c) for c in s], [unit(c) for c in t]
        k = lambda a, b: sum(x * y for x, y in zip(a, b)) ** 2  # noqa: E731
        mean = lambda xs, ys: sum(k(a, b) for a in xs for b in ys) / (len(xs) * len(ys))  # noqa: E731
        return mean(t, t) + mean(s, s) - 2 * mean(s, t)

    s1, t1 = [[1.0, 2.0]], [[1.0, 0.0], [1.0, 1.0]]
    s2, t2 = [[0.0, 1.0], [3.0, 1.0]], [[2.0, -1.0]]
    expected = mmd(s1, t1) + mmd(s2, t2)
    nst = build_distiller("nst", shape_spec([(1, 1, 2), (1, 1, 2), (2, 1, 2)], [(1, 1, 2), (2, 1, 2), (1, 1, 2)]))
    stem = torch.zeros(1, 1, 1, 2)
    as_map = lambda channels: maps(*[[c] for c in channels])  # noqa: E731
    loss = nst(out([stem, as_map(s1), as_map(s2)]), out([stem, as_map(t1), as_map(t2)]), {})
    assert loss.item() == pytest.approx(expected, rel=1e-6)


# Where each registered distiller's whole loss is compared with an independently computed value.
VALUE_TESTS = {
    "ab": "test_distiller_values.py::test_ab_init_loss_weights_stages_divides_by_batch_and_scales_by_3e_3",
    "at": "test_distiller_values.py::test_at_sums_every_paired_stage_and_pools_the_larger_map",
    "cc": "test_distiller_values.py::test_cc_default_loss_is_the_mean_product_of_consecutive_samples_absolute_differences",
    "ce": "test_distillers.py::test_ce_ignores_unlabelled_samples_and_is_zero_without_labels",
    "crd": "test_crd.py::test_default_crd_matches_the_reference_over_24_training_steps",
    "fitnet": "test_distiller_values.py::test_fitnet_is_the_mean_squared_error_of_the_regressed_hint",
    "fsp": "test_distiller_values.py::test_fsp_init_loss_sums_the_mse_of_every_consecutive_pair_of_fsp_matrices",
    "ft": "test_distiller_values.py::test_ft_is_the_mean_absolute_difference_of_unit_factors",
    "kd": "test_distillers.py::test_kd_matches_hand_computed_kl_times_t_squared_and_is_zero_for_identical_logits",
    "nst": "test_distiller_values.py::test_nst_forward_sums_the_mmd_over_paired_stages",
    "pkt": "test_distillers.py::test_pkt_matches_plain_python_and_is_zero_for_identical_embeddings",
    "rkd": "test_distillers.py::test_rkd_distance_and_angle_terms_match_plain_python_on_three_points",
    "sp": "test_distillers.py::test_sp_matches_hand_value_and_is_zero_for_identical_features",
    "vid": "test_distillers.py::test_vid_starts_at_the_given_variance_and_matches_the_gaussian_nll",
}


def test_every_registered_distiller_has_a_value_test():
    """A new distiller must come with a test of its value (and be listed above)."""
    assert sorted(VALUE_TESTS) == list_distillers()
    here = Path(__file__).parent
    for name, where in VALUE_TESTS.items():
        file, test = where.split("::")
        assert f"def {test}(" in (here / file).read_text(), f"{name}: {where} not found"
