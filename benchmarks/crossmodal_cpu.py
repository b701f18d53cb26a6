"""Cross-modal transfer on real data, CPU-sized: Imagenette-96 L -> ab (linear probe) and nyu18 RGB -> depth (dense probe).

    python -m benchmarks.crossmodal_cpu [--results benchmarks/results/crossmodal_cpu.md]

Runs the shipped commands in order, skipping any step whose output already exists (so a killed
benchmark continues), then writes a markdown table. Each step is a command a user can run alone:
    crossmodal prepare imagefolder ../shared/data/imagenette2-96.tgz --out data/imagenette.h5 --modalities rgb,L,ab
    crossmodal teach configs/cpu/imagenette_L_mobilenetv3.yaml
    crossmodal distill configs/cpu/imagenette_L_to_ab_{crd,kd}.yaml
    crossmodal probe linear --checkpoint runs/imagenette_L_to_ab_crd/last.pt --data data/imagenette.h5 --random-init
    crossmodal prepare rgbd ../shared/data/nyu18 --out data/nyu18.h5 --modalities rgb,depth --size 96
    crossmodal teach configs/cpu/imagenette_rgb_mobilenetv3.yaml
    crossmodal distill configs/cpu/nyu18_rgb_to_depth_crd.yaml
    crossmodal probe dense configs/probe/nyu18_depth_dense.yaml --checkpoint runs/nyu18_rgb_to_depth_crd/last.pt
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from crossmodal.config import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def step(cmd: list[str], done: Path) -> list[str]:
    """Run `cmd` (from the repo root) unless `done` exists; return the command for the table."""
    if not done.exists():
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)
    return cmd


def probe_rows(name: str) -> list[dict]:
    """Rows of results.json of probe run runs/probe/<name>."""
    return json.loads((REPO / "runs" / "probe" / name / "results.json").read_text())["rows"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="benchmarks/results/crossmodal_cpu.md")
    args = parser.parse_args()
    for need in ("imagenette2-96.tgz", "nyu18"):
        if not (SHARED / need).exists():
            sys.exit(f"skipped: {SHARED / need} absent (the benchmark reads real data)")
    runs, data = REPO / "runs", REPO / "data"
    cmds = []
    cmds.append(step(["crossmodal", "prepare", "imagefolder", str(SHARED / "imagenette2-96.tgz"), "--out",
                      "data/imagenette.h5", "--modalities", "rgb,L,ab"], data / "imagenette.h5"))
    cmds.append(step(["crossmodal", "teach", "configs/cpu/imagenette_L_mobilenetv3.yaml"],
                     runs / "imagenette_L_mobilenetv3" / "summary.json"))
    for method in ("crd", "kd"):
        cmds.append(step(["crossmodal", "distill", f"configs/cpu/imagenette_L_to_ab_{method}.yaml"],
                         runs / f"imagenette_L_to_ab_{method}" / "summary.json"))
        cmds.append(step(["crossmodal", "probe", "linear", "--checkpoint", f"runs/imagenette_L_to_ab_{method}/last.pt",
                          "--data", "data/imagenette.h5", "--modality", "ab", "--name", f"ab_{method}_linear"]
                         + (["--random-init"] if method == "crd" else []),
                         runs / "probe" / f"ab_{method}_linear" / "results.json"))
    cmds.append(step(["crossmodal", "probe", "linear", "--checkpoint", "runs/imagenette_L_mobilenetv3/best.pt",
                      "--data", "data/imagenette.h5", "--modality", "L", "--name", "L_teacher_linear"],
                     runs / "probe" / "L_teacher_linear" / "results.json"))
    cmds.append(step(["crossmodal", "prepare", "rgbd", str(SHARED / "nyu18"), "--out", "data/nyu18.h5",
                      "--modalities", "rgb,depth", "--size", "96"], data / "nyu18.h5"))
    cmds.append(step(["crossmodal", "teach", "configs/cpu/imagenette_rgb_mobilenetv3.yaml"],
                     runs / "imagenette_rgb_mobilenetv3" / "summary.json"))
    cmds.append(step(["crossmodal", "distill", "configs/cpu/nyu18_rgb_to_depth_crd.yaml"],
                     runs / "nyu18_rgb_to_depth_crd" / "summary.json"))
    cmds.append(step(["crossmodal", "probe", "dense", "configs/probe/nyu18_depth_dense.yaml", "--checkpoint",
                      "runs/nyu18_rgb_to_depth_crd/last.pt", "--name", "nyu18_depth_dense"],
                     runs / "probe" / "nyu18_depth_dense" / "results.json"))

    import torch

    teacher = json.loads((runs / "imagenette_L_mobilenetv3" / "summary.json").read_text())
    lines = [
        "# Cross-modal transfer on real data, CPU-sized",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}.",
        "Budgets (stated plainly): teachers 6 epochs x 60 steps x 64 images; students 4 x 60 x 64 (L -> ab) and",
        "60 x 1 x 10 frames (nyu18); timm mobilenetv3_small_100 everywhere, 96 px. These are functional",
        "numbers at a tiny budget, not the paper's.",
        "",
        "## Imagenette-96 L -> ab (students learn from the L teacher without labels; linear probe on ab)",
        "",
        f"L teacher (supervised, labels): test top-1 {teacher['final_test_top1']:.2f}% "
        f"(`crossmodal teach configs/cpu/imagenette_L_mobilenetv3.yaml`).",
        "",
        "| network | modality | linear probe top-1 | top-5 |",
        "|---|---|---|---|",
    ]
    for name in ("L_teacher_linear", "ab_crd_linear", "ab_kd_linear"):
        for row in probe_rows(name):
            label = row.get("label") or row.get("checkpoint")
            lines.append(f"| {label} | {row['modality']} | {row['top1']:.2f} | {row['top5']:.2f} |")
    lines += ["", "## nyu18 RGB -> depth (dense probe, 13 classes, 2-fold over the 8 labelled frames: a functional "
              "check)", "", "| network | pixel accuracy | mIoU |", "|---|---|---|"]
    for row in probe_rows("nyu18_depth_dense"):
        label = row.get("label") or row.get("checkpoint")
        lines.append(f"| {label} | {row['pixel_acc']:.2f} | {row['miou']:.2f} |")
    lines += ["", "Commands, in order:", ""] + [f"    {' '.join(c)}" for c in cmds]
    lines += ["", "Reproduce: `python -m benchmarks.crossmodal_cpu`", ""]
    atomic_write_text(REPO / args.results, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
