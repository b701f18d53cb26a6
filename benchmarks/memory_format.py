"""Memory format on the CPU: the same training steps with NCHW (contiguous) and NHWC (channels_last) tensors.

    python benchmarks/memory_format.py --threads 1 --out benchmarks/results/memory_format.md

`engine.channels_last: true` stores the weights and batches as NHWC, which oneDNN's CPU convolutions prefer.
Three steps of the CPU benchmarks, batch 64, SGD with momentum, forward + backward + update:
- teach resnet8 at 32 px (the labels-only students);
- distill resnet20 -> resnet8 at 32 px (the frozen teacher's forward, then the student's step: KD's shape);
- L -> ab mobilenetv3_small_100 at 96 px (the L teacher's forward, then the ab student's step).
Both formats run in one process, taking turns step by step; the ratio is NCHW time / NHWC time, medians over
the timed steps after warm-up. Writes the table (with the command and the machine) to --out and the numbers
to the .json beside it.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine_line  # noqa: E402
from crossmodal.models.registry import build_model  # noqa: E402
from crossmodal.tempfiles import atomic_write_text  # noqa: E402

# name -> (student arch, student channels, teacher arch or None, teacher channels, image side, classes)
CASES = {
    "teach resnet8, 32 px": ("resnet8", 3, None, 0, 32, 10),
    "distill resnet20 -> resnet8, 32 px": ("resnet8", 3, "resnet20", 3, 32, 10),
    "L -> ab mobilenetv3_small_100, 96 px": ("timm:mobilenetv3_small_100", 2, "timm:mobilenetv3_small_100", 1, 96, 10),
}


def make_step(case: tuple, fmt: torch.memory_format, batch: int, seed: int):
    """A closure running one training step of `case` with every tensor in memory format `fmt`."""
    arch, channels, teacher_arch, teacher_channels, side, classes = case
    torch.manual_seed(seed)
    student = build_model(arch, channels, classes).to(memory_format=fmt).train()
    teacher = build_model(teacher_arch, teacher_channels, classes).to(memory_format=fmt).eval() \
        if teacher_arch else None
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, channels, side, side).contiguous(memory_format=fmt)
    x_teacher = torch.randn(batch, teacher_channels or 1, side, side).contiguous(memory_format=fmt)
    y = torch.randint(0, classes, (batch,))

    def step():
        if teacher is not None:
            with torch.no_grad():
                teacher(x_teacher)
        loss = F.cross_entropy(student(x)["logits"], y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def measure(case: tuple, batch: int, steps: int, warmup: int) -> dict:
    formats = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}
    runs = {name: make_step(case, fmt, batch, seed=0) for name, fmt in formats.items()}
    times = {name: [] for name in runs}
    for i in range(warmup + steps):
        for name, step in runs.items():  # the formats take turns, so a change of load hits both
            start = time.perf_counter()
            step()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    return {"nchw_ms": ms["nchw"], "nhwc_ms": ms["nhwc"], "ratio": ms["nchw"] / ms["nhwc"],
            "nhwc_images_per_s": batch / ms["nhwc"] * 1e3}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--note", default="", help="the load on the machine, printed in the report")
    ap.add_argument("--out", type=Path, default=None, help="markdown report (and .json beside it)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = {name: measure(case, args.batch, args.steps, args.warmup) for name, case in CASES.items()}
    command = "python benchmarks/memory_format.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    lines = ["# NCHW vs channels_last (NHWC) training steps on the CPU", "",
             f"Command: `{command}`",
             f"Machine: CPU {machine_line()}, torch {torch.__version__}, {args.threads} thread(s)",
             *([f"Load: {args.note}"] if args.note else []),
             f"Batch {args.batch}; median of {args.steps} steps after {args.warmup} warm-up steps, the two formats "
             "taking turns step by step in one process.", "",
             "| step | NCHW ms | NHWC ms | NCHW / NHWC | NHWC images/s |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['nchw_ms']:.1f} | {r['nhwc_ms']:.1f} | {r['ratio']:.2f}x | {r['nhwc_images_per_s']:.0f} |"
              for name, r in rows.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        atomic_write_text(args.out, text)
        record = {"command": command, "machine": machine_line(), "python": platform.python_version(),
                  "torch": torch.__version__, "threads": args.threads, "batch": args.batch, "note": args.note,
                  "steps": args.steps, "warmup": args.warmup, "results": rows}
        atomic_write_text(args.out.with_suffix(".json"), json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
