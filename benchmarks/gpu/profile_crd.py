"""Where a CRD step's time goes: each part of the loss alone, against the KD loss, and the top kernels of the whole.

    python -m benchmarks.gpu.profile_crd --out-dir benchmarks/results           # on a CUDA machine (about a minute)
    python -m benchmarks.gpu.profile_crd --device cpu --quick --out-dir /tmp/p  # the script itself, on a CPU

The speed benchmark (benchmarks.gpu.speed) measured a +CRD step at 1.34x a +KD step on an H200 (target 1.10x)
and did not say why. This script takes the CRD loss of that setting apart (resnet32x4 -> resnet8x4 embeddings,
256 wide; batch 64, N 50,000 rows, K 16,384, feat_dim 128, 100 classes, the defaults: `mode: exact`, negatives
drawn without replacement, float32 memories) and times, each on its own:
  - the negative draw, as configured and in its two other variants (`mode: relax`; `replacement: true`),
  - the two heads, the scores against both memories (forward; forward + backward), the memory update,
  - the whole loss, forward + backward + update, with its own draw and with negatives given,
  - the KD loss of the same batch (forward + backward), the term +KD already pays.
Two numbers per part: the wall time per call of the eager part (a run of calls, then one synchronisation: on a
GPU, launch overhead included) and the device time per call (the sum of the part's kernels' self time from
torch.profiler: what a captured step, which launches nothing, still pays). The profile of the whole loss lists
its costliest operators. Writes gpu_profile_crd.md and gpu_profile_crd.json to --out-dir.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from benchmarks.gpu.common import device_line, synchronize
from crossmodal.losses.base import DistillSpec, OutputShapes
from crossmodal.losses.crd import CRDLoss
from crossmodal.tempfiles import atomic_write_text

SETTING = {"batch": 64, "num_rows": 50_000, "nce_k": 16_384, "feat_dim": 128, "embedding": 256, "classes": 100}
QUICK = {"batch": 16, "num_rows": 2_000, "nce_k": 256, "feat_dim": 32, "embedding": 64, "classes": 10}


def build_crd(setting: dict, device: torch.device, **options) -> CRDLoss:
    """A CRD loss in training mode for `setting`, classes i % C for row i, seeded."""
    torch.manual_seed(0)
    shape = OutputShapes(features=[], preact_features=[], embedding=setting["embedding"],
                         num_classes=setting["classes"])
    labels = torch.arange(setting["num_rows"]) % setting["classes"]
    spec = DistillSpec(shape, shape, setting["num_rows"], setting["classes"], labels)
    return CRDLoss(spec, feat_dim=setting["feat_dim"], nce_k=setting["nce_k"], **options).to(device).train()


def wall_ms(fn, device: torch.device, calls: int, runs: int) -> float:
    """Median over `runs` of the wall ms per call of `calls` calls in a row (one synchronisation at the end)."""
    per_call = []
    for _ in range(runs):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        per_call.append((time.perf_counter() - start) * 1000 / calls)
    return statistics.median(per_call)


def profiled(fn, device: torch.device, calls: int):
    """torch.profiler over `calls` calls: (ms of device self time per call, the operator averages)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        synchronize(device)
    averages = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total_us = sum(getattr(e, attr) for e in averages)
    return total_us / 1000 / calls, averages, attr


def top_operators(averages, attr: str, calls: int, rows: int = 12) -> list[dict]:
    """The `rows` operators with the most self time: name, ms per call, share of the part, occurrences per call."""
    total = sum(getattr(e, attr) for e in averages) or 1.0
    ranked = sorted(averages, key=lambda e: getattr(e, attr), reverse=True)[:rows]
    return [{"operator": e.key, "ms_per_call": round(getattr(e, attr) / 1000 / calls, 4),
             "share": round(getattr(e, attr) / total, 4), "count_per_call": round(e.count / calls, 2)}
            for e in ranked if getattr(e, attr) > 0]


def parts(setting: dict, device: torch.device) -> dict:
    """name -> a callable running that part once (inputs made here, outside the timed calls)."""
    crd = build_crd(setting, device)
    relax = build_crd(setting, device, mode="relax")
    iid = build_crd(setting, device, replacement=True)
    b, n = setting["batch"], setting["num_rows"]
    generator = torch.Generator().manual_seed(1)
    index = torch.randint(0, n, (b,), generator=generator).to(device)
    s_emb = torch.randn(b, setting["embedding"], generator=generator).to(device).requires_grad_()
    t_emb = torch.randn(b, setting["embedding"], generator=generator).to(device)
    s_out, t_out, batch = {"embedding": s_emb}, {"embedding": t_emb}, {"index": index}
    negatives = crd.draw_negatives(index)
    logits_s = torch.randn(b, setting["classes"], generator=generator).to(device).requires_grad_()
    logits_t = torch.randn(b, setting["classes"], generator=generator).to(device)
    with torch.no_grad():
        f_s, f_t = crd.embed_student(s_emb), crd.embed_teacher(t_emb)

    def heads():
        crd.embed_student(s_emb)
        crd.embed_teacher(t_emb)

    def scores_forward():
        with torch.no_grad():
            crd.memory_teacher.score(f_s, index, negatives)
            crd.memory_student.score(f_t, index, negatives)

    def scores_backward():
        a = f_s.detach().requires_grad_()
        c = f_t.detach().requires_grad_()
        (crd.memory_teacher.score(a, index, negatives).sum() + crd.memory_student.score(c, index, negatives).sum()
         ).backward()

    def whole(given=None):
        crd.zero_grad(set_to_none=True)
        s_emb.grad = None
        crd(s_out, t_out, batch, negatives=given).backward()

    def kd():
        logits_s.grad = None
        p_t = F.softmax(logits_t / 4, dim=1)
        (F.kl_div(F.log_softmax(logits_s / 4, dim=1), p_t, reduction="batchmean") * 16).backward()

    return {
        "negatives: exact, without replacement (the default)": lambda: crd.draw_negatives(index),
        "negatives: relax, without replacement": lambda: relax.draw_negatives(index),
        "negatives: exact, replacement: true": lambda: iid.draw_negatives(index),
        "heads (2 x Linear + L2 norm), forward": heads,
        "scores against both memories, forward": scores_forward,
        "scores against both memories, forward + backward": scores_backward,
        "memory update (both memories)": lambda: crd._update_memories(index, f_s, f_t),
        "whole CRD loss, forward + backward + update (default)": whole,
        "whole CRD loss, negatives given": lambda: whole(negatives),
        "KD loss (T 4), forward + backward": kd,
    }


def measure(setting: dict, device: torch.device, calls: int, runs: int) -> dict:
    """Every part's wall and device ms per call, and the top operators of the whole default loss."""
    rows, top = [], []
    for name, fn in parts(setting, device).items():
        for _ in range(2):  # warm-up: allocator, kernels' first launch
            fn()
        wall = wall_ms(fn, device, calls, runs)
        device_ms, averages, attr = profiled(fn, device, calls)
        rows.append({"part": name, "wall_ms": round(wall, 4), "device_ms": round(device_ms, 4)})
        if name.startswith("whole CRD loss, forward"):
            top = top_operators(averages, attr, calls)
    return {"rows": rows, "top_operators": top}


def markdown(result: dict) -> str:
    s = result["setting"]
    lines = [
        "# Where a CRD step's time goes",
        "",
        f"Device: {result['device']}. Setting: batch {s['batch']}, N {s['num_rows']:,} rows, K {s['nce_k']:,}, "
        f"feat_dim {s['feat_dim']}, embeddings {s['embedding']} wide, {s['classes']} classes; CRD's defaults "
        f"(`mode: exact`, without replacement, float32 memories). {result['calls']} calls per measurement, wall "
        f"time the median of {result['runs']} runs. Command: `{result['command']}`.",
        "",
        "Wall: eager calls in a row, one synchronisation at the end (launch overhead included). Device: the "
        "part's kernels' self time from torch.profiler (on a CPU, its operators' CPU self time), which a captured "
        "step still pays.",
        "",
        "| part | wall ms / call | device ms / call |",
        "|---|---|---|",
    ]
    lines += [f"| {r['part']} | {r['wall_ms']:.3f} | {r['device_ms']:.3f} |" for r in result["rows"]]
    lines += ["", "Costliest operators of the whole default loss (forward + backward + update), per call:", "",
              "| operator | ms / call | share | calls |", "|---|---|---|---|"]
    lines += [f"| `{t['operator']}` | {t['ms_per_call']:.4f} | {100 * t['share']:.1f} % | {t['count_per_call']:g} |"
              for t in result["top_operators"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--quick", action="store_true", help="a small setting and few calls: checks the script only")
    ap.add_argument("--out-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here; use --device cpu --quick to check the script")
    device = torch.device(args.device)
    setting = QUICK if args.quick else SETTING
    calls, runs = (3, 2) if args.quick else (50, 5)
    result = {"device": device_line(device), "setting": setting, "calls": calls, "runs": runs,
              "command": "python -m benchmarks.gpu.profile_crd " + " ".join(
                  (["--device", args.device] if args.device != "cuda" else []) + (["--quick"] if args.quick else [])
                  + ["--out-dir", str(args.out_dir)]),
              **measure(setting, device, calls, runs)}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / "gpu_profile_crd.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(args.out_dir / "gpu_profile_crd.md", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
