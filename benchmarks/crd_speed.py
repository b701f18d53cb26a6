"""CRD speed: our CRDLoss against the reference code's algorithm, alone and inside a distillation step.

    python benchmarks/crd_speed.py --threads 2 --out benchmarks/results/crd_speed.md

Part 1 times the CRD loss alone (heads, scores, NCE, memory update; forward + backward) at batch 64,
feat_dim 128, N 50000 rows (CIFAR-100 sized, 100 balanced classes), for K = 4096 and 16384:
- "reference": the reference code's algorithm, done the way it does it: each sample's K negatives drawn
  with numpy in the data pipeline (np.random.choice over the other classes' rows, without replacement when
  K fits), the (B, K+1) index block sent to the device, then index_select + bmm, Z read back with .item();
- ours, per-sample negatives drawn without replacement like the reference (the default: on a CPU numpy's
  choice from per-anchor seeds; on a CPU also the devices' draw, keys + topk, for comparison) or i.i.d.
  (`replacement: true`), scoring all rows with one matmul or gathering (B, K, D) rows like the reference;
- ours, one shared set of K negatives per batch.
Part 2 times a whole training step resnet32x4 -> resnet8x4 (batch 64, 32 px, K 16384): student alone (CE),
+KD, +CRD (ours, per-sample and shared negatives), +CRD (reference algorithm).
Timings are medians over steps after warm-up, in one process, the variants taking turns step by step.
Peak memory: torch.cuda.max_memory_allocated on CUDA; on CPU, the peak resident set size above the level
before the steps, sampled every 0.5 ms from /proc/self/statm by a thread (large tensors are mmap'ed, so RSS
follows them).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from crossmodal.losses.base import DistillSpec, OutputShapes
from crossmodal.losses.contrast_memory import init_memory_rows
from crossmodal.losses.crd import CRDLoss, EmbedHead
from crossmodal.tempfiles import atomic_write_text

EMBED_DIM = 256  # resnet8x4 and resnet32x4 both pool to 256


# ---------------------------------------------------------------------------- the reference algorithm
class ReferenceNegativeSampler:
    """The reference data pipeline's per-sample numpy draw of contrast indices (positive first)."""

    def __init__(self, labels: np.ndarray, k: int):
        self.k = k
        self.labels = labels
        everything = np.arange(len(labels))
        self.other_class_rows = [everything[labels != c] for c in range(labels.max() + 1)]

    def draw(self, index: np.ndarray) -> np.ndarray:
        """(B, K+1) int64: each sample's own row, then K rows of other classes, one sample at a time."""
        rows = []
        for i in index:
            pool = self.other_class_rows[self.labels[i]]
            negatives = np.random.choice(pool, self.k, replace=self.k > len(pool))
            rows.append(np.hstack(([i], negatives)))
        return np.stack(rows)


class ReferenceCRD(nn.Module):
    """CRD computed as the reference code computes it: gather (B, K+1, D) rows, bmm, exp, divide by Z."""

    def __init__(self, s_dim, t_dim, feat_dim, num_rows, tau=0.07, momentum=0.5):
        super().__init__()
        self.embed_student, self.embed_teacher = EmbedHead(s_dim, feat_dim), EmbedHead(t_dim, feat_dim)
        self.register_buffer("memory_student", init_memory_rows(num_rows, feat_dim))
        self.register_buffer("memory_teacher", init_memory_rows(num_rows, feat_dim))
        self.tau, self.momentum, self.num_rows = tau, momentum, num_rows
        self.z = [-1.0, -1.0]  # set from the first batch, read back to the host every step

    def side(self, anchors, memory, contrast_index, which):
        """exp(rows . anchor / tau) / Z for one side: (B, K+1)."""
        b, k1 = contrast_index.shape
        weights = torch.index_select(memory, 0, contrast_index.view(-1)).view(b, k1, -1)  # (B, K+1, D)
        out = torch.exp(torch.bmm(weights, anchors[:, :, None]).squeeze(2) / self.tau)  # (B, K+1)
        if self.z[which] < 0:
            self.z[which] = (out.mean() * self.num_rows).item()
        return out / self.z[which]

    def nce(self, p):
        """The reference's NCE loss on P = (B, K+1), positive first."""
        c = (p.shape[1] - 1) / self.num_rows
        log_d1 = torch.log(p[:, 0] / (p[:, 0] + c + 1e-7))
        log_d0 = torch.log(c / (p[:, 1:] + c + 1e-7))
        return -(log_d1.sum() + log_d0.sum()) / p.shape[0]

    def forward(self, s_emb, t_emb, index, contrast_index):
        f_s, f_t = self.embed_student(s_emb), self.embed_teacher(t_emb)
        loss = self.nce(self.side(f_s, self.memory_teacher, contrast_index, 0))
        loss = loss + self.nce(self.side(f_t, self.memory_student, contrast_index, 1))
        with torch.no_grad():
            for memory, emb in ((self.memory_student, f_s), (self.memory_teacher, f_t)):
                rows = memory.index_select(0, index) * self.momentum + emb * (1 - self.momentum)
                memory.index_copy_(0, index, rows / rows.norm(dim=1, keepdim=True))
        return loss


# ------------------------------------------------------------------------------------------- measuring
class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator stats, or polled RSS on CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.base)
            time.sleep(0.0005)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base, self._stop = self._rss(), threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self._thread.join()


def time_interleaved(steps_by_name: dict, device, steps: int, warmup: int) -> dict:
    """{name: (median ms per step, peak MiB)}; variants take turns step by step, so load changes hit all alike."""
    for _ in range(warmup):
        for step in steps_by_name.values():
            step()
    times = {name: [] for name in steps_by_name}
    peaks = dict.fromkeys(steps_by_name, 0.0)
    for _ in range(steps):
        for name, step in steps_by_name.items():
            with PeakMemory(device) as memory:
                start = time.perf_counter()
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append((time.perf_counter() - start) * 1e3)
            peaks[name] = max(peaks[name], memory.peak / 2**20)
    return {name: (statistics.median(times[name]), peaks[name]) for name in steps_by_name}


def crd_spec(num_rows, labels):
    shapes = OutputShapes(features=[], preact_features=[], embedding=EMBED_DIM, num_classes=100)
    return DistillSpec(shapes, shapes, num_rows, 100, torch.as_tensor(labels))


# ----------------------------------------------------------------------------------- part 1: loss alone
def loss_alone(args, device, k):
    """Rows of (variant, ms/step, numpy sampling ms, peak MiB) for the CRD loss alone at this K."""
    labels = np.repeat(np.arange(100), args.num_rows // 100)
    s_emb = torch.randn(args.batch_size, EMBED_DIM, device=device)
    t_emb = torch.randn(args.batch_size, EMBED_DIM, device=device)
    order = torch.randperm(args.num_rows)
    cursor = [0]

    def next_index():
        cursor[0] = (cursor[0] + args.batch_size) % (args.num_rows - args.batch_size)
        return order[cursor[0]:cursor[0] + args.batch_size]

    sampler = ReferenceNegativeSampler(labels, k)
    reference = ReferenceCRD(EMBED_DIM, EMBED_DIM, 128, args.num_rows).to(device)
    sample_ms = []

    def reference_step():
        index = next_index()
        start = time.perf_counter()
        contrast = torch.from_numpy(sampler.draw(index.numpy())).to(device)
        sample_ms.append((time.perf_counter() - start) * 1e3)
        reference.zero_grad(set_to_none=True)
        reference(s_emb, t_emb, index.to(device), contrast).backward()

    def our_step(crd):
        def step():
            crd.zero_grad(set_to_none=True)
            crd({"embedding": s_emb}, {"embedding": t_emb}, {"index": next_index().to(device)}).backward()
        return step

    steps = {"reference (numpy per-sample sampling + gather + bmm)": reference_step}
    for name, params, all_rows, method in (
            ("ours, per_sample without replacement (default), all-rows matmul", {}, True, None),
            ("ours, per_sample without replacement drawn by keys + topk (a device's draw), all-rows matmul", {},
             True, "keys"),
            ("ours, per_sample, replacement: true, all-rows matmul", {"replacement": True}, True, None),
            ("ours, per_sample without replacement, gathered rows", {}, False, None),
            ("ours, shared", {"negatives": "shared"}, None, None)):
        if method is not None and method == ("keys" if device.type != "cpu" else "seeds"):
            continue  # the device's own draw: the default row already times it
        crd = CRDLoss(crd_spec(args.num_rows, labels), feat_dim=128, nce_k=k, **params).to(device)
        crd.memory_student.score_all_rows = crd.memory_teacher.score_all_rows = all_rows
        crd.draw_method = method
        steps[name] = our_step(crd)
    results = time_interleaved(steps, device, args.steps, args.warmup)
    return [(name, ms, statistics.median(sample_ms) if name.startswith("reference") else None, peak)
            for name, (ms, peak) in results.items()]


# -------------------------------------------------------------------------------- part 2: whole steps
def whole_steps(args, device):
    """Rows of (setting, ms/step, peak MiB) for resnet32x4 -> resnet8x4 training steps, or None without the zoo."""
    try:
        from crossmodal.models.registry import build_model

        teacher = build_model("resnet32x4", in_chans=3, num_classes=100).to(device).eval()
        student = build_model("resnet8x4", in_chans=3, num_classes=100).to(device)
    except Exception as err:  # the zoo is written by another part; report, do not fail
        print(f"skipping whole steps: {err}", file=sys.stderr)
        return None
    k = 16384
    labels = np.repeat(np.arange(100), args.num_rows // 100)
    images = torch.randn(args.batch_size, 3, 32, 32, device=device)
    targets = torch.randint(0, 100, (args.batch_size,), device=device)
    order = torch.randperm(args.num_rows)
    crd = CRDLoss(crd_spec(args.num_rows, labels), nce_k=k).to(device)
    crd_shared = CRDLoss(crd_spec(args.num_rows, labels), nce_k=k, negatives="shared").to(device)
    reference = ReferenceCRD(EMBED_DIM, EMBED_DIM, 128, args.num_rows).to(device)
    sampler = ReferenceNegativeSampler(labels, k)
    params = [p for module in (student, crd, crd_shared, reference) for p in module.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)

    def kd(s_logits, t_logits, temperature=4.0):  # Hinton's KD, written inline to keep the benchmark standalone
        return F.kl_div(F.log_softmax(s_logits / temperature, 1), F.softmax(t_logits / temperature, 1),
                        reduction="batchmean") * temperature**2

    def make_step(extra):
        def step():
            index = order[:args.batch_size]
            contrast = torch.from_numpy(sampler.draw(index.numpy())).to(device) if extra == "crd_reference" else None
            with torch.no_grad():
                t_out = teacher(images)
            s_out = student(images)
            loss = F.cross_entropy(s_out["logits"], targets)
            if extra == "kd":
                loss = loss + kd(s_out["logits"], t_out["logits"])
            elif extra in ("crd", "crd_shared"):
                distiller = crd if extra == "crd" else crd_shared
                loss = loss + 0.8 * distiller(s_out, t_out, {"index": index.to(device)})
            elif extra == "crd_reference":
                loss = loss + 0.8 * reference(s_out["embedding"], t_out["embedding"], index.to(device), contrast)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step

    settings = {"student alone (CE)": None, "+KD": "kd", "+CRD (ours)": "crd",
                "+CRD (ours, negatives=shared)": "crd_shared", "+CRD (reference algorithm)": "crd_reference"}
    results = time_interleaved({name: make_step(extra) for name, extra in settings.items()},
                               device, args.steps, args.warmup)
    return [(name, ms, peak) for name, (ms, peak) in results.items()]


# ------------------------------------------------------------------------------------------------ report
def machine_line(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return f"CPU {cpu} ({os.cpu_count()} cores visible), torch {torch.__version__}, {torch.get_num_threads()} threads"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ks", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-rows", type=int, default=50000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--skip-models", action="store_true", help="only part 1 (the loss alone)")
    parser.add_argument("--note", default="", help="what else ran on the machine, for the record")
    parser.add_argument("--out", type=Path, help="write the markdown report here (atomically)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    device = torch.device(args.device)

    command = f"python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:] if argv is None else argv)}"
    lines = [f"# CRD speed ({args.device})", "",
             f"Command: `{command}`",
             f"Machine: {machine_line(device)}", *([f"Load: {args.note}"] if args.note else []),
             f"Median of {args.steps} steps after {args.warmup} warm-up steps, variants interleaved. Peak memory: "
             + ("torch.cuda.max_memory_allocated above the allocated level before the steps." if device.type == "cuda"
                else "peak RSS above the level before the steps, polled every 0.5 ms from /proc/self/statm."), "",
             f"## CRD loss alone (forward + backward + memory update), batch {args.batch_size}, feat 128, "
             f"N {args.num_rows}", "",
             "| K | variant | ms/step | of which numpy sampling | speed-up vs reference | peak MiB |",
             "|---|---|---|---|---|---|"]
    record = {"command": command, "machine": machine_line(device), "load": args.note,
              "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size, "num_rows": args.num_rows,
              "loss_alone": [], "training_step": None}
    for k in args.ks:
        rows = loss_alone(args, device, k)
        reference_ms = rows[0][1]
        for name, ms, sample_ms, peak in rows:
            # The table is written from the JSON's rounded numbers: formatting the raw float for the table and
            # rounding it for the JSON can disagree in the last shown digit (1.04951 -> "1.0" but 1.05 -> "1.1").
            row = {"k": k, "variant": name, "ms_per_step": round(ms, 3),
                   "reference_sampling_ms": None if sample_ms is None else round(sample_ms, 3),
                   "speedup_vs_reference": round(reference_ms / ms, 3), "peak_mib": round(peak, 1)}
            record["loss_alone"].append(row)
            sampling = "-" if row["reference_sampling_ms"] is None else f"{row['reference_sampling_ms']:.1f}"
            lines.append(f"| {k} | {name} | {row['ms_per_step']:.1f} | {sampling} | "
                         f"{row['speedup_vs_reference']:.2f}x | {row['peak_mib']:.0f} |")
            print(lines[-1], flush=True)
    if not args.skip_models:
        rows = whole_steps(args, device)
        lines += ["", f"## Training step resnet32x4 -> resnet8x4, batch {args.batch_size}, 32 px, K 16384, "
                  "SGD step included", ""]
        if rows is None:
            lines.append("skipped: crossmodal.models could not build resnet32x4 / resnet8x4")
        else:
            kd_ms = rows[1][1]
            lines += ["| setting | ms/step | vs +KD | peak MiB |", "|---|---|---|---|"]
            record["training_step"] = [{"setting": name, "ms_per_step": round(ms, 3),
                                        "vs_kd": round(ms / kd_ms, 3), "peak_mib": round(peak, 1)}
                                       for name, ms, peak in rows]
            for row in record["training_step"]:
                lines.append(f"| {row['setting']} | {row['ms_per_step']:.1f} | {row['vs_kd']:.2f}x | "
                             f"{row['peak_mib']:.0f} |")
                print(lines[-1], flush=True)
    report = "\n".join(lines) + "\n"
    if args.out:
        atomic_write_text(args.out, report)
        atomic_write_text(args.out.with_suffix(".json"), json.dumps(record, indent=1) + "\n")
    else:
        print(report)


if __name__ == "__main__":
    main()
