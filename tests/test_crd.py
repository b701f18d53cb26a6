"""CRD: equivalence with a plain per-sample version of the paper's algorithm, sampling, state, DDP."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from crossmodal.errors import ConfigError
from crossmodal.losses.base import DISTILLERS, DistillSpec, OutputShapes, build_distiller
from crossmodal.losses.contrast_memory import (
    ClassIndex,
    ContrastMemory,
    PartitionEstimate,
    init_memory_rows,
    negatives_from_keys,
    negatives_from_uniform,
    nce_loss,
    sample_negatives,
    sample_shared_negatives,
    shared_negative_mask,
    uniform_draws,
)
from crossmodal.losses.crd import CRDLoss, _decimal_size

torch.set_num_threads(1)

N, K, B, S_DIM, T_DIM, FEAT = 300, 50, 12, 24, 40, 16
TAU, MOMENTUM, EPS = 0.07, 0.5, 1e-7


def make_labels(num_rows=N, num_classes=7, unlabeled=20, seed=0):
    """Unbalanced labels with a few unlabeled (-1) rows."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (num_rows,), generator=g)
    labels[torch.randperm(num_rows, generator=g)[:unlabeled]] = -1
    return labels


def make_spec(labels=None, num_rows=N):
    shapes = lambda d: OutputShapes(features=[], preact_features=[], embedding=d, num_classes=7)  # noqa: E731
    return DistillSpec(shapes(S_DIM), shapes(T_DIM), num_rows, 7, labels)


def make_crd(seed=0, **params):
    torch.manual_seed(seed)
    params = {"feat_dim": FEAT, "nce_k": K, **params}
    return CRDLoss(make_spec(make_labels()), **params)


def make_batch(seed=1, batch_size=B, num_rows=N):
    g = torch.Generator().manual_seed(seed)
    s_emb = torch.randn(batch_size, S_DIM, generator=g)
    t_emb = torch.randn(batch_size, T_DIM, generator=g)
    index = torch.randperm(num_rows, generator=g)[:batch_size]
    return s_emb, t_emb, index


def run_crd(crd, s_emb, t_emb, index, negatives=None):
    return crd({"embedding": s_emb}, {"embedding": t_emb}, {"index": index}, negatives=negatives)


def assert_continues_alike(crd, restored) -> None:
    """The next step of a restored module gives the original's loss and memory update (same negatives)."""
    s_emb, t_emb, index = make_batch(seed=3)
    torch.manual_seed(7)
    expected = run_crd(crd, s_emb, t_emb, index)
    torch.manual_seed(7)
    assert run_crd(restored, s_emb, t_emb, index).item() == expected.item()
    assert torch.equal(restored.memory_teacher.rows, crd.memory_teacher.rows)


# ------------------------------------------------------------------ the paper's algorithm, one sample at a time
def reference_heads(crd, s_emb, t_emb):
    """g_S(s), g_T(t) from the heads' weights, normalise(x W^T + b), without calling the module's code."""
    out = []
    for x, layer in ((s_emb, crd.embed_student.linear), (t_emb, crd.embed_teacher.linear)):
        y = x.double() @ layer.weight.double().T + layer.bias.double()
        out.append(y / y.norm(dim=1, keepdim=True))
    return out


class ReferenceCRD:
    """The paper's algorithm (Eq. 18, the reference code's Z and memory update) one anchor at a time, in float64.

    It keeps its own memories (copied once from the module's initial rows) and its own Z per direction, and is
    given every constant explicitly, so a module that ignores or swaps one of them disagrees with it. Z:
    "frozen" = mean(exp(s / tau)) * N of the first batch, kept; "ema" = that first value, then
    m * Z + (1 - m) * Z_batch every step.
    """

    def __init__(self, crd, tau, momentum, z_estimate="frozen", z_momentum=None, num_rows=N):
        self.mem_s = crd.memory_student.rows.detach().double().clone()
        self.mem_t = crd.memory_teacher.rows.detach().double().clone()
        self.tau, self.momentum, self.num_rows = tau, momentum, num_rows
        self.z_estimate, self.z_momentum = z_estimate, z_momentum
        self.z = [None, None]  # student-anchor side, teacher-anchor side

    def next_z(self, side, z_batch):
        """Z to use for this batch on `side`, stored for the next step."""
        old = self.z[side]
        if old is None:
            z = z_batch
        elif self.z_estimate == "frozen":
            z = old
        else:
            z = self.z_momentum * old + (1 - self.z_momentum) * z_batch
        self.z[side] = z
        return z

    def step(self, f_s, f_t, index, negatives, invalid=None, positive="memory", update=True):
        """Loss of one training step on head outputs f_s, f_t (B, D); then the memory update. Returns the loss."""
        losses = []
        for side, (anchors, others, memory) in enumerate(((f_s, f_t, self.mem_t), (f_t, f_s, self.mem_s))):
            scores = []
            for i in range(len(index)):
                negs = negatives if negatives.dim() == 1 else negatives[i]
                rows = torch.cat([index[i:i + 1], negs])  # positive first, then the K negatives
                row_scores = (memory @ anchors[i])[rows]  # (K+1,): every row's dot product, picked (K may exceed N)
                if positive == "batch":
                    row_scores = torch.cat([(others[i].detach() @ anchors[i]).view(1), row_scores[1:]])
                scores.append(row_scores / self.tau)  # (K+1,)
            scores = torch.stack(scores)  # (B, K+1)
            exp_scores = torch.exp(scores)
            z_value = self.next_z(side, exp_scores.detach().mean().item() * self.num_rows)
            p = exp_scores / z_value
            c = negatives.shape[-1] / self.num_rows  # K / N: K noise samples from the uniform 1 / N
            total = 0.0
            for i in range(len(index)):
                total = total - torch.log(p[i, 0] / (p[i, 0] + c + EPS))
                negative_terms = torch.log(c / (p[i, 1:] + c + EPS))  # (K,)
                if invalid is not None:
                    negative_terms = negative_terms[~invalid[i]]
                total = total - negative_terms.sum()
            losses.append(total / len(index))
        if update:  # new tensors: the loss's graph holds the old rows for its backward
            with torch.no_grad():
                self.mem_s, self.mem_t = self.mem_s.clone(), self.mem_t.clone()
                for memory, emb in ((self.mem_s, f_s), (self.mem_t, f_t)):
                    for i, row in enumerate(index.tolist()):
                        mixed = self.momentum * memory[row] + (1 - self.momentum) * emb[i]
                        memory[row] = mixed / mixed.norm()
        return losses[0] + losses[1]


def plain_crd_step(crd, s_emb, t_emb, index, negatives, z=(None, None), invalid=None, positive="memory"):
    """One step of ReferenceCRD at the defaults' constants from the module's current memories: returns loss,
    Z values and the updated memories. `z` gives each side's Z to keep (frozen), None for the batch's own.

    positive="batch" scores each anchor's positive against the other side's embedding of the same sample
    in this batch (a constant, like a memory row) instead of its memory row."""
    reference = ReferenceCRD(crd, TAU, MOMENTUM)
    reference.z = list(z)
    f_s, f_t = reference_heads(crd, s_emb, t_emb)
    loss = reference.step(f_s, f_t, index, negatives, invalid=invalid, positive=positive)
    return loss, reference.z, reference.mem_s.float(), reference.mem_t.float()


def head_grads(crd):
    return [p.grad.clone() for p in crd.parameters()]


def assert_step_matches_plain(crd, s_emb, t_emb, index, negatives, **plain_args):
    """One training step of `crd` equals plain_crd_step (loss, head gradients, both memories); returns the loss
    and the plain step's Z values."""
    plain_loss, plain_z, plain_mem_s, plain_mem_t = plain_crd_step(crd, s_emb, t_emb, index, negatives, **plain_args)
    plain_loss.backward()
    plain_grads = head_grads(crd)
    crd.zero_grad()
    loss = run_crd(crd, s_emb, t_emb, index, negatives)
    loss.backward()
    assert loss.item() == pytest.approx(plain_loss.item(), rel=1e-5)
    for ours, theirs in zip(head_grads(crd), plain_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(crd.memory_student.rows, plain_mem_s, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(crd.memory_teacher.rows, plain_mem_t, rtol=1e-5, atol=1e-6)
    return loss, plain_z


@pytest.mark.parametrize("score_all_rows", [True, False])
def test_matches_plain_per_sample_algorithm(score_all_rows):
    crd = make_crd(z_estimate="frozen")
    for memory in (crd.memory_student, crd.memory_teacher):
        memory.score_all_rows = score_all_rows
    s_emb, t_emb, index = make_batch()
    negatives = sample_negatives(index, K, N, crd.classes)
    _, plain_z = assert_step_matches_plain(crd, s_emb, t_emb, index, negatives)
    # Frozen Z is the reference formula, Z = mean(exp(s / tau)) * N over the first batch, then never changes.
    assert crd.z_student_anchor.log_z.exp().item() == pytest.approx(plain_z[0], rel=1e-5)
    assert crd.z_teacher_anchor.log_z.exp().item() == pytest.approx(plain_z[1], rel=1e-5)
    s2, t2, index2 = make_batch(seed=2)
    negatives2 = sample_negatives(index2, K, N, crd.classes)
    plain_loss2, _, _, _ = plain_crd_step(crd, s2, t2, index2, negatives2, z=tuple(plain_z))
    assert run_crd(crd, s2, t2, index2, negatives2).item() == pytest.approx(plain_loss2.item(), rel=1e-5)
    assert crd.z_student_anchor.log_z.exp().item() == pytest.approx(plain_z[0], rel=1e-5)


def train_against_reference(crd, reference, labels, steps=24, batch_size=16, lr=2.0, seed=5):
    """Train `crd`'s heads for `steps` SGD steps on random embeddings, checking every step against `reference`.

    The module draws its own negatives (recorded, and checked here to be rows of other classes, or other rows
    for unlabeled anchors); the reference scores the same rows. Loss, both heads' gradients, both memories and
    both Z values must agree at every step. Returns the losses (to check that the run is not trivial)."""
    num_rows = labels.numel()
    g = torch.Generator().manual_seed(seed)
    params = list(crd.parameters())
    recorded = []
    draw = crd.draw_negatives
    crd.draw_negatives = lambda index: recorded.append(draw(index)) or recorded[-1]
    losses = []
    for step in range(steps):
        index = torch.randperm(num_rows, generator=g)[:batch_size]
        s_emb, t_emb = torch.randn(batch_size, S_DIM, generator=g), torch.randn(batch_size, T_DIM, generator=g)
        recorded.clear()
        crd.zero_grad()
        f_s, f_t = reference_heads(crd, s_emb, t_emb)  # before the module's step moves anything
        loss = run_crd(crd, s_emb, t_emb, index)
        (negatives,) = recorded
        anchor_labels = labels[index][:, None]
        assert not ((labels[negatives] == anchor_labels) & (anchor_labels >= 0)).any()
        assert not (negatives == index[:, None]).any()
        expected = reference.step(f_s, f_t, index, negatives)
        expected_grads = torch.autograd.grad(expected, params)
        loss.backward()
        assert loss.item() == pytest.approx(expected.item(), rel=2e-5), f"step {step}"
        for ours, theirs in zip(head_grads(crd), expected_grads):
            torch.testing.assert_close(ours, theirs.float(), rtol=1e-3, atol=1e-5, msg=f"step {step}")
        torch.testing.assert_close(crd.memory_student.rows.double(), reference.mem_s, rtol=0, atol=2e-6)
        torch.testing.assert_close(crd.memory_teacher.rows.double(), reference.mem_t, rtol=0, atol=2e-6)
        for z, expected_z in ((crd.z_student_anchor, reference.z[0]), (crd.z_teacher_anchor, reference.z[1])):
            assert z.log_z.exp().item() == pytest.approx(expected_z, rel=1e-5), f"step {step}"
        with torch.no_grad():
            for p in params:
                p -= lr * p.grad
        losses.append(loss.item())
    crd.draw_negatives = draw
    return losses


def long_run_labels():
    """64 rows, 7 classes, 5 unlabeled: a batch of 16 for 24 steps visits every row about 6 times."""
    return make_labels(num_rows=64, num_classes=7, unlabeled=5, seed=3)


def test_default_crd_matches_the_reference_over_24_training_steps():
    """The module as a config without loss_params builds it (frozen Z, tau 0.07, momentum 0.5, K 16384, D 128)."""
    labels = long_run_labels()
    torch.manual_seed(0)
    crd = build_distiller("crd", make_spec(labels, num_rows=64))
    assert crd.feat_dim == 128 and crd.nce_k == 16384
    reference = ReferenceCRD(crd, tau=0.07, momentum=0.5, z_estimate="frozen", num_rows=64)
    losses = train_against_reference(crd, reference, labels)
    first_z = reference.z  # frozen: still the first batch's values after 24 steps
    assert len(set(losses)) == len(losses)
    assert first_z[0] != pytest.approx(first_z[1], rel=1e-3)


def test_ema_crd_at_non_default_constants_matches_the_reference_over_24_training_steps():
    """tau 0.1, momentum 0.3 (a swapped m / 1 - m differs), Z momentum 0.9 (the stored Z differs from the
    batch's), and the gathered-rows scoring path (score_all_rows False)."""
    labels = long_run_labels()
    torch.manual_seed(1)
    crd = build_distiller("crd", make_spec(labels, num_rows=64), feat_dim=FEAT, nce_k=40, nce_t=0.1, nce_m=0.3,
                          z_estimate="ema", z_momentum=0.9)
    for memory in (crd.memory_student, crd.memory_teacher):
        memory.score_all_rows = False
    reference = ReferenceCRD(crd, tau=0.1, momentum=0.3, z_estimate="ema", z_momentum=0.9, num_rows=64)
    z_history = []
    step = reference.step

    def step_recording_z(*args, **kwargs):
        loss = step(*args, **kwargs)
        z_history.append(reference.z[0])
        return loss

    reference.step = step_recording_z
    train_against_reference(crd, reference, labels)
    assert max(z_history) > 1.2 * min(z_history)  # Z moved: a frozen Z would have failed the comparison


@pytest.mark.parametrize("negatives_kind", ["per_sample", "shared"])
def test_batch_positive_matches_plain_algorithm(negatives_kind):
    """positive="batch": the positive is the other side's embedding of the sample in this batch, not its memory row."""
    crd = make_crd(z_estimate="frozen", positive="batch", negatives=negatives_kind)
    s_emb, t_emb, index = make_batch()
    if negatives_kind == "shared":
        negatives = sample_shared_negatives(K, N, index.device)
        invalid = shared_negative_mask(index, negatives, crd.classes)
    else:
        negatives, invalid = sample_negatives(index, K, N, crd.classes), None
    loss, _ = assert_step_matches_plain(crd, s_emb, t_emb, index, negatives, invalid=invalid, positive="batch")
    # The memory positive (a random row before the sample's first visit) gives another loss on the same batch.
    memory_positive = make_crd(z_estimate="frozen", negatives=negatives_kind)
    assert run_crd(memory_positive, s_emb, t_emb, index, negatives).item() != pytest.approx(loss.item(), rel=1e-3)


def test_ema_z_starts_at_first_batch_then_follows_batches():
    crd = make_crd(z_estimate="ema", z_momentum=0.9)
    s_emb, t_emb, index = make_batch()
    negatives = sample_negatives(index, K, N, crd.classes)
    _, (z_first, _), _, _ = plain_crd_step(crd, s_emb, t_emb, index, negatives)
    run_crd(crd, s_emb, t_emb, index, negatives)
    assert crd.z_student_anchor.log_z.exp().item() == pytest.approx(z_first, rel=1e-5)
    s2, t2, index2 = make_batch(seed=2)
    negatives2 = sample_negatives(index2, K, N, crd.classes)
    _, (z_second_batch, _), _, _ = plain_crd_step(crd, s2, t2, index2, negatives2)
    z_expected = 0.9 * z_first + 0.1 * z_second_batch
    run_crd(crd, s2, t2, index2, negatives2)
    assert crd.z_student_anchor.log_z.exp().item() == pytest.approx(z_expected, rel=1e-5)
    assert z_second_batch != pytest.approx(z_first, rel=1e-3)  # so the check above can tell EMA from frozen


def test_the_removed_infonce_objective_is_refused_with_one_line():
    """`objective` (InfoNCE) was removed after the ablation measured no effect (docs/DISTILLERS.md): a config that
    still names it fails with the key in a one-line error instead of being ignored."""
    with pytest.raises(ConfigError, match="loss 'crd' has no parameter 'objective'") as err:
        build_distiller("crd", make_spec(make_labels()), feat_dim=FEAT, nce_k=K, objective="infonce")
    assert "\n" not in str(err.value)


def test_shared_negatives_match_plain_algorithm_with_mask():
    crd = make_crd(negatives="shared", z_estimate="frozen")
    s_emb, t_emb, index = make_batch()
    negatives = sample_shared_negatives(K, N, "cpu")
    negatives[:3] = index[:3]  # make sure some anchors meet their own row among the shared negatives
    invalid = shared_negative_mask(index, negatives, crd.classes)
    assert invalid[torch.arange(3), torch.arange(3)].all()
    labels = crd.classes.row_labels
    same_class = (labels[negatives][None, :] == labels[index][:, None]) & (labels[index] >= 0)[:, None]
    assert torch.equal(invalid, same_class | (negatives[None, :] == index[:, None]))
    plain_loss, _, plain_mem_s, _ = plain_crd_step(crd, s_emb, t_emb, index, negatives, invalid=invalid)
    assert run_crd(crd, s_emb, t_emb, index, negatives).item() == pytest.approx(plain_loss.item(), rel=1e-5)
    torch.testing.assert_close(crd.memory_student.rows, plain_mem_s, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- sampling
def test_iid_exact_sampling_never_draws_same_class_and_covers_others_uniformly():
    labels = make_labels(num_rows=1000, num_classes=10, unlabeled=50)
    classes = ClassIndex(labels, 10)
    anchor_class = 3
    anchors = torch.nonzero(labels == anchor_class).flatten()[:64]
    torch.manual_seed(0)
    negatives = sample_negatives(anchors, 4096, 1000, classes, replacement=True)  # (64, 4096)
    assert negatives.shape == (64, 4096) and negatives.dtype == torch.long
    assert not (labels[negatives] == anchor_class).any()
    counts = torch.bincount(negatives.flatten(), minlength=1000).double()
    others = labels != anchor_class  # includes the unlabeled rows: they are negatives for a labelled anchor
    expected = negatives.numel() / others.sum().item()
    assert (counts[~others] == 0).all()
    assert (counts[others] - expected).abs().max() < 6 * math.sqrt(expected)  # every other row, uniformly


def test_unlabeled_anchor_in_exact_mode_samples_like_relax():
    labels = make_labels(num_rows=200, num_classes=5, unlabeled=10)
    unlabeled = torch.nonzero(labels < 0).flatten()
    torch.manual_seed(0)
    negatives = sample_negatives(unlabeled, 4000, 200, ClassIndex(labels, 5), replacement=True)
    assert not (negatives == unlabeled[:, None]).any()
    assert (labels[negatives] == labels[unlabeled][:, None]).any()  # other unlabeled rows are fair game
    assert torch.bincount(negatives.flatten(), minlength=200).gt(0).sum() == 200


def test_iid_relax_sampling_never_draws_the_anchor_and_reaches_every_other_row():
    index = torch.arange(0, 100, 7)
    torch.manual_seed(0)
    negatives = sample_negatives(index, 5000, 100, replacement=True)
    assert negatives.min() >= 0 and negatives.max() < 100
    assert not (negatives == index[:, None]).any()
    for i, row in enumerate(index.tolist()):
        assert set(negatives[i].tolist()) == set(range(100)) - {row}


DISTINCT_METHODS = ["seeds", "keys"]  # the CPU's and the devices' draw without replacement (sample_negatives)


@pytest.mark.parametrize("method", DISTINCT_METHODS)
def test_default_sampling_draws_distinct_rows_of_other_classes_each_with_probability_k_over_candidates(method):
    """The reference's draw: per anchor, K distinct rows out of its candidates (np.random.choice, replace=False),
    so every candidate is in an anchor's set with probability K / candidates."""
    labels = make_labels(num_rows=1000, num_classes=10, unlabeled=50)
    classes = ClassIndex(labels, 10)
    anchors = torch.nonzero(labels == 3).flatten()[:64].repeat(8)  # 512 anchors of class 3
    torch.manual_seed(0)
    negatives = sample_negatives(anchors, 300, 1000, classes, method=method)  # (512, 300)
    assert negatives.shape == (512, 300) and negatives.dtype == torch.long
    assert all(len(set(row)) == 300 for row in negatives.tolist())  # no repeats within an anchor's set
    assert not (labels[negatives] == 3).any()
    others = labels != 3
    p = 300 / others.sum().item()
    counts = torch.bincount(negatives.flatten(), minlength=1000).double()
    expected, sd = 512 * p, math.sqrt(512 * p * (1 - p))
    assert (counts[~others] == 0).all() and (counts[others] - expected).abs().max() < 6 * sd


@pytest.mark.parametrize("method", DISTINCT_METHODS)
def test_default_sampling_is_a_uniform_subset(method):
    """Candidates {0, 1, 2, 4} (relax, anchor 3, N 5), K 2: each of the 6 pairs with probability 1/6."""
    torch.manual_seed(1)
    negatives = sample_negatives(torch.full((6000,), 3), 2, 5, method=method)  # (6000, 2)
    pairs = [tuple(sorted(row)) for row in negatives.tolist()]
    assert set(pairs) == {(0, 1), (0, 2), (0, 4), (1, 2), (1, 4), (2, 4)}
    expected, sd = 1000, math.sqrt(6000 * (1 / 6) * (5 / 6))
    assert all(abs(pairs.count(pair) - expected) < 6 * sd for pair in set(pairs))


@pytest.mark.parametrize("method", DISTINCT_METHODS)
def test_default_sampling_with_more_draws_than_candidates_takes_every_candidate(method):
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    negatives = sample_negatives(torch.tensor([0, 3]), 4, 6, ClassIndex(labels, 3), method=method)  # 3 and 4
    assert set(negatives[0].tolist()) == {3, 4, 5} and sorted(negatives[1].tolist()) == [0, 1, 2, 5]


@pytest.mark.parametrize("method", DISTINCT_METHODS)
def test_draws_beyond_the_candidates_repeat_every_candidate_alike(method):
    """Relax, N 3, anchor 1: candidates {0, 2}, K 1000: each once, then 998 repeats spread over both (binomial,
    1000 x 1/2 each, sd 15.8), whichever candidate comes first in the span."""
    torch.manual_seed(4)
    negatives = sample_negatives(torch.tensor([1]), 1000, 3, method=method)  # (1, 1000)
    counts = torch.bincount(negatives.flatten(), minlength=3).tolist()
    assert counts[1] == 0 and all(abs(c - 500) < 6 * 15.8 for c in (counts[0], counts[2])), counts


@pytest.mark.parametrize("method", DISTINCT_METHODS)
def test_rank_slices_of_distinct_draws_equal_the_global_draw(method):
    labels = make_labels(num_rows=300, num_classes=4, unlabeled=7)  # unequal spans: classes and unlabeled rows
    classes, index = ClassIndex(labels, 4), torch.arange(8) * 30
    torch.manual_seed(3)
    whole = sample_negatives(index, 50, 300, classes, method=method)
    parts = []
    for rank in range(2):
        torch.manual_seed(3)
        parts.append(sample_negatives(index[rank * 4:(rank + 1) * 4], 50, 300, classes, rank=rank, world=2,
                                      method=method))
    assert torch.equal(torch.cat(parts), whole)


@pytest.mark.parametrize("replacement, method", [(False, "seeds"), (False, "keys"), (True, None)])
def test_sampling_draws_from_the_generator_given_and_ranks_slice_one_draw(replacement, method):
    """A seeded generator gives the same rows again and leaves the global RNG alone; on 2 ranks each rank's rows
    are its slice of the one-process draw (both distinct paths and the i.i.d. one)."""
    labels = make_labels(num_rows=300, num_classes=4, unlabeled=0)
    classes, index = ClassIndex(labels, 4), torch.arange(8) * 30

    def draw(seed, **kw):
        return sample_negatives(index[kw.pop("rows", slice(None))], 50, 300, classes, replacement=replacement,
                                generator=torch.Generator().manual_seed(seed), method=method, **kw)

    torch.manual_seed(0)
    state = torch.get_rng_state()
    first, again, other = draw(1), draw(1), draw(2)
    assert torch.equal(torch.get_rng_state(), state)  # the global stream was not used
    assert torch.equal(first, again) and not torch.equal(first, other)
    parts = [draw(1, rows=slice(4 * r, 4 * r + 4), rank=r, world=2) for r in range(2)]
    assert torch.equal(torch.cat(parts), first)


def test_crd_draws_distinct_negatives_by_default_and_iid_with_replacement_true():
    def repeats(**params) -> int:
        crd = make_crd(**params)
        torch.manual_seed(0)
        rows = crd.draw_negatives(torch.arange(16))
        return sum(len(row) - len(set(row)) for row in rows.tolist())

    assert repeats() == 0
    assert repeats(replacement=True) > 0
    with pytest.raises(ConfigError, match="replacement"):
        make_crd(replacement="yes")


def test_nce_loss_by_hand_where_eps_matters():
    """K/N = 1e-6, comparable to the reference's eps 1e-7: h = P / (P + K/N + eps), 1 - h = (K/N) / (P + K/N + eps)."""
    p_pos, p_negs, c, eps = 2e-6, (5e-7, 3e-6), 1e-6, 1e-7
    log_p = torch.tensor([[math.log(p_pos), *map(math.log, p_negs)]], dtype=torch.float64)
    expected = -(math.log(p_pos / (p_pos + c + eps)) + sum(math.log(c / (p + c + eps)) for p in p_negs))
    assert nce_loss(log_p, c).item() == pytest.approx(expected, rel=1e-9)
    masked = nce_loss(log_p, c, invalid=torch.tensor([[False, True]]))  # the second negative dropped
    assert masked.item() == pytest.approx(expected + math.log(c / (p_negs[1] + c + eps)), rel=1e-9)


def test_shared_negative_mask_by_hand_for_labelled_and_unlabeled_anchors():
    classes = ClassIndex(torch.tensor([0, 0, 1, -1, -1]), 2)
    index, negatives = torch.tensor([0, 3]), torch.tensor([0, 1, 2, 3, 4])
    exact = shared_negative_mask(index, negatives, classes)
    assert exact.tolist() == [[True, True, False, False, False],  # class 0: its own row and the other class-0 row
                              [False, False, False, True, False]]  # unlabeled: only its own row
    relax = shared_negative_mask(index, negatives)
    assert relax.tolist() == [[True, False, False, False, False], [False, False, False, True, False]]


def test_shared_negatives_are_uniform_over_every_row():
    torch.manual_seed(0)
    negatives = sample_shared_negatives(20000, 10, "cpu")
    assert negatives.shape == (20000,) and negatives.dtype == torch.long
    counts = torch.bincount(negatives, minlength=10)
    assert counts.numel() == 10 and (counts - 2000).abs().max() < 6 * math.sqrt(2000)  # rows 0..9, each ~1/10


def test_class_index_by_hand_counts_starts_row_order_and_widest_span():
    # Unlabeled rows sort first, then each class in row order; max_span is N minus the smallest non-empty
    # block an anchor skips (a class's rows, or one row for an unlabeled anchor).
    cases = [  # labels, num_classes, class_count, class_start, max_span
        ([0, 0, 0, 1, 1, 2, -1], 4, [3, 2, 1, 0], [1, 4, 6, 7], 6),  # the unlabeled anchor skips only itself
        ([0, 0, 0, 1, 1, 2], 0, [3, 2, 1], [0, 3, 5], 5),  # the one-row class is skipped by the widest span
        ([0, 0, 0, 1, 1, 1, -1], 0, [3, 3], [1, 4], 6),
        ([0, 0, 1, 1], 2, [2, 2], [0, 2], 2),  # no unlabeled row: no span of N - 1
        ([-1, -1, -1], None, [], [], 2),  # num_classes left out: no class at all
        ([], None, [], [], -1),  # no rows: N - 1 as relax would use
    ]
    for labels, num_classes, count, start, max_span in cases:
        labels = torch.tensor(labels, dtype=torch.long)
        classes = ClassIndex(labels) if num_classes is None else ClassIndex(labels, num_classes)
        got = (classes.class_count.tolist(), classes.class_start.tolist(), classes.max_span)
        assert got == (count, start, max_span), labels
    labels = make_labels()  # 300 rows: a sort that is not stable reorders rows inside a class
    classes = ClassIndex(labels.to(torch.int32), 7)
    assert classes.row_labels.dtype == torch.int64 and torch.equal(classes.row_labels, labels)
    by_hand = sorted(range(N), key=lambda row: (labels[row].item(), row))
    assert classes.rows_by_class.tolist() == by_hand


def test_draws_are_float64_so_every_row_of_a_large_memory_is_reachable():
    # 2^25 rows: float32 uniforms (multiples of 2^-24) would reach only even rows.
    num_rows, g = 2 ** 25, torch.Generator().manual_seed(0)
    shared = sample_shared_negatives(2000, num_rows, "cpu", generator=g)
    iid = sample_negatives(torch.tensor([0, 1]), 1000, num_rows + 1, generator=g, replacement=True)
    for rows in (shared, iid[0], iid[1]):  # relax adds 1 past the anchor: float32 would give one parity
        assert (rows % 2 == 0).any() and (rows % 2 == 1).any() and rows.min() >= 0 and rows.max() <= num_rows
    assert uniform_draws(3, 4, "cpu", generator=g).dtype == torch.float64


def test_draws_follow_the_generator_given_and_consume_only_their_own_block():
    def seeded():
        return torch.Generator().manual_seed(3)

    torch.manual_seed(0)
    shared = sample_shared_negatives(40, 300, "cpu", generator=seeded())
    torch.manual_seed(1)  # the global RNG has no part in it
    assert torch.equal(sample_shared_negatives(40, 300, "cpu", generator=seeded()), shared)
    assert shared.tolist() == (torch.rand(40, dtype=torch.float64, generator=seeded()) * 300).long().tolist()
    # Two one-process calls read consecutive blocks of the stream: the second does not skip a rank's share.
    g = seeded()
    first, second = uniform_draws(2, 5, "cpu", generator=g), uniform_draws(2, 5, "cpu", generator=g)
    assert torch.equal(torch.cat([first, second]), torch.rand(4, 5, dtype=torch.float64, generator=seeded()))
    g, index = seeded(), torch.tensor([0, 5])
    sample_negatives(index, 3, 10, generator=g, method="keys")
    keys = torch.rand(4, 9, generator=seeded())  # relax keys are N - 1 wide
    assert torch.equal(sample_negatives(index, 3, 10, generator=g, method="keys"),
                       negatives_from_keys(keys[2:], index, 10, 3))
    # The CPU's draw: one seed per anchor from the stream (the second call takes the next two), then numpy's
    # choice without replacement from a PCG64 generator of that seed, over the anchor's span, past its own row.
    g = seeded()
    sample_negatives(index, 3, 10, generator=g, method="seeds")
    seeds = torch.randint(0, 2**62, (4,), generator=seeded())[2:].tolist()
    by_hand = []
    for seed, anchor in zip(seeds, index.tolist()):
        picked = np.random.default_rng(seed).choice(9, 3, replace=False, shuffle=False)
        by_hand.append([int(p) + (p >= anchor) for p in picked])
    assert sample_negatives(index, 3, 10, generator=g, method="seeds").tolist() == by_hand
    # Which draw a CPU makes by default: keys below 4,096 candidates (their fixed cost per anchor is less),
    # seeds from 4,096 up.
    for num_rows, method in ((4096, "keys"), (4097, "seeds")):  # relax: N - 1 candidates
        default = sample_negatives(index, 3, num_rows, generator=seeded())
        assert torch.equal(default, sample_negatives(index, 3, num_rows, generator=seeded(), method=method))
    with pytest.raises(ConfigError, match=r"^crd: method='sort' is not one of 'seeds', 'keys'$"):
        sample_negatives(index, 3, 10, method="sort")


def test_uniform_edges_map_inside_the_allowed_rows():
    labels = torch.tensor([0, 0, 1, 1, 1, 2, -1])
    classes = ClassIndex(labels, 3)
    index = torch.tensor([0, 2, 5, 6])
    uniform = torch.tensor([[0.0, 1.0 - 2 ** -53]] * 4, dtype=torch.float64)
    negatives = negatives_from_uniform(uniform, index, 7, classes)
    assert negatives.tolist() == [[6, 5], [6, 5], [6, 4], [0, 5]]


def test_rank_slices_of_draws_equal_the_global_draw():
    torch.manual_seed(3)
    whole = uniform_draws(8, 16, "cpu")
    parts = []
    for rank in range(2):
        torch.manual_seed(3)
        parts.append(uniform_draws(4, 16, "cpu", rank=rank, world=2))
    assert torch.equal(torch.cat(parts), whole)


# ---------------------------------------------------------------------------------- the module as a whole
def test_gradients_reach_both_heads_and_never_the_memories():
    crd = make_crd()
    s_emb, t_emb, index = make_batch()
    s_emb.requires_grad_(True)
    loss = run_crd(crd, s_emb, t_emb, index)
    assert loss.shape == ()
    loss.backward()
    assert {name for name, _ in crd.named_parameters()} == {
        "embed_student.linear.weight", "embed_student.linear.bias",
        "embed_teacher.linear.weight", "embed_teacher.linear.bias"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in crd.parameters())
    assert s_emb.grad.abs().sum() > 0
    assert not crd.memory_student.rows.requires_grad and not crd.memory_teacher.rows.requires_grad


def test_an_int32_index_gives_the_int64_result():
    s_emb, t_emb, index = make_batch()
    losses, memories = [], []
    for dtype in (torch.int64, torch.int32):
        crd = make_crd()
        torch.manual_seed(4)
        losses.append(run_crd(crd, s_emb, t_emb, index.to(dtype)).item())
        memories.append(crd.memory_student.rows.clone())
    assert losses[0] == losses[1] and torch.equal(*memories)


def test_memory_rows_move_only_in_training_and_stay_unit_norm():
    crd = make_crd()
    s_emb, t_emb, index = make_batch()
    before = crd.memory_student.rows.clone()
    crd.eval()
    with torch.no_grad():
        run_crd(crd, s_emb, t_emb, index)
    assert torch.equal(crd.memory_student.rows, before) and not crd.z_student_anchor.initialised
    crd.train()
    run_crd(crd, s_emb, t_emb, index)
    changed = (crd.memory_student.rows != before).any(dim=1)
    assert torch.equal(torch.nonzero(changed).flatten(), index.sort().values)
    torch.testing.assert_close(crd.memory_student.rows[index].norm(dim=1), torch.ones(B))


def test_init_memory_is_uniform_in_reference_bounds():
    rows = ContrastMemory(5000, FEAT).rows
    bound = 1 / math.sqrt(FEAT / 3)
    assert rows.min() >= -bound and rows.max() <= bound and rows.min() < -0.95 * bound


def test_init_memory_rows_by_hand_from_the_generator_given():
    # dim 12: bound 1 / sqrt(12 / 3) = 0.5 exactly, so rows are u - 0.5 for the generator's uniforms u, bit for bit.
    torch.manual_seed(123)  # the global stream differs from the given generator's
    rows = init_memory_rows(6, 12, generator=torch.Generator().manual_seed(7))
    uniforms = torch.rand(6, 12, generator=torch.Generator().manual_seed(7))
    assert rows.shape == (6, 12) and rows.dtype == torch.float32
    assert torch.equal(rows, uniforms - 0.5)
    # dim 27: bound 1/3, so the rows are u * 2/3 - 1/3.
    rows = init_memory_rows(5, 27, generator=torch.Generator().manual_seed(8))
    uniforms = torch.rand(5, 27, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(rows, uniforms * (2 / 3) - 1 / 3, rtol=0, atol=1e-7)


def test_contrast_memory_and_partition_estimate_defaults():
    memory = ContrastMemory(4, 3)
    assert (memory.momentum, memory.score_all_rows, memory.num_rows) == (0.5, None, 4)
    assert [name for name, _ in memory.named_buffers()] == ["rows"]
    assert memory.rows.shape == (4, 3) and memory.rows.dtype == torch.float32
    assert ContrastMemory(4, 3, dtype=torch.float16).rows.dtype == torch.float16

    z = PartitionEstimate()
    assert (z.z_estimate, z.z_momentum) == ("frozen", 0.99)
    assert list(z.state_dict()) == ["log_z", "initialised"]
    assert z.log_z.shape == () and z.log_z.dtype == torch.float64 and z.log_z.item() == 0.0
    assert z.initialised.shape == () and z.initialised.dtype == torch.bool and not z.initialised
    assert z(torch.tensor(2.0), update=True).item() == 2.0  # the first batch's estimate
    assert z(torch.tensor(5.0), update=True).item() == 2.0  # then frozen
    ema = PartitionEstimate("ema")
    ema(torch.tensor(2.0), update=True)
    expected = math.log(0.99 * math.exp(2.0) + 0.01 * math.exp(5.0))
    assert ema(torch.tensor(5.0), update=True).item() == pytest.approx(expected, rel=1e-12)


def test_score_multiplies_all_rows_up_to_32_k_rows_and_gathers_them_beyond():
    # Default (score_all_rows None): the (B, N) matmul while N <= 32 K, the gathered (B, K+1, D) rows above;
    # the autograd node tells which ran. An explicit choice holds at either size. The values are the same.
    anchors = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    index, negatives = torch.tensor([0, 1]), torch.tensor([[2, 3], [4, 5]])  # K = 2
    for num_rows, choice, node in ((64, None, "GatherBackward0"), (65, None, "SqueezeBackward1"),
                                   (65, True, "GatherBackward0"), (64, False, "SqueezeBackward1")):
        memory = ContrastMemory(num_rows, 3, score_all_rows=choice)
        scores = memory.score(anchors, index, negatives)
        assert scores.grad_fn.name() == node, (num_rows, choice)
        columns = torch.tensor([[0, 2, 3], [1, 4, 5]])
        by_hand = torch.stack([memory.rows[columns[b]] @ anchors[b] for b in range(2)])
        torch.testing.assert_close(scores, by_hand)


def test_half_rows_are_scored_in_float32_for_shared_and_per_sample_negatives():
    # Half rows are storage only: each path converts the rows it reads, so the scores equal float32 dot products
    # with the rounded rows, for one shared set of negatives as for per-anchor sets.
    anchors = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    index = torch.tensor([0, 4, 9])
    for dtype in (torch.float16, torch.bfloat16):
        memory = ContrastMemory(40, 8, dtype=dtype)
        rows = memory.rows.float()
        shared = torch.tensor([1, 2, 3, 5, 6])
        scores = memory.score(anchors, index, shared)
        assert scores.dtype == torch.float32 and scores.shape == (3, 6)
        torch.testing.assert_close(scores[:, 0], (anchors * rows[index]).sum(dim=1))
        torch.testing.assert_close(scores[:, 1:], anchors @ rows[shared].T)
        per_anchor = torch.tensor([[1, 2], [3, 5], [6, 7]])
        for all_rows in (True, False):
            memory.score_all_rows = all_rows
            scores = memory.score(anchors, index, per_anchor)
            columns = torch.cat([index[:, None], per_anchor], dim=1)
            assert scores.dtype == torch.float32
            torch.testing.assert_close(scores, torch.stack([rows[columns[b]] @ anchors[b] for b in range(3)]))


def test_state_dict_round_trip_gives_the_same_next_loss():
    crd = make_crd()
    for seed in (1, 2):
        run_crd(crd, *make_batch(seed=seed)).backward()
    restored = make_crd(seed=99)
    restored.load_state_dict(crd.state_dict())
    assert_continues_alike(crd, restored)


def test_autocast_and_small_temperature_keep_the_loss_finite_and_float32():
    crd = make_crd(nce_t=0.005)
    s_emb, t_emb, index = make_batch()
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = run_crd(crd, s_emb, t_emb, index)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_registered_as_crd_and_bad_settings_are_one_line_config_errors():
    assert DISTILLERS["crd"] is CRDLoss and CRDLoss.default_weight == 0.8
    with pytest.raises(ConfigError, match="mode='exactly'"):
        make_crd(mode="exactly")
    with pytest.raises(ConfigError, match="positive='fresh'"):
        make_crd(positive="fresh")
    with pytest.raises(ConfigError, match="needs the training labels"):
        CRDLoss(make_spec(labels=None), nce_k=K)
    with pytest.raises(ConfigError, match="nce_t"):
        make_crd(nce_t=0)
    with pytest.raises(ConfigError, match="299 training labels for 300"):
        CRDLoss(make_spec(labels=make_labels()[:299]), nce_k=K)
    relax = CRDLoss(make_spec(labels=None), nce_k=K, mode="relax")  # unlabeled data is fine in relax mode
    assert relax.classes is None


def test_settings_are_checked_at_both_ends_with_whole_messages():
    def refusal(spec=None, **params) -> str:
        with pytest.raises(ConfigError) as error:
            CRDLoss(spec or make_spec(make_labels()), **{"feat_dim": FEAT, "nce_k": K, **params})
        return str(error.value)

    assert refusal(z_estimate="stale") == "crd: z_estimate='stale' is not one of 'ema', 'frozen'"
    assert refusal(negatives="all") == "crd: negatives='all' is not one of 'per_sample', 'shared'"
    one_row = refusal(make_spec(num_rows=1), mode="relax")
    assert one_row == "crd: the training split has 1 sample(s); CRD needs at least 2"
    assert CRDLoss(make_spec(num_rows=2), feat_dim=FEAT, nce_k=1, mode="relax").num_rows == 2
    assert refusal(nce_k=0) == f"crd: nce_k=0 and feat_dim={FEAT} must be positive integers"
    assert refusal(feat_dim=0) == f"crd: nce_k={K} and feat_dim=0 must be positive integers"
    smallest = CRDLoss(make_spec(make_labels()), feat_dim=1, nce_k=1)
    assert (smallest.feat_dim, smallest.nce_k) == (1, 1)
    for nce_m, z_momentum in ((1, 0.99), (-0.1, 0.99), (0.5, 1), (0.5, -0.1)):
        assert refusal(nce_m=nce_m, z_momentum=z_momentum) == (
            f"crd: nce_m={nce_m} and z_momentum={z_momentum} must be in [0, 1)")
    ends = make_crd(nce_m=0, z_momentum=0)  # both ends included: a memory that takes the new embedding, a batch Z
    assert (ends.nce_m, ends.z_student_anchor.z_momentum) == (0.0, 0)


def test_per_sample_negatives_given_are_scored_as_given_even_the_anchors_own_row():
    # The shared-negative mask is for one set shared by the batch; a (B, K) override is every anchor's own set.
    crd = make_crd()
    s_emb, t_emb, index = make_batch()
    negatives = sample_negatives(index, K, N, crd.classes)
    negatives[:, 0] = index  # each anchor's own row among its negatives
    plain_loss, _, _, _ = plain_crd_step(crd, s_emb, t_emb, index, negatives)
    assert run_crd(crd, s_emb, t_emb, index, negatives).item() == pytest.approx(plain_loss.item(), rel=1e-5)


def test_exact_mode_refusals_say_why_whole_and_stop_exactly_at_one_class():
    with pytest.raises(ConfigError) as error:
        CRDLoss(make_spec(labels=None), nce_k=K)
    assert str(error.value) == ("crd: mode='exact' needs the training labels (spec.train_labels); "
                                "use mode='relax' for unlabeled data")
    one_class = torch.zeros(N, dtype=torch.long)
    with pytest.raises(ConfigError) as error:
        CRDLoss(make_spec(one_class), nce_k=K)
    assert str(error.value) == ("crd: every training sample has the same class, so mode='exact' has no "
                                "negatives; use mode='relax'")
    for other in (1, -1):  # one row of another class, or one unlabeled row: that row is every anchor's negative
        labels = one_class.clone()
        labels[7] = other
        assert CRDLoss(make_spec(labels), nce_k=K).classes.class_count[0].item() == N - 1


def test_exact_mode_keeps_a_count_for_every_configured_class_even_absent_ones():
    # Classes 5 and 6 of the spec's 7 have no training row: their counts are 0, so the buffers' shapes (and a
    # checkpoint's) follow the configuration, not which classes the split happens to hold.
    crd = CRDLoss(make_spec(torch.arange(N) % 5), nce_k=K)
    assert crd.classes.class_count.tolist() == [60, 60, 60, 60, 60, 0, 0]
    assert crd.classes.class_start.tolist() == [0, 60, 120, 180, 240, 300, 300]


def test_nce_k_must_be_below_the_training_split_and_the_message_suggests_half_of_it():
    crd = make_crd()  # nce_k = 50
    assert crd.check_training_split(51) is None
    for num_samples, suggested in ((50, 25), (1, 1)):
        with pytest.raises(ConfigError) as error:
            crd.check_training_split(num_samples)
        assert str(error.value) == (
            f"loss_params.crd.nce_k=50 is not below the {num_samples} samples of the training split; set it below "
            f"{num_samples} (e.g. --set loss_params.crd.nce_k={suggested})")


def test_shared_mode_draws_one_set_of_k_rows_for_the_whole_batch():
    s_emb, t_emb, index = make_batch()
    crd = make_crd(negatives="shared")
    torch.manual_seed(5)
    drawn = crd.draw_negatives(index)
    torch.manual_seed(5)
    assert drawn.shape == (K,) and torch.equal(drawn, sample_shared_negatives(K, N, "cpu"))
    torch.manual_seed(5)
    loss = run_crd(crd, s_emb, t_emb, index)  # draws the same set itself
    assert loss.item() == run_crd(make_crd(negatives="shared"), s_emb, t_emb, index, drawn).item()


# ------------------------------------------------------------ half-precision memory rows (memory_dtype)
# Unit roundoff u of the stored type: round-to-nearest changes a number x by at most u |x|, so a stored vector
# by at most u times its L2 norm.
UNIT_ROUNDOFF = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
# What float32 arithmetic adds on top, per step: the float32 test's own tolerances (rows atol 2e-6, loss
# rel 2e-5, Z rel 1e-5 in train_against_reference).
FP32_ROW, FP32_LOSS_REL, FP32_Z_REL = 2e-6, 2e-5, 1e-5


def nce_step_bound(logits, log_z, noise_ratio, delta, dz):
    """Bound on |loss(module) - loss(reference)| for one side of a step (rigorous, from the per-logit errors).

    The side's loss is (1/B) sum over its (B, K+1) logits of g(l - log Z), with g(x) = softplus(log(c + eps) - x)
    for the positive and softplus(x - log(c + eps)) + const for a negative (nce_loss); both have |g'| = 1 - h resp.
    h (h = sigmoid(x - log(c + eps)), the critic) and g'' = h (1 - h) <= 1/4. With each logit off by at most
    delta (B, K+1) and log Z by dz, Taylor's remainder gives |dg| <= |g'| d + d^2 / 8, d = delta + dz."""
    x = logits - log_z
    h = torch.sigmoid(x - math.log(noise_ratio + EPS))
    slope = torch.cat([1 - h[:, :1], h[:, 1:]], dim=1)
    d = delta + dz
    return (slope * d + d * d / 8).sum().item() / logits.shape[0]


def train_half_rows_against_reference(crd, reference, labels, unit, steps=24, batch_size=16, lr=2.0, seed=5):
    """Train `crd` (half rows) against `reference` (the float32 algorithm in float64, exact rows) for `steps` SGD
    steps; the reference follows the module's heads. Each row carries a bound e on ||row_module - row_exact||_2:
    u ||r0|| after the rounded init; after a write of v = m r + (1 - m) f (the exact v* has norm |v*|),
    e' = m e / (|v*| - m e) (normalisation is 1/|v|-Lipschitz along the segment from v* to v) + u (rounding the
    unit row) + FP32_ROW. A logit is off by at most (e_row + FP32_ROW) / tau, the frozen log Z by the largest
    logit error of the first batch (log-mean-exp is 1-Lipschitz), and the loss by nce_step_bound.
    Returns (losses, largest row error / its bound, largest loss error / its bound)."""
    num_rows, tau, m = labels.numel(), reference.tau, reference.momentum
    g = torch.Generator().manual_seed(seed)
    params = list(crd.parameters())
    recorded = []
    draw = crd.draw_negatives
    crd.draw_negatives = lambda index: recorded.append(draw(index)) or recorded[-1]
    bounds = [unit * mem.norm(dim=1) for mem in (reference.mem_s, reference.mem_t)]  # rounded initial rows
    dz = [None, None]
    losses, row_ratio, loss_ratio = [], 0.0, 0.0
    for step in range(steps):
        index = torch.randperm(num_rows, generator=g)[:batch_size]
        s_emb, t_emb = torch.randn(batch_size, S_DIM, generator=g), torch.randn(batch_size, T_DIM, generator=g)
        recorded.clear()
        crd.zero_grad()
        f_s, f_t = reference_heads(crd, s_emb, t_emb)
        loss = run_crd(crd, s_emb, t_emb, index)
        (negatives,) = recorded
        columns = torch.cat([index[:, None], negatives], dim=1)  # (B, K+1)
        before = (reference.mem_s.clone(), reference.mem_t.clone())
        loss_bound = 0.0
        # Student anchors meet the teacher memory (bounds[1]), teacher anchors the student memory (bounds[0]).
        for side, (anchors, memory, bound) in enumerate(((f_s, before[1], bounds[1]), (f_t, before[0], bounds[0]))):
            logits = (anchors @ memory.T).gather(1, columns) / tau  # (B, K+1), exact
            delta = (bound[columns] + FP32_ROW) / tau
            if dz[side] is None:  # the first batch sets the frozen Z
                dz[side] = delta.max().item()
                log_z = torch.logsumexp(logits.flatten(), 0) - math.log(logits.numel()) + math.log(num_rows)
            else:
                log_z = torch.tensor(math.log(reference.z[side]), dtype=torch.float64)
            loss_bound += nce_step_bound(logits, log_z, negatives.shape[1] / num_rows, delta, dz[side])
        expected = reference.step(f_s, f_t, index, negatives)
        loss.backward()
        error, allowed = abs(loss.item() - expected.item()), loss_bound + FP32_LOSS_REL * abs(expected.item())
        assert error <= allowed, f"step {step}: loss off by {error:.3g}, bound {allowed:.3g}"
        loss_ratio = max(loss_ratio, error / allowed)
        for side, (z, expected_z) in enumerate(((crd.z_student_anchor, reference.z[0]),
                                               (crd.z_teacher_anchor, reference.z[1]))):
            assert abs(z.log_z.item() - math.log(expected_z)) <= dz[side] + FP32_Z_REL, f"step {step}"
        # The rows' bounds after the write, then the module's rows against the exact ones.
        for old, bound, f in ((before[0], bounds[0], f_s), (before[1], bounds[1], f_t)):
            mixed_norm = (m * old[index] + (1 - m) * f).norm(dim=1)  # |v*|
            carried = m * bound[index]
            assert (carried < mixed_norm).all()  # the segment from v* to v stays away from 0
            bound[index] = carried / (mixed_norm - carried) + unit * (1 + FP32_ROW) + FP32_ROW
        for memory, exact, bound in ((crd.memory_student, reference.mem_s, bounds[0]),
                                     (crd.memory_teacher, reference.mem_t, bounds[1])):
            error = (memory.rows.double() - exact).norm(dim=1)  # (N,)
            assert (error <= bound).all(), f"step {step}: row off by {(error - bound).max():.3g} over its bound"
            row_ratio = max(row_ratio, (error / bound).max().item())
        with torch.no_grad():
            for p in params:
                p -= lr * p.grad
        losses.append(loss.item())
    crd.draw_negatives = draw
    return losses, row_ratio, loss_ratio


@pytest.mark.parametrize("memory_dtype, score_all_rows", [("float16", True), ("float16", False),
                                                          ("bfloat16", True)])
def test_half_memory_rows_stay_within_their_rounding_bound_of_the_reference_over_24_steps(memory_dtype, score_all_rows):
    """memory_dtype float16/bfloat16 against the per-sample float32 algorithm (exact rows): rows, Z and loss stay
    within the bounds that the half type's rounding implies (train_half_rows_against_reference), step by step."""
    labels = long_run_labels()
    params = dict(feat_dim=128, nce_k=40, nce_t=0.07, nce_m=0.5, z_estimate="frozen")
    torch.manual_seed(2)
    exact = build_distiller("crd", make_spec(labels, num_rows=64), **params)  # float32 rows: the reference's
    torch.manual_seed(2)
    crd = build_distiller("crd", make_spec(labels, num_rows=64), memory_dtype=memory_dtype, **params)
    dtype = getattr(torch, memory_dtype)
    assert crd.memory_student.rows.dtype == dtype and crd.memory_bytes() == 2 * 64 * 128 * dtype.itemsize
    assert torch.equal(crd.memory_teacher.rows, exact.memory_teacher.rows.to(dtype))  # the same draws, rounded
    for memory in (crd.memory_student, crd.memory_teacher):
        memory.score_all_rows = score_all_rows
    reference = ReferenceCRD(exact, tau=0.07, momentum=0.5, z_estimate="frozen", num_rows=64)
    unit = UNIT_ROUNDOFF[memory_dtype]
    losses, row_ratio, loss_ratio = train_half_rows_against_reference(crd, reference, labels, unit)
    assert len(set(losses)) == len(losses)
    assert crd.memory_student.rows.dtype == dtype  # still half after 24 writes
    # The rows did round (the comparison is not vacuous): some row is off by more than a tenth of its bound.
    print(f"{memory_dtype}: largest row error / bound {row_ratio:.3f}, loss error / bound {loss_ratio:.3f}")
    assert row_ratio > 0.1 and loss_ratio < 1


def test_half_memory_is_a_config_choice_and_checkpoints_keep_half_rows(tmp_path):
    with pytest.raises(ConfigError, match="memory_dtype='float8'"):
        make_crd(memory_dtype="float8")
    crd = make_crd(memory_dtype="float16")
    for seed in (1, 2):
        run_crd(crd, *make_batch(seed=seed)).backward()
    torch.save({"task": crd.state_dict()}, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["task"]
    assert state["memory_student.rows"].dtype == torch.float16
    restored = make_crd(seed=99, memory_dtype="float16")
    restored.load_state_dict(state)
    assert_continues_alike(crd, restored)
    note = make_crd().state_note()
    assert note == "crd: memories 2 x 300 rows x 16 float32 = 38.4 kB; loss_params.crd.memory_dtype: float16 halves it"


def test_memory_size_note_at_imagenet_scale():
    """2 x 1,281,167 x 128 x 4 bytes = 1.31 GB at float32 (the reference's), half that at float16."""
    shapes = lambda d: OutputShapes(features=[], preact_features=[], embedding=d, num_classes=1000)  # noqa: E731
    spec = DistillSpec(shapes(512), shapes(512), 1_281_167, 1000, None)
    notes = []
    for memory_dtype, size in (("float32", 4), ("float16", 2)):
        with torch.device("meta"):  # shapes and dtypes only: no 1.3 GB allocated
            crd = CRDLoss(spec, mode="relax", memory_dtype=memory_dtype)
        assert crd.memory_bytes() == 2 * 1_281_167 * 128 * size
        notes.append(crd.state_note())
    assert notes == ["crd: memories 2 x 1,281,167 rows x 128 float32 = 1.31 GB; "
                     "loss_params.crd.memory_dtype: float16 halves it",
                     "crd: memories 2 x 1,281,167 rows x 128 float16 = 656 MB"]


def test_memory_sizes_switch_unit_exactly_at_a_megabyte_and_a_gigabyte():
    assert [_decimal_size(n) for n in (10**9, 10**6, 100_000, 999)] == ["1 GB", "1 MB", "100 kB", "0.999 kB"]
    # sizes that round up to 1000 of a unit go to the next unit; sizes past 999 GB are written out
    assert [_decimal_size(n) for n in (999_999_999, 999_499, 999_500, 1_310_720_000, 5 * 10**12)] == [
        "1 GB", "999 kB", "1 MB", "1.31 GB", "5,000 GB"]


# --------------------------------------------------------------------------------------------------- DDP
DDP_SETTINGS = [dict(mode="exact", negatives="per_sample", z_estimate="ema"),
                dict(mode="relax", negatives="shared", z_estimate="frozen"),
                dict(mode="exact", negatives="per_sample", z_estimate="frozen", memory_dtype="float16")]
# One float16 ulp of a number below 1 in magnitude (a unit row's entries): a last-bit difference in the float32
# update (a product summed in another order on 1 rank and on 2) may round to the neighbouring float16.
HALF_ULP_BELOW_ONE = 2.0 ** -11


def ddp_step(settings, rank, world):
    """One CRD training step on this rank's slice of a fixed global batch; returns what must match."""
    crd = make_crd(seed=0, **settings)
    s_emb, t_emb, index = make_batch(seed=5, batch_size=8)
    b = 8 // world
    part = slice(rank * b, (rank + 1) * b)
    s_emb = s_emb[part].clone().requires_grad_(True)
    torch.manual_seed(11)  # the shared RNG stream of all ranks
    loss = run_crd(crd, s_emb, t_emb[part], index[part])
    loss.backward()
    return loss.detach(), head_grads(crd), s_emb.grad, crd


def _ddp_worker(rank, world, init_file, out_file):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    results = []
    for settings in DDP_SETTINGS:
        loss, grads, input_grad, crd = ddp_step(settings, rank, world)
        for value in [loss, *grads]:  # what DDP does to gradients (and what we report as the loss): the rank mean
            dist.all_reduce(value)
            value /= world
        parts = [torch.empty_like(input_grad) for _ in range(world)]
        dist.all_gather(parts, input_grad)
        # Each rank's loss averages b = B / world anchors, so its input gradients are world times the global ones.
        results.append({"loss": loss, "grads": grads, "input_grad": torch.cat(parts) / world,
                        "state": crd.state_dict()})
    torch.save(results, f"{out_file}.{rank}")  # every rank's: their states must be identical
    dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process_on_the_global_batch(tmp_path):
    world = 2
    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "init"), str(tmp_path / "out.pt")), nprocs=world)
    results, other_rank = (torch.load(tmp_path / f"out.pt.{rank}", weights_only=True) for rank in range(world))
    for settings, result, other in zip(DDP_SETTINGS, results, other_rank):
        for key, value in result["state"].items():  # memories, Z and class buffers: the same on every rank
            assert value.dtype == other["state"][key].dtype and torch.equal(value, other["state"][key]), key
        loss, grads, input_grad, crd = ddp_step(settings, 0, 1)
        assert result["loss"].item() == pytest.approx(loss.item(), rel=1e-5), settings
        for ours, single in zip(result["grads"], grads):
            torch.testing.assert_close(ours, single, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(result["input_grad"], input_grad, rtol=1e-4, atol=1e-6)
        half = settings.get("memory_dtype") == "float16"
        for key, value in crd.state_dict().items():
            atol = HALF_ULP_BELOW_ONE if half and key.endswith(".rows") else 1e-6
            torch.testing.assert_close(result["state"][key], value, rtol=1e-5, atol=atol, msg=key)
            assert result["state"][key].dtype == value.dtype
        if half:
            assert result["state"]["memory_student.rows"].dtype == torch.float16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: host syncs only show on a GPU")
@pytest.mark.parametrize("negatives", ["per_sample", "shared"])
def test_a_cuda_step_never_waits_for_the_host(negatives):
    crd = make_crd(negatives=negatives).cuda()
    s_emb, t_emb, index = (x.cuda() for x in make_batch())
    s_emb.requires_grad_(True)
    run_crd(crd, s_emb, t_emb, index).backward()  # first step: Z initialised, lazy CUDA setup done
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            run_crd(crd, s_emb, t_emb, index).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
