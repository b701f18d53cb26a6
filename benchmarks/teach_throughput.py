"""Training throughput of `teach` (the Trainer) against a bare PyTorch loop, on CPU.

    python benchmarks/teach_throughput.py [--data PREPARED.h5] [--archs resnet8x4 resnet32x4]
                                          [--steps 20 5] [--repeats 3] [--threads 2]

For each architecture, alternately (to share the machine's noise fairly) and `--repeats` times:
- engine: the Trainer as `crossmodal teach` runs it: data preloaded, paired crop+flip
  augmentation, DataLoader (0 workers), SGD, per-iteration lr schedule, metrics; images/s is
  the Trainer's own `images_per_s` of the second epoch (the first pays one-time start-up costs).
- bare: the same model and optimiser, batch 64 sliced from an in-memory tensor (no augmentation,
  no loader): forward, cross-entropy, backward, step; timed after one warm-up step.
The medians and their ratio are printed as a Markdown table; --out also writes it (with the command and the
machine) to a markdown file, and the numbers (medians and every repeat) to the .json beside it. Without --data a
32x32, 100-class prepared file is generated (throughput does not depend on the pixels).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

import crossmodal
from crossmodal.data.schema import SCHEMA_VERSION
from crossmodal.engine.logging import get_logger, read_metrics
from crossmodal.models import build_model
from crossmodal.sections import AugmentConfig, DataConfig, EngineConfig, ModelConfig, OptimConfig
from crossmodal.tasks.teach import TeachConfig, run_teach
from crossmodal.tempfiles import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import git_commit, machine_line  # noqa: E402

BATCH = 64


def synthetic_prepared(path: Path, n_train: int = 2048, n_test: int = 64, classes: int = 100) -> Path:
    """A schema-valid prepared file of random 32x32 rgb images."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for split, n in (("train", n_train), ("test", n_test)):
            group = f.create_group(split)
            images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
            group.create_dataset("rgb", data=images, chunks=(1, 3, 32, 32))
            group.create_dataset("label", data=np.arange(n, dtype=np.int64) % classes)
        f.attrs.update(schema_version=SCHEMA_VERSION, crossmodal_version=crossmodal.__version__, source="benchmark",
                       provenance=json.dumps({"synthetic": True}),
                       class_names=json.dumps([f"c{i}" for i in range(classes)]),
                       stats=json.dumps({"rgb": {"mean": [0.5] * 3, "std": [0.29] * 3}}))
    return path


def engine_images_per_s(data: Path, arch: str, steps: int, out_dir: Path, tag: str) -> float:
    """Run teach for 2 epochs of `steps` steps; the Trainer's images/s of epoch 2."""
    cfg = TeachConfig(
        name=f"{arch}-{tag}", out_dir=str(out_dir), seed=0,
        data=DataConfig(path=str(data), augment=AugmentConfig(crop=32, padding=4, hflip=True), preload=True, workers=0),
        model=ModelConfig(arch=arch),
        optim=OptimConfig(lr=0.05, batch_size=BATCH, epochs=2, milestones=[150]),
        engine=EngineConfig(device="cpu", max_steps_per_epoch=steps, progress=False, log_every=10**9))
    run_teach(cfg)
    return read_metrics(out_dir / cfg.name / "metrics.csv")[1]["images_per_s"]


def bare_images_per_s(data: Path, arch: str, steps: int) -> float:
    """Same model and SGD on batches sliced from an in-memory, pre-normalised tensor."""
    with h5py.File(data, "r") as f:
        x = torch.from_numpy(f["train"]["rgb"][:]).float().div_(255).sub_(0.5).div_(0.29)  # (N, 3, 32, 32)
        y = torch.from_numpy(f["train"]["label"][:])
        num_classes = int(y.max()) + 1
    torch.manual_seed(0)
    model = build_model(arch, in_chans=3, num_classes=num_classes).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    order = torch.randperm(len(x))

    def step(i: int) -> None:
        idx = order[(i * BATCH) % (len(x) - BATCH):][:BATCH]
        loss = F.cross_entropy(model(x[idx])["logits"], y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(0)  # warm-up: allocator, kernels
    start = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    return steps * BATCH / (time.perf_counter() - start)


def main(argv=None) -> None:
    """Measure, print a Markdown table and the machine; with --out write them, and the numbers as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="prepared file with a 32x32 rgb train split (default: synthetic)")
    parser.add_argument("--archs", nargs="+", default=["resnet8x4", "resnet32x4"])
    parser.add_argument("--steps", nargs="+", type=int, default=[20, 5], help="timed steps per arch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file (and .json beside it)")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "benchmarks/teach_throughput.py", *(sys.argv[1:] if argv is None else argv)])
    torch.set_num_threads(args.threads)
    get_logger().setLevel("WARNING")  # no per-epoch lines in the table output
    record = {"command": command, "machine": machine_line(), "commit": git_commit(), "torch": torch.__version__,
              "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": args.threads,
              "repeats": args.repeats, "batch": BATCH, "data": str(args.data) if args.data else "synthetic",
              "load_before": os.getloadavg()[0], "results": [], "load_after": None}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data or synthetic_prepared(tmp / "bench.h5")
        where = (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
                 f"torch {torch.__version__}, {args.threads} threads, load average {record['load_before']:.1f}")
        print(where, flush=True)
        table = ["| arch | steps | engine img/s | bare img/s | engine / bare |", "|---|---|---|---|---|"]
        print("\n" + "\n".join(table))
        for arch, steps in zip(args.archs, args.steps):
            engine, bare = [], []
            for r in range(args.repeats):
                bare.append(bare_images_per_s(data, arch, steps))
                engine.append(engine_images_per_s(data, arch, steps, tmp / "runs", str(r)))
                print(f"  {arch} repeat {r}: engine {engine[-1]:.1f}, bare {bare[-1]:.1f} img/s",
                      file=sys.stderr, flush=True)
            e, b = statistics.median(engine), statistics.median(bare)
            row = {"arch": arch, "steps": steps, "engine_images_per_s": e, "bare_images_per_s": b,
                   "engine_over_bare": e / b, "engine_per_repeat": engine, "bare_per_repeat": bare}
            record["results"].append(row)
            table.append(f"| {row['arch']} | {row['steps']} | {row['engine_images_per_s']:.1f} | "
                         f"{row['bare_images_per_s']:.1f} | {row['engine_over_bare']:.3f} |")
            print(table[-1], flush=True)
        record["load_after"] = os.getloadavg()[0]
        print(f"\nload average after: {record['load_after']:.1f}")
    if args.out is not None:
        lines = ["# `teach` throughput: the engine vs a bare PyTorch loop (CPU)", "", f"Command: `{command}`", "",
                 where, "", *table, "", "Per repeat (engine img/s, bare img/s):", ""]
        for r in record["results"]:
            pairs = zip(r["engine_per_repeat"], r["bare_per_repeat"])
            lines.append(f"- {r['arch']}: " + ", ".join(f"({e:.1f}, {b:.1f})" for e, b in pairs))
        lines += ["", f"load average after: {record['load_after']:.1f}"]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, "\n".join(lines) + "\n")
        atomic_write_text(args.out.with_suffix(".json"), json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
