"""The distillers other than CRD: values computed by hand, zeros where theory says so, gradients, registry."""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from crossmodal.errors import ConfigError
from crossmodal.losses import DistillSpec, build_distiller, get_distiller, list_distillers, output_shapes
from crossmodal.losses.ab import boundary_loss, connector
from crossmodal.losses.at import attention_map
from crossmodal.losses.cc import consecutive_correlation_loss, rbf_correlation
from crossmodal.losses.fitnet import hint_regressor
from crossmodal.losses.fsp import fsp_matrix
from crossmodal.losses.ft import normalized_factor
from crossmodal.losses.kd import KnowledgeDistillation
from crossmodal.losses.nst import polynomial_mmd
from crossmodal.losses.pkt import cosine_conditional_probabilities
from crossmodal.losses.rkd import normalized_distances, pairwise_distances
from crossmodal.losses.stages import last_stages, pool_to_smaller

torch.set_num_threads(1)

OURS = ["ab", "at", "cc", "ce", "fitnet", "fsp", "ft", "kd", "nst", "pkt", "rkd", "sp", "vid"]


class TinyNet(nn.Module):
    """A few-conv network honouring the model output contract (stem first, preact before the ReLU)."""

    def __init__(self, widths: tuple[int, ...], in_chans: int = 3, num_classes: int = 5):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, widths[0], 3, padding=1)
        self.stages = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(widths, widths[1:]))
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        features, preact = [], []
        for layer in [self.stem, *self.stages]:
            preact.append(layer(x if not features else features[-1]))
            features.append(F.relu(preact[-1]))
        embedding = features[-1].mean((2, 3))
        return {"logits": self.fc(embedding), "features": features, "preact_features": preact, "embedding": embedding}


def make_spec(student, teacher, size=16, in_s=3, in_t=3, n=6):
    """DistillSpec of two models via the public output_shapes helper."""
    return DistillSpec(output_shapes(student, in_s, size), output_shapes(teacher, in_t, size), n, 5)


@pytest.fixture
def pair():
    """Student (1-channel input, 3 maps 16/8/4) and deeper, wider teacher (3-channel input, 4 maps 16/8/4/2)."""
    torch.manual_seed(0)
    student, teacher = TinyNet((4, 8, 16), in_chans=1), TinyNet((8, 16, 32, 32))
    spec = make_spec(student, teacher, in_s=1)
    batch = {"L": torch.randn(6, 1, 16, 16), "rgb": torch.randn(6, 3, 16, 16),
             "label": torch.tensor([0, 1, 2, 3, 4, -1]), "index": torch.arange(6)}
    with torch.no_grad():
        t_out = teacher(batch["rgb"])
    return student, teacher, spec, batch, t_out


def out(features=None, logits=None, embedding=None, preact=None):
    """A model output dict with only the fields a test needs."""
    return {"features": features, "logits": logits, "embedding": embedding, "preact_features": preact}


def all_nonzero_grads(params) -> bool:
    """True if every parameter received a gradient with a non-zero entry."""
    params = list(params)
    return bool(params) and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def smooth_l1(a: float, b: float) -> float:
    """Huber loss with beta 1 on two numbers, in plain Python."""
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


# ---------------------------------------------------------------- every distiller on a real pair of models

@pytest.mark.parametrize("name", [n for n in OURS if n not in ("fsp",)])
def test_loss_is_finite_scalar_and_trains_student_and_own_parameters(name, pair):
    student, _, spec, batch, t_out = pair
    distiller = build_distiller(name, spec)
    s_out = student(batch["L"])
    objective = distiller.init_loss if name == "ab" else distiller.forward  # ab transfers in its init stage
    loss = objective(s_out, [t_out] if distiller.combines_teachers else t_out, batch)
    assert loss.shape == () and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    trained = [p for n, p in distiller.named_parameters() if not n.startswith("paraphraser.")]
    if trained:
        assert all_nonzero_grads(trained), [n for n, p in distiller.named_parameters() if p.grad is None]


@pytest.mark.parametrize("name", ["sp", "pkt", "rkd", "nst"])
def test_relation_losses_keep_float32_products_under_autocast(name, pair):
    student, _, spec, batch, t_out = pair
    with torch.no_grad():
        s_out = student(batch["L"])
    distiller = build_distiller(name, spec)
    reference = distiller(s_out, t_out, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 Gram matrices would be off by ~1e-2
        mixed = distiller(s_out, t_out, batch)
    assert mixed.dtype == torch.float32 and mixed.item() == pytest.approx(reference.item(), rel=1e-5)


def test_default_weights_are_the_reference_betas():
    expected = {"ce": 1, "kd": 0.9, "fitnet": 100, "at": 1000, "sp": 3000, "cc": 0.02, "vid": 1, "rkd": 1,
                "pkt": 30000, "ab": 1, "ft": 200, "fsp": 50, "nst": 50}
    assert {name: get_distiller(name).default_weight for name in expected} == pytest.approx(expected)
    assert set(OURS) <= set(list_distillers())


def test_every_registered_distiller_declares_its_own_default_weight():
    from crossmodal.losses.base import DISTILLERS, Distiller

    # Distiller's fallback 1.0 would silently replace a method's reference weight (crd: 0.8).
    missing = [name for name, cls in DISTILLERS.items()
               if not any("default_weight" in vars(k) for k in cls.__mro__ if k is not Distiller)]
    assert not missing, f"classes that inherit Distiller's fallback default_weight: {missing}"


def test_build_distiller_rejects_unknown_parameter_and_name_with_suggestion(pair):
    spec = pair[2]
    with pytest.raises(ConfigError, match="no parameter 'temprature'; did you mean 'temperature'"):
        build_distiller("kd", spec, temprature=4)
    with pytest.raises(ConfigError, match="unknown loss 'rkdd'; did you mean 'rkd'"):
        build_distiller("rkdd", spec)
    with pytest.raises(ConfigError, match="has no parameter 'p'.*accepted: none"):
        build_distiller("sp", spec, p=2)


def test_registry_messages_are_whole_and_every_class_knows_its_name():
    from crossmodal.losses.base import DISTILLERS, register_distiller

    assert all(cls.name == name for name, cls in DISTILLERS.items())
    with pytest.raises(ValueError) as error:
        register_distiller("kd")(type("KDAgain", (), {}))
    assert str(error.value) == "distiller 'kd' registered twice"
    plain = type("Plain", (), {})  # the engine reads init_epochs and init_trains_student from Distiller
    with pytest.raises(TypeError, match=r"^distiller 'plain': <class '.*Plain'> is not a subclass of "
                                        r"crossmodal.losses.Distiller$"):
        register_distiller("plain")(plain)
    assert "plain" not in DISTILLERS
    with pytest.raises(ConfigError) as error:  # no config key given: no prefix
        get_distiller("zzz")
    assert str(error.value) == f"unknown loss 'zzz' (known: {', '.join(list_distillers())})"
    with pytest.raises(ConfigError) as error:
        build_distiller("pkt", None, epsilon=1.0)
    assert str(error.value) == "loss 'pkt' has no parameter 'epsilon'; did you mean 'eps'? (accepted: eps, exclude_self)"


def test_stage_pairing_aligns_the_deepest_stages_and_needs_one_after_the_stem():
    assert last_stages(["s0", "s1", "s2"], ["t0", "t1", "t2", "t3"], "at") == [("s1", "t2"), ("s2", "t3")]
    with pytest.raises(ConfigError, match="'vid' needs at least one stage after the stem"):
        last_stages(["s0"], ["t0", "t1"], "vid")


# ---------------------------------------------------------------- ce

def test_ce_ignores_unlabelled_samples_and_is_zero_without_labels():
    logits = torch.tensor([[2.0, 0.0, -1.0], [5.0, 1.0, 0.0], [0.5, 0.5, 3.0]], requires_grad=True)
    ce = build_distiller("ce", None)

    def nll(row, y):
        return -(row[y] - math.log(sum(math.exp(v) for v in row)))

    rows = logits.tolist()
    loss = ce(out(logits=logits), None, {"label": torch.tensor([0, -1, 2])})
    assert loss.item() == pytest.approx((nll(rows[0], 0) + nll(rows[2], 2)) / 2, rel=1e-6)
    none = ce(out(logits=logits), None, {"label": torch.tensor([-1, -1, -1])})
    none.backward()
    assert none.item() == 0.0 and torch.all(logits.grad == 0)
    assert ce.needs_teacher is False


def test_ce_label_smoothing_mixes_in_the_uniform_target():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    ce = build_distiller("ce", None, label_smoothing=0.3)
    smoothed = ce(out(logits=logits), None, {"label": torch.tensor([0, -1])})
    row = logits[0].tolist()
    log_z = math.log(sum(math.exp(v) for v in row))
    expected = 0.7 * (log_z - row[0]) + 0.3 * sum(log_z - v for v in row) / 3
    assert smoothed.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ConfigError, match="label_smoothing must be in"):
        build_distiller("ce", None, label_smoothing=1.5)


# ---------------------------------------------------------------- kd

def softmax(row, t):
    """Softmax of a list at temperature t, in plain Python."""
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def kl(p, q):
    """KL(p || q) of two lists, in plain Python."""
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_kd_matches_hand_computed_kl_times_t_squared_and_is_zero_for_identical_logits():
    s = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    t = [[3.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    kd = build_distiller("kd", None)
    loss = kd(out(logits=torch.tensor(s)), [out(logits=torch.tensor(t))], {})
    expected = 16 * sum(kl(softmax(tr, 4), softmax(sr, 4)) for sr, tr in zip(s, t)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert kd(out(logits=torch.tensor(s)), out(logits=torch.tensor(s)), {}).item() == pytest.approx(0, abs=1e-6)


def test_kd_combines_two_teachers_by_averaging_their_probabilities():
    s, t1, t2 = [[1.0, 2.0, 0.5]], [[3.0, 0.0, 1.0]], [[-2.0, 4.0, 0.0]]
    kd = build_distiller("kd", None, temperature=2.0)
    assert kd.combines_teachers
    loss = kd(out(logits=torch.tensor(s)), [out(logits=torch.tensor(t1)), out(logits=torch.tensor(t2))], {})
    mixture = [(a + b) / 2 for a, b in zip(softmax(t1[0], 2), softmax(t2[0], 2))]
    assert loss.item() == pytest.approx(4 * kl(mixture, softmax(s[0], 2)), rel=1e-5)
    mean_of_losses = 2 * (kl(softmax(t1[0], 2), softmax(s[0], 2)) + kl(softmax(t2[0], 2), softmax(s[0], 2)))
    assert loss.item() < mean_of_losses  # convexity: one averaged target, not two competing ones


def test_kd_temperature_must_be_positive_and_any_positive_one_is_used():
    for bad in (0, -1.5):
        with pytest.raises(ConfigError) as error:
            build_distiller("kd", None, temperature=bad)
        assert str(error.value) == f"loss 'kd': temperature must be > 0, got {bad}"
    s, t = [[1.0, 2.0, 0.5]], [[3.0, 0.0, 1.0]]
    for temperature in (0.5, 1.0):  # just above the bound, and below the default 4 as the references never go
        kd = build_distiller("kd", None, temperature=temperature)
        loss = kd(out(logits=torch.tensor(s)), out(logits=torch.tensor(t)), {})
        expected = temperature**2 * kl(softmax(t[0], temperature), softmax(s[0], temperature))
        assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_kd_needs_the_teachers_classes_and_says_so_whole():
    student, teacher = TinyNet((4, 8)), TinyNet((4, 8), num_classes=7)
    spec = make_spec(student, teacher)
    with pytest.raises(ConfigError) as error:
        build_distiller("kd", spec)
    assert str(error.value) == ("loss 'kd': the teacher predicts 7 classes, the student 5; "
                                "KD needs the same classes (use crd, which compares embeddings)")
    with pytest.raises(ConfigError):
        KnowledgeDistillation.check_spec(spec)  # the check distill runs on every teacher of an ensemble
    same = make_spec(student, TinyNet((8, 16, 32)))
    assert KnowledgeDistillation.check_spec(same) is None
    assert build_distiller("kd", same).temperature == 4.0


def test_kd_names_the_softmax_dimension_and_warns_nothing():
    # A softmax without dim= is the same on (B, n) logits but warns "Implicit dimension choice" at every step.
    s, t = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]), torch.tensor([[3.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    kd = build_distiller("kd", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one = kd(out(logits=s), out(logits=t), {})
        two = kd(out(logits=s), [out(logits=t), out(logits=s)], {})
    assert torch.isfinite(one) and torch.isfinite(two)


# ---------------------------------------------------------------- at, sp, nst (feature maps)

def test_at_matches_explicit_sums_and_pools_the_larger_map():
    # One stage after the stem; maps (B=1, C=2, H=1, W=2).
    s = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])
    t = torch.tensor([[[[0.0, 1.0]], [[1.0, 1.0]]]])
    q_s = [(1 + 9) / 2, (4 + 0) / 2]  # mean over channels of squares, per position
    q_t = [(0 + 1) / 2, (1 + 1) / 2]
    n_s, n_t = math.hypot(*q_s), math.hypot(*q_t)
    expected = sum((a / n_s - b / n_t) ** 2 for a, b in zip(q_s, q_t)) / 2
    stem = torch.zeros(1, 1, 1, 2)
    shapes = output_shapes(TinyNet((2, 2)), 3, 4)  # stem + one stage, like the maps above
    spec = DistillSpec(shapes, shapes, 1, 2)
    at = build_distiller("at", spec)
    assert at(out([stem, s]), out([stem, t]), {}).item() == pytest.approx(expected, rel=1e-6)
    assert at(out([stem, s]), out([stem, s]), {}).item() == 0.0
    big = torch.rand(1, 3, 4, 4)
    assert at(out([stem, big]), out([stem, t.repeat(1, 1, 2, 1)]), {}).item() == pytest.approx(
        at(out([stem, F.avg_pool2d(big, 2)]), out([stem, t.repeat(1, 1, 2, 1)]), {}).item(), rel=1e-6)


def test_attention_map_by_hand_for_p_1_2_3_and_normalised_per_sample():
    # (B=2, C=2, H=1, W=2) with negative entries, so |f|^p and f^p differ for odd p.
    samples = [[[1.0, -2.0], [-3.0, 0.0]], [[0.5, 1.0], [2.0, -1.0]]]  # [sample][channel][position]
    feature = torch.tensor(samples).unsqueeze(2)

    def by_hand(p):
        rows = []
        for channels in samples:
            q = [sum(abs(c[i]) ** p for c in channels) / len(channels) for i in range(2)]
            norm = math.sqrt(sum(v * v for v in q))
            rows.append([v / norm for v in q])
        return rows

    for p in (1.0, 2.0, 3.0):
        assert attention_map(feature, p).tolist() == [pytest.approx(row, rel=1e-6) for row in by_hand(p)], p
    assert attention_map(feature).tolist() == [pytest.approx(row, rel=1e-6) for row in by_hand(2)]  # p = 2 default


def test_at_p_must_be_positive_and_stage_errors_name_at():
    shapes = output_shapes(TinyNet((2, 2)), 3, 4)  # stem + one stage
    spec = DistillSpec(shapes, shapes, 1, 2)
    for bad in (0, -2.0):
        with pytest.raises(ConfigError) as error:
            build_distiller("at", spec, p=bad)
        assert str(error.value) == f"loss 'at': p must be > 0, got {bad}"
    assert [build_distiller("at", spec, p=p).p for p in (0.5, 1)] == [0.5, 1.0]  # just above 0, and 1
    stem_only = output_shapes(TinyNet((2,)), 3, 4)
    with pytest.raises(ConfigError) as error:
        build_distiller("at", DistillSpec(stem_only, shapes, 1, 2))
    assert str(error.value) == ("loss 'at' needs at least one stage after the stem in both models "
                                "(student has 1 feature maps, teacher 2)")
    at, stem = build_distiller("at", spec), torch.zeros(1, 2, 4, 4)
    with pytest.raises(ConfigError) as error:  # outputs with fewer maps than the spec promised
        at(out([stem]), out([stem, stem]), {})
    assert str(error.value) == ("loss 'at' needs at least one stage after the stem in both models "
                                "(student has 1 feature maps, teacher 2)")


def test_sp_matches_hand_value_and_is_zero_for_identical_features(pair):
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 2, 1, 1)  # G_s = identity
    t = torch.tensor([[1.0, 1.0], [1.0, 1.0]]).view(2, 2, 1, 1)  # G_t rows all 1/sqrt(2) after normalising
    r = 1 / math.sqrt(2)
    sp = build_distiller("sp", pair[2])
    assert sp(out([s]), out([t]), {}).item() == pytest.approx(2 * ((1 - r) ** 2 + r**2) / 4, rel=1e-6)
    f = torch.randn(4, 3, 2, 2)
    assert sp(out([f]), out([f]), {}).item() == pytest.approx(0, abs=1e-7)


def test_nst_polynomial_mmd_by_hand_and_zero_for_identical_maps(pair):
    s = torch.tensor([[1.0, 0.0]]).view(1, 1, 1, 2)
    t = torch.tensor([[1.0, 0.0], [0.0, 3.0]]).view(1, 2, 1, 2)  # normalised channels e1, e2
    # k_ss = 1, k_tt = mean([[1, 0], [0, 1]]) = 0.5, k_st = mean([1, 0]) = 0.5
    assert polynomial_mmd(s, t).item() == pytest.approx(1 + 0.5 - 2 * 0.5)
    student, _, spec, batch, _ = pair
    s_out = student(batch["L"])
    nst = build_distiller("nst", make_spec(student, student, in_s=1, in_t=1))
    assert nst(s_out, s_out, batch).item() == pytest.approx(0, abs=1e-6)


# ---------------------------------------------------------------- rkd, pkt, cc (embeddings)

def test_rkd_distance_and_angle_terms_match_plain_python_on_three_points():
    s_pts, t_pts = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)], [(0.0, 0.0), (1.0, 0.0), (2.0, 0.0)]

    def distances(p):
        d = [[math.dist(a, b) for b in p] for a in p]
        mu = sum(map(sum, d)) / 6  # mean over the 6 ordered pairs i != j
        return [[v / mu for v in row] for row in d]

    def cosines(p):
        def unit(a, b):
            v = (a[0] - b[0], a[1] - b[1])
            n = math.hypot(*v)
            return (v[0] / n, v[1] / n) if n else (0.0, 0.0)
        return [unit(p[i], p[j])[0] * unit(p[k], p[j])[0] + unit(p[i], p[j])[1] * unit(p[k], p[j])[1]
                for j in range(3) for i in range(3) for k in range(3)]

    d_s, d_t = distances(s_pts), distances(t_pts)
    distance = sum(smooth_l1(d_s[i][j], d_t[i][j]) for i in range(3) for j in range(3)) / 9
    angle = sum(smooth_l1(a, b) for a, b in zip(cosines(s_pts), cosines(t_pts))) / 27
    s, t = out(embedding=torch.tensor(s_pts)), out(embedding=torch.tensor(t_pts))
    assert build_distiller("rkd", None, angle_weight=0)(s, t, {}).item() == pytest.approx(25 * distance, rel=1e-5)
    assert build_distiller("rkd", None, distance_weight=0)(s, t, {}).item() == pytest.approx(50 * angle, rel=1e-5)
    scaled = out(embedding=3 * torch.tensor(s_pts) + 1)  # relations ignore scale and translation
    assert build_distiller("rkd", None)(s, scaled, {}).item() == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_pkt_matches_plain_python_and_is_zero_for_identical_embeddings(exclude_self):
    s_pts, t_pts = [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)], [(1.0, 0.0), (-1.0, 0.0), (0.0, 1.0)]

    def conditional(p):  # the reference keeps each sample in its own row; the paper's form drops it
        k = [[(1 + (a[0] * b[0] + a[1] * b[1]) / (math.hypot(*a) * math.hypot(*b))) / 2
              if i != j or not exclude_self else 0.0 for j, b in enumerate(p)] for i, a in enumerate(p)]
        return [[v / sum(row) for v in row] for row in k]

    p_s, p_t = conditional(s_pts), conditional(t_pts)
    eps = 1e-7
    expected = sum(p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps))
                   for i in range(3) for j in range(3)) / (6 if exclude_self else 9)
    pkt = build_distiller("pkt", None, exclude_self=exclude_self)
    s, t = out(embedding=torch.tensor(s_pts)), out(embedding=torch.tensor(t_pts))
    assert pkt(s, t, {}).item() == pytest.approx(expected, rel=1e-4)
    assert pkt(s, s, {}).item() == pytest.approx(0, abs=1e-7)


def pkt_conditional_by_hand(points, eps, exclude_self):
    """Rows p_{.|j}: cosine kernel of x / (|x| + eps), diagonal dropped if exclude_self, each row divided by its
    sum (plus eps when the diagonal is dropped), in plain Python."""
    unit = [[v / (math.hypot(*x) + eps) for v in x] for x in points]
    k = [[(1 + sum(a * b for a, b in zip(u, w))) / 2 if i != j or not exclude_self else 0.0
          for j, w in enumerate(unit)] for i, u in enumerate(unit)]
    return [[v / (sum(row) + (eps if exclude_self else 0.0)) for v in row] for row in k]


def test_pkt_conditional_rows_by_hand_with_a_large_eps_and_the_reference_defaults():
    points = [(3.0, 0.0), (0.0, 1.0), (1.0, 2.0)]  # lengths differ, so eps = 0.5 scales each differently
    x = torch.tensor(points)
    for exclude_self in (False, True):
        rows = cosine_conditional_probabilities(x, 0.5, exclude_self).tolist()
        assert rows == [pytest.approx(r, rel=1e-6) for r in pkt_conditional_by_hand(points, 0.5, exclude_self)]
    default = cosine_conditional_probabilities(x, 1e-7)  # the reference's: the sample stays in its own row
    assert default.tolist() == [pytest.approx(r, rel=1e-6) for r in pkt_conditional_by_hand(points, 1e-7, False)]
    assert default.sum(1).tolist() == pytest.approx([1.0, 1.0, 1.0])  # rows, not columns, are distributions
    s, t = out(embedding=x), out(embedding=torch.tensor([(1.0, 0.0), (-1.0, 0.0), (0.0, 1.0)]))
    pkt = build_distiller("pkt", None)
    assert pkt.exclude_self is False and pkt.eps == 1e-7
    assert pkt(s, t, {}).item() == build_distiller("pkt", None, exclude_self=False, eps=1e-7)(s, t, {}).item()


def test_pkt_eps_must_be_positive():
    for bad in (0, -1e-7):
        with pytest.raises(ConfigError) as error:
            build_distiller("pkt", None, eps=bad)
        assert str(error.value) == f"loss 'pkt': eps must be > 0, got {bad}"
    assert build_distiller("pkt", None, eps=1e-12).eps == 1e-12


def test_cc_default_is_the_mean_product_of_consecutive_samples_differences():
    z_s, z_t = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, 3.0]]), torch.tensor([[0.0, 0.0], [2.0, 1.0], [1.0, 0.0]])
    # |d| rows: (1, 2), (2, 0), (2, 3); consecutive products: 1*2 + 2*0 = 2 and 2*2 + 0*3 = 4
    assert consecutive_correlation_loss(z_s, z_t).item() == pytest.approx(3.0)
    assert build_distiller("cc", make_spec(TinyNet((2, 4)), TinyNet((2, 8)))).correlation == "consecutive"


def test_cc_correlation_is_the_taylor_series_of_the_gaussian_kernel():
    z = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=1)  # cosine 0.6
    c, g = 0.6, 0.4
    correlation = rbf_correlation(z, gamma=g, order=2)
    taylor = math.exp(-2 * g) * (1 + 2 * g * c + (2 * g * c) ** 2 / 2)
    assert correlation[0, 1].item() == pytest.approx(taylor, rel=1e-6)
    exact = math.exp(-g * (2 - 2 * c))  # exp(-gamma ||x - y||^2) for unit vectors
    assert rbf_correlation(z, gamma=g, order=12)[0, 1].item() == pytest.approx(exact, rel=1e-6)


# ---------------------------------------------------------------- fitnet, vid (regressors)

@pytest.mark.parametrize("s_shape, t_shape", [((4, 8, 8), (6, 8, 8)), ((4, 8, 8), (6, 4, 4)),
                                              ((4, 8, 8), (6, 5, 5)), ((4, 4, 4), (6, 8, 8))])
def test_fitnet_regressor_reaches_the_teacher_shape(s_shape, t_shape):
    assert hint_regressor(s_shape, t_shape)(torch.randn(2, *s_shape)).shape == (2, *t_shape)


@pytest.mark.parametrize("s_shape, t_shape, kind, kernel, stride, padding", [
    ((4, 8, 8), (6, 8, 8), nn.Conv2d, (1, 1), (1, 1), (0, 0)),  # same size: 1x1
    ((4, 8, 8), (6, 4, 4), nn.Conv2d, (3, 3), (2, 2), (1, 1)),  # twice the size: 3x3, stride 2 (not a 5x5)
    ((4, 8, 6), (6, 5, 4), nn.Conv2d, (4, 3), (1, 1), (0, 0)),  # larger, not twice: one valid conv per axis
    ((4, 8, 6), (6, 8, 4), nn.Conv2d, (1, 3), (1, 1), (0, 0)),  # equal height, larger width
    ((4, 6, 8), (6, 4, 8), nn.Conv2d, (3, 1), (1, 1), (0, 0)),  # larger height, equal width
    ((4, 4, 4), (6, 8, 8), nn.ConvTranspose2d, (4, 4), (2, 2), (1, 1)),  # half the size: 4x4 transposed, stride 2
])
def test_fitnet_regressor_is_the_reference_conv_of_each_size_rule(s_shape, t_shape, kind, kernel, stride, padding):
    """The reference's hint regressor (ConvReg): which conv, with which kernel, stride and padding, for each rule;
    then BN and ReLU. An 8 -> 4 map reaches the right shape by either of two convs, so the shape alone cannot
    tell them apart."""
    regressor = hint_regressor(s_shape, t_shape)
    conv, bn, relu = regressor
    assert type(conv) is kind and (conv.in_channels, conv.out_channels) == (s_shape[0], t_shape[0])
    assert (conv.kernel_size, conv.stride, conv.padding) == (kernel, stride, padding)
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == t_shape[0] and isinstance(relu, nn.ReLU)
    assert regressor(torch.randn(2, *s_shape)).shape == (2, *t_shape)


def test_fitnet_hint_layer_counts_from_either_end(pair):
    """hint_layer indexes the feature maps like a Python list: -n is the first map both models have; -n - 1 and n
    are out."""
    spec = pair[2]
    n = min(len(spec.student.features), len(spec.teacher.features))
    assert build_distiller("fitnet", spec, hint_layer=-n).hint_layer == -n
    for outside in (-n - 1, n):
        with pytest.raises(ConfigError, match=f"hint_layer {outside} is out of range"):
            build_distiller("fitnet", spec, hint_layer=outside)


def test_fitnet_rejects_impossible_hint_shapes_and_layers(pair):
    with pytest.raises(ConfigError, match="cannot regress a 8x4 student hint to a 4x8 teacher hint; choose a "
                                          "hint_layer where the student map is at least as large or exactly half"):
        hint_regressor((4, 8, 4), (6, 4, 8))  # larger along one axis, smaller along the other
    with pytest.raises(ConfigError, match="cannot regress a 4x4 student hint to a 7x7"):
        hint_regressor((4, 4, 4), (6, 7, 7))
    with pytest.raises(ConfigError, match="hint_layer 5 is out of range"):
        build_distiller("fitnet", pair[2], hint_layer=5)


def test_vid_starts_at_the_given_variance_and_matches_the_gaussian_nll(pair):
    student, _, spec, batch, t_out = pair
    vid = build_distiller("vid", spec, init_pred_var=5.0)
    for regressor in vid.regressors:  # predict mean 0, so the loss is 0.5 (t^2 / 5 + log 5) per element
        nn.init.zeros_(regressor.mean[-1].weight)
    s_out = student(batch["L"])
    # The teacher's last two maps (4x4, 2x2) pair with the student's larger 8x8, 4x4 (pooled down).
    expected = sum(0.5 * (t.pow(2).mean() / 5.0 + math.log(5.0)) for t in t_out["features"][-2:])
    assert vid(s_out, t_out, batch).item() == pytest.approx(expected.item(), rel=1e-5)


# ---------------------------------------------------------------- ab, fsp, ft (init stages)

def test_ab_boundary_loss_by_hand_and_init_stage_only_by_default(pair):
    source, target = torch.tensor([2.0, 0.5, -0.5, -2.0]), torch.tensor([1.0, 1.0, -1.0, -1.0])
    assert boundary_loss(source, target, margin=1.0).item() == pytest.approx(0.5**2 + 0.5**2)
    student, _, spec, batch, t_out = pair
    ab = build_distiller("ab", spec)
    assert ab.init_epochs == 30 and ab.init_trains_student
    assert {id(p) for p in ab.init_parameters()} == {id(p) for p in ab.connectors.parameters()}
    s_out = student(batch["L"])
    assert ab(s_out, t_out, batch).item() == 0.0
    kept = build_distiller("ab", spec, keep_after_init=True, init_epochs=5)
    kept.load_state_dict(ab.state_dict())
    assert kept.init_epochs == 5
    assert kept(s_out, t_out, batch).item() == pytest.approx(ab.init_loss(s_out, t_out, batch).item())


def test_fsp_matrix_by_hand_needs_matching_channels_and_trains_the_student(pair):
    bottom, top = torch.tensor([1.0, 2.0]).view(1, 1, 1, 2), torch.tensor([3.0, 4.0]).view(1, 1, 1, 2)
    assert fsp_matrix(bottom, top).tolist() == [[[5.5]]]  # (1*3 + 2*4) / 2
    student, _, spec, batch, _ = pair
    with pytest.raises(ConfigError, match=r"student has \[4, 8, 16\], teacher \[8, 16, 32, 32\]"):
        build_distiller("fsp", spec)
    teacher = TinyNet((4, 8, 16), in_chans=1)
    fsp = build_distiller("fsp", make_spec(student, teacher, in_s=1, in_t=1))
    s_out = student(batch["L"])
    assert fsp(s_out, teacher(batch["L"]), batch).item() == 0.0  # init stage only, by default
    assert fsp.init_loss(s_out, s_out, batch).item() == 0.0
    loss = fsp.init_loss(s_out, teacher(batch["L"]), batch)
    loss.backward()
    assert loss.item() > 0 and fsp.init_trains_student and fsp.init_parameters() == []
    assert all_nonzero_grads([student.stem.weight, *(s.weight for s in student.stages)])


def test_ft_init_stage_trains_the_paraphraser_and_main_stage_the_translator(pair):
    student, _, spec, batch, t_out = pair
    ft = build_distiller("ft", spec)
    assert not ft.init_trains_student
    assert {id(p) for p in ft.init_parameters()} == {id(p) for p in ft.paraphraser.parameters()}
    ft.init_loss(student(batch["L"]), t_out, batch).backward()
    assert all_nonzero_grads(ft.paraphraser.parameters())
    assert all(p.grad is None for p in [*ft.translator.parameters(), *student.parameters()])
    ft.zero_grad(set_to_none=True)
    ft(student(batch["L"]), t_out, batch).backward()
    assert all_nonzero_grads(ft.translator.parameters())
    assert all(p.grad is None for p in ft.paraphraser.parameters())


def test_ft_factor_is_the_normalised_channel_mean_of_squares_by_default_or_the_flat_factor():
    factor = torch.tensor([[[[3.0, 0.0]], [[1.0, 2.0]]]])  # (B=1, C=2, H=1, W=2)
    assert normalized_factor(factor)[0].tolist() == pytest.approx([5 / math.hypot(5, 2), 2 / math.hypot(5, 2)])
    assert normalized_factor(factor, "flat")[0].tolist() == pytest.approx([v / math.sqrt(14) for v in (3, 0, 1, 2)])


def test_ft_is_zero_when_the_translator_reproduces_the_teachers_factor(pair):
    student, _, _, batch, _ = pair
    s_out = student(batch["L"])
    ft = build_distiller("ft", make_spec(student, student, in_s=1, in_t=1))
    ft.translator = copy.deepcopy(ft.paraphraser.encoder)
    assert ft(s_out, s_out, batch).item() == pytest.approx(0, abs=1e-7)


# ---------------------------------------------------------------- settings, messages and helpers (mutation testing)

def test_pool_to_smaller_by_hand_pools_the_larger_area_and_the_second_map_on_a_tie():
    wide, pair_ = torch.tensor([1.0, 3.0, 2.0, 0.0]).view(1, 1, 1, 4), torch.tensor([5.0, 7.0]).view(1, 1, 1, 2)
    a, b = pool_to_smaller(wide, pair_)  # first larger (1x4 against 1x2): first pooled, second kept
    assert a.tolist() == [[[[2.0, 1.0]]]] and b is pair_
    square = torch.tensor([[1.0, 2.0], [3.0, 6.0]]).view(1, 1, 2, 2)
    a, b = pool_to_smaller(pair_, square)  # second larger (2x2 against 1x2): its column means
    assert a is pair_ and b.tolist() == [[[[2.0, 4.0]]]]
    a, b = pool_to_smaller(square, square.clone())  # same size: both returned as they are
    assert a is square and b.shape == square.shape and torch.equal(b, square)
    column = torch.tensor([1.0, 2.0, 3.0, 6.0]).view(1, 1, 4, 1)
    a, b = pool_to_smaller(wide, column)  # equal areas (1x4, 4x1): the second is pooled to the first's size
    assert a is wide and b.tolist() == [[[[3.0, 3.0, 3.0, 3.0]]]]


def test_ce_label_smoothing_is_refused_at_1_and_below_0_with_the_whole_message():
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError) as error:
            build_distiller("ce", None, label_smoothing=bad)
        assert str(error.value) == f"loss 'ce': label_smoothing must be in [0, 1), got {bad}"
    assert [build_distiller("ce", None, label_smoothing=v).label_smoothing for v in (0, 0.999)] == [0.0, 0.999]


def test_ab_boundary_counts_a_zero_teacher_activation_as_inactive():
    # rho(t) = [t > 0]: at t = 0 the student is pushed below -margin: relu(1 + s)^2, not relu(1 - s)^2.
    source, target = torch.tensor([0.3, -0.2]), torch.zeros(2)
    assert boundary_loss(source, target, margin=1.0).item() == pytest.approx(1.3**2 + 0.8**2)


def test_ab_connector_is_identity_or_the_regressor_conv_with_bn_and_says_why_not_whole():
    assert isinstance(connector((4, 8, 8), (4, 8, 8)), nn.Identity)
    conv, bn = connector((4, 8, 8), (6, 4, 4))  # twice the size: 3x3 stride-2 conv, then BN, no ReLU
    assert isinstance(conv, nn.Conv2d) and (conv.kernel_size, conv.stride) == ((3, 3), (2, 2))
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 6 and len(connector((4, 8, 8), (6, 4, 4))) == 2
    with pytest.raises(ConfigError) as error:
        connector((4, 8, 4), (6, 4, 8))  # larger along one axis, smaller along the other
    assert str(error.value) == ("loss 'ab': cannot connect a 8x4 student stage to a 4x8 teacher stage; the student "
                                "map must be at least as large or exactly half the size")


def test_ab_settings_bounds_default_margin_and_stage_errors_name_ab():
    shapes = output_shapes(TinyNet((2, 2)), 3, 4)  # stem + one stage, preact (2, 2, 2) after the stem
    spec = DistillSpec(shapes, shapes, 1, 2)
    for margin, epochs in ((-0.5, 30), (1.0, -1)):
        with pytest.raises(ConfigError) as error:
            build_distiller("ab", spec, margin=margin, init_epochs=epochs)
        assert str(error.value) == f"loss 'ab': need margin >= 0 and init_epochs >= 0 (got {margin}, {epochs})"
    zero = build_distiller("ab", spec, margin=0, init_epochs=0)  # both bounds are inclusive
    assert (zero.margin, zero.init_epochs) == (0.0, 0)
    # The default margin is 1: one pair of (1, 2, 2, 2) maps, identity connector, weight 1, batch of 1.
    ab = build_distiller("ab", spec)
    s = [-0.5, 0.2, 2.0, 0.0, 1.5, -3.0, 0.9, -1.0]
    t = [1.0, -1.0, 1.0, 0.0, -2.0, -1.0, 3.0, 1.0]
    by_hand = sum(max(0.0, 1 - a) ** 2 if b > 0 else max(0.0, 1 + a) ** 2 for a, b in zip(s, t))
    stem = torch.zeros(1, 2, 4, 4)
    s_out = {"preact_features": [stem, torch.tensor(s).view(1, 2, 2, 2)], "logits": torch.zeros(1, 2)}
    t_out = {"preact_features": [stem, torch.tensor(t).view(1, 2, 2, 2)]}
    assert ab.init_loss(s_out, t_out, {}).item() == pytest.approx(3e-3 * by_hand, rel=1e-6)
    message = "loss 'ab' needs at least one stage after the stem in both models (student has 1 feature maps, teacher 2)"
    with pytest.raises(ConfigError) as error:
        build_distiller("ab", DistillSpec(output_shapes(TinyNet((2,)), 3, 4), shapes, 1, 2))
    assert str(error.value) == message
    with pytest.raises(ConfigError) as error:  # outputs with fewer maps than the spec promised
        ab.init_loss({"preact_features": [stem]}, t_out, {})
    assert str(error.value) == message


def test_cc_settings_bounds_and_defaults_with_whole_messages():
    spec = make_spec(TinyNet((2, 4)), TinyNet((2, 8)))
    with pytest.raises(ConfigError) as error:
        build_distiller("cc", spec, correlation="pearson")
    assert str(error.value) == "loss 'cc': correlation='pearson' is not one of 'consecutive', 'gaussian'"
    for feat_dim, gamma, order in ((0, 0.4, 2), (128, 0, 2), (128, -0.1, 2), (128, 0.4, -1)):
        with pytest.raises(ConfigError) as error:
            build_distiller("cc", spec, feat_dim=feat_dim, gamma=gamma, order=order)
        assert str(error.value) == (f"loss 'cc': need feat_dim >= 1, gamma > 0 and order >= 0 "
                                    f"(got {feat_dim}, {gamma}, {order})")
    edge = build_distiller("cc", spec, feat_dim=1, gamma=1e-6, order=0, correlation="gaussian")  # smallest allowed
    assert (edge.student_head.linear.out_features, edge.gamma, edge.order) == (1, 1e-6, 0)
    default = build_distiller("cc", spec)
    assert (default.student_head.linear.out_features, default.teacher_head.linear.out_features) == (128, 128)


def maps_spec(s_maps, t_maps):
    """DistillSpec from lists of (C, H, W) stage shapes (pre-activation maps the same)."""
    from crossmodal.losses import OutputShapes

    s = OutputShapes(features=list(s_maps), preact_features=list(s_maps), embedding=2, num_classes=2)
    t = OutputShapes(features=list(t_maps), preact_features=list(t_maps), embedding=2, num_classes=2)
    return DistillSpec(s, t, 4, 2)


@pytest.mark.parametrize("name", ["nst", "vid"])
def test_nst_and_vid_stage_errors_name_the_loss_whole(name):
    message = (f"loss '{name}' needs at least one stage after the stem in both models "
               "(student has 1 feature maps, teacher 2)")
    with pytest.raises(ConfigError) as error:
        build_distiller(name, maps_spec([(2, 2, 2)], [(2, 2, 2), (2, 2, 2)]))
    assert str(error.value) == message
    distiller, stem = build_distiller(name, maps_spec([(2, 2, 2)] * 2, [(2, 2, 2)] * 2)), torch.zeros(1, 2, 2, 2)
    with pytest.raises(ConfigError) as error:  # outputs with fewer maps than the spec promised
        distiller(out([stem]), out([stem, stem]), {})
    assert str(error.value) == message


def test_rkd_pairwise_and_normalised_distances_by_hand_below_1():
    # Distances 0.5, 0.3, 0.4 (all below 1, mean 0.4 over the 6 ordered pairs): an eps or a clamp of 1 would show;
    # 0.3 and 0.4 are not exact in bfloat16, so a Gram matrix computed in bfloat16 would too.
    x = torch.tensor([[0.0, 0.0], [0.3, 0.4], [0.3, 0.0]])
    by_hand = [[0.0, 0.5, 0.3], [0.5, 0.0, 0.4], [0.3, 0.4, 0.0]]
    d = pairwise_distances(x)
    assert d.tolist() == [pytest.approx(row, rel=1e-6) for row in by_hand]
    assert d.diagonal().tolist() == [0.0, 0.0, 0.0]  # exact zeros, not sqrt(eps)
    normalised = normalized_distances(x).tolist()
    assert normalised == [pytest.approx([v / 0.4 for v in row], rel=1e-6) for row in by_hand]


def test_rkd_weights_must_not_be_negative_and_the_message_is_whole():
    for distance_weight, angle_weight in ((-1.0, 50.0), (25.0, -0.5)):
        with pytest.raises(ConfigError) as error:
            build_distiller("rkd", None, distance_weight=distance_weight, angle_weight=angle_weight)
        assert str(error.value) == f"loss 'rkd': weights must be >= 0 (got {distance_weight}, {angle_weight})"
    rkd = build_distiller("rkd", None, distance_weight=0, angle_weight=0)
    assert (rkd.distance_weight, rkd.angle_weight) == (0.0, 0.0)


def vid_one_stage(**params):
    """VID on one pair of (2, 1, 2) stage maps (after a stem), with the regressor's 1x1 convs set by hand."""
    vid = build_distiller("vid", maps_spec([(2, 1, 2)] * 2, [(2, 1, 2)] * 2), **params)
    regressor = vid.regressors[0]
    weights = ([[1.0, -1.0], [0.5, 2.0]], [[1.0, -1.0], [-1.0, 1.0]], [[2.0, 1.0], [0.0, -1.0]])
    convs = [m for m in regressor.mean if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for conv, w in zip(convs, weights):
            conv.weight.copy_(torch.tensor(w).view(2, 2, 1, 1))
    return vid, convs, weights


def test_vid_regressor_mean_and_variance_by_hand():
    # mu = W3 relu(W2 relu(W1 s)) per position (1x1 convs, no bias); both ReLUs cut a negative entry here.
    def layer(w, v):  # v: [channel][position]
        return [[sum(w[o][i] * v[i][p] for i in range(2)) for p in range(2)] for o in range(2)]

    relu = lambda v: [[max(0.0, a) for a in row] for row in v]  # noqa: E731
    s, t = [[1.0, -2.0], [0.5, 1.0]], [[0.5, 2.0], [-1.0, 0.0]]
    vid, convs, (w1, w2, w3) = vid_one_stage(init_pred_var=2.0, eps=0.5)  # variance 2 = softplus(alpha) + 0.5
    assert all(conv.bias is None for conv in convs) and len(convs) == 3
    mu = layer(w3, relu(layer(w2, relu(layer(w1, s)))))
    assert mu == [[1.0, 1.0], [-1.0, -1.0]]
    variance = 2.0
    expected = sum(0.5 * ((t[c][p] - mu[c][p]) ** 2 / variance + math.log(variance))
                   for c in range(2) for p in range(2)) / 4
    stem = torch.zeros(1, 2, 1, 2)
    as_map = lambda v: torch.tensor(v).view(1, 2, 1, 2)  # noqa: E731
    loss = vid(out([stem, as_map(s)]), out([stem, as_map(t)]), {})
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_vid_defaults_start_at_variance_5_with_a_floor_of_1e_5():
    vid, convs, _ = vid_one_stage()
    nn.init.zeros_(convs[-1].weight)  # mu = 0
    t = [[0.5, 2.0], [-1.0, 0.0]]
    mean_square = sum(v * v for row in t for v in row) / 4
    stem, t_map = torch.zeros(1, 2, 1, 2), torch.tensor(t).view(1, 2, 1, 2)
    s_map = torch.ones(1, 2, 1, 2)
    loss = vid(out([stem, s_map]), out([stem, t_map]), {})
    assert loss.item() == pytest.approx(0.5 * (mean_square / 5.0 + math.log(5.0)), rel=1e-6)
    with torch.no_grad():
        vid.regressors[0].alpha.fill_(-60.0)  # softplus ~ 1e-26: the variance is the eps floor alone
    loss = vid(out([stem, s_map]), out([stem, t_map]), {})
    assert loss.item() == pytest.approx(0.5 * (mean_square / 1e-5 + math.log(1e-5)), rel=1e-6)


def test_vid_needs_init_pred_var_above_eps_above_0_and_says_so_whole():
    spec = maps_spec([(2, 1, 2)] * 2, [(2, 1, 2)] * 2)
    for init_pred_var, eps in ((1e-5, 1e-5), (0.5, 1.0), (5.0, 0.0), (5.0, -1e-5)):
        with pytest.raises(ConfigError) as error:
            build_distiller("vid", spec, init_pred_var=init_pred_var, eps=eps)
        assert str(error.value) == f"loss 'vid': need init_pred_var > eps > 0 (got {init_pred_var}, {eps})"
    vid = build_distiller("vid", spec, init_pred_var=2e-5, eps=1e-5)  # just above eps
    regressor = vid.regressors[0]
    assert (torch.nn.functional.softplus(regressor.alpha) + regressor.eps).tolist() == pytest.approx([2e-5] * 2)


def layers(module):
    """What each layer of a sequential module is, for comparing with the reference architecture."""
    described = []
    for m in module:
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            kind = "convT" if isinstance(m, nn.ConvTranspose2d) else "conv"
            described.append((kind, m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                              m.bias is not None))
        elif isinstance(m, nn.BatchNorm2d):
            described.append(("bn", m.num_features))
        elif isinstance(m, nn.LeakyReLU):
            described.append(("leaky", m.negative_slope))
        else:
            described.append((type(m).__name__,))
    return described


def test_ft_paraphraser_and_translator_are_the_reference_layers_at_the_default_rate():
    # Teacher's last stage 8 channels, default rate 0.5 -> 4 factor channels; student's 3 channels.
    ft = build_distiller("ft", maps_spec([(3, 4, 4)], [(8, 4, 4)]))
    conv = lambda kind, a, b: (kind, a, b, (3, 3), (1, 1), (1, 1), True)  # noqa: E731
    leaky = ("leaky", 0.1)
    assert layers(ft.paraphraser.encoder) == [conv("conv", 8, 8), leaky, conv("conv", 8, 4), leaky,
                                              conv("conv", 4, 4), leaky]
    assert layers(ft.paraphraser.decoder) == [conv("convT", 4, 4), leaky, conv("convT", 4, 8), leaky,
                                              conv("convT", 8, 8), leaky]
    assert layers(ft.translator) == [conv("conv", 3, 3), ("bn", 3), leaky, conv("conv", 3, 4), ("bn", 4), leaky,
                                     conv("conv", 4, 4), ("bn", 4), leaky]
    x = torch.randn(2, 8, 4, 4)
    assert ft.paraphraser.encoder(x).shape == (2, 4, 4, 4) and ft.paraphraser(x).shape == x.shape
    assert ft.translator(torch.randn(2, 3, 4, 4)).shape == (2, 4, 4, 4)
    assert ft.init_epochs == 30 and ft.factor_form == "attention"


def test_ft_settings_bounds_with_whole_messages():
    spec = maps_spec([(3, 4, 4)], [(8, 4, 4)])
    with pytest.raises(ConfigError) as error:
        build_distiller("ft", spec, factor_form="map")
    assert str(error.value) == "loss 'ft': factor_form='map' is not one of 'attention', 'flat'"
    for rate, epochs, channels in ((0.1, 30, 0), (0.5, -1, 4)):
        with pytest.raises(ConfigError) as error:
            build_distiller("ft", spec, rate=rate, init_epochs=epochs)
        assert str(error.value) == (f"loss 'ft': rate {rate} leaves {channels} factor channels of the teacher's 8, "
                                    f"and init_epochs ({epochs}) must be >= 0")
    smallest = build_distiller("ft", spec, rate=0.125, init_epochs=0)  # one factor channel, no init stage
    assert smallest.translator[-3].out_channels == 1 and smallest.init_epochs == 0


def test_ft_reference_init_lr_is_0_01_for_cifar_resnet_and_wrn_students_only():
    ft = build_distiller("ft", maps_spec([(3, 4, 4)], [(8, 4, 4)]))
    assert [ft.reference_init_lr(arch, 0.05) for arch in ("resnet8x4", "wrn_16_2", "mobilenetv2", "vgg8")] == \
        [0.01, 0.01, 0.05, 0.05]


def test_fsp_needs_two_maps_and_a_non_negative_init_epochs_whole():
    with pytest.raises(ConfigError) as error:
        build_distiller("fsp", maps_spec([(2, 2, 2)], [(2, 2, 2)]))
    assert str(error.value) == ("loss 'fsp' compares FSP matrices entry by entry and needs >= 2 stage maps with the "
                                "same channels in both models; student has [2], teacher [2] (use at, sp or crd instead)")
    spec = maps_spec([(2, 2, 2), (3, 1, 1)], [(2, 2, 2), (3, 1, 1)])  # exactly two maps: one pair
    assert build_distiller("fsp", spec).init_epochs == 30
    assert build_distiller("fsp", spec, init_epochs=0).init_epochs == 0
    with pytest.raises(ConfigError) as error:
        build_distiller("fsp", spec, init_epochs=-1)
    assert str(error.value) == "loss 'fsp': init_epochs must be >= 0, got -1"
