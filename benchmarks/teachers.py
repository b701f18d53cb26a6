"""The teachers the benchmarks distill from: trained once by `crossmodal teach`, committed under teachers/.

    python -m benchmarks.teachers --jobs 2                 # train and export every teacher still missing
    python -m benchmarks.teachers --only cifar10_resnet20  # one teacher
    python -m benchmarks.teachers --device cuda            # the same configs on a GPU (minutes)
    python -m benchmarks.teachers --check                  # verify the committed files: sha256 and test top-1

Each teacher is one committed config (configs/teachers/), trained by `crossmodal teach` into runs/teachers/,
then its last epoch is exported (crossmodal.engine.checkpoint.export_weights: the network and its metadata,
no optimiser or RNG state) to teachers/<name>.pt. The exported file is evaluated on its test split here,
in a separate process from its training, and teachers/teachers.json records its sha256, test top-1,
budget, the exact command, the training wall time and the machine; teachers/README.md is that table.

A benchmark asks for a teacher by name (`teachers.teacher(b, name)`): the committed file when its sha256 matches the
record, else this module trains it. The last epoch is exported, not the best one, so the test split never
selects the weights.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from benchmarks.common import (REPO, Bench, Step, bench, git_commit, machine_line, main_guard, parser,
                               relative_command, run_budget, shown)

TEACHER_DIR = REPO / "teachers"
RECORDS = TEACHER_DIR / "teachers.json"
MAX_TOTAL_MIB = 40.0  # committed teacher weights, all together (MiB)


@dataclass(frozen=True)
class TeacherSpec:
    """A benchmark teacher: its config, the dataset key (benchmarks.common.DATASETS), seed, and use."""

    config: str
    dataset: str
    seed: int = 0
    used_by: str = ""
    half: bool = False  # export fp16 weights (only if top-1 moves by < 0.05 points)


TEACHERS: dict[str, TeacherSpec] = {
    "cifar10_resnet20": TeacherSpec("configs/teachers/cifar10_resnet20.yaml", "cifar10",
                                    used_by="compression (CIFAR-10), ablation"),
    "tinyimagenet100_resnet20": TeacherSpec("configs/teachers/tinyimagenet100_resnet20.yaml", "tinyimagenet100",
                                            used_by="compression (Tiny-ImageNet-100), transfer"),
    "imagenette96_L_mobilenetv3": TeacherSpec("configs/teachers/imagenette96_L_mobilenetv3.yaml", "imagenette",
                                              used_by="cross-modal L -> ab"),
    "imagenette96_rgb_mobilenetv3": TeacherSpec("configs/teachers/imagenette96_rgb_mobilenetv3.yaml", "imagenette",
                                                used_by="RGB -> depth (rgbd_nyu18)"),
    **{f"cifar10_resnet8_s{k}": TeacherSpec("configs/teachers/cifar10_resnet8.yaml", "cifar10", seed=k,
                                            used_by="ensemble") for k in range(4)},
}


def load_records() -> dict:
    """teachers/teachers.json as a dict (empty when absent)."""
    return json.loads(RECORDS.read_text()) if RECORDS.exists() else {}


def committed(name: str) -> Optional[Path]:
    """teachers/<name>.pt when it exists and its sha256 matches its record, else None."""
    from crossmodal.engine.checkpoint import file_sha256

    path = TEACHER_DIR / f"{name}.pt"
    record = load_records().get(name)
    if record and path.exists() and file_sha256(path) == record["sha256"]:
        return path
    return None


def train_step(b: Bench, name: str, device: list[str]) -> Step:
    """The `crossmodal teach` step of teacher `name`, in runs/teachers/<name> (runs/quick/teachers under --quick;
    <DIR>/teachers under --runs DIR)."""
    spec = TEACHERS[name]
    data = b.data(spec.dataset)
    # Teachers live in a runs folder of their own, so benchmark runs never collide with them.
    teachers_bench = Bench(name=b.name, quick=b.quick, jobs=b.jobs, runs=b.runs / "teachers", records=b.records_dir,
                           root=b.runs_root)
    step = teachers_bench.train("teach", spec.config, name, "--seed", str(spec.seed), "--set", f"data.path={data}",
                                *device)
    b._producers.update(teachers_bench._producers)
    return step


def test_top1(path: Path, data: str, modality: str) -> float:
    """Test top-1 (%) of the network in checkpoint `path` on the test split of prepared file `data`."""
    from benchmarks.common import checkpoint_test_probs

    probs, labels = checkpoint_test_probs([path], data, modality)
    return 100.0 * (probs[0].argmax(1) == labels).float().mean().item()


def export(b: Bench, name: str, step: Step) -> dict:
    """Export the trained teacher's last epoch to teachers/<name>.pt, evaluate it, and write its record."""
    import yaml

    from crossmodal.engine.checkpoint import export_weights, file_sha256

    spec = TEACHERS[name]
    run_dir = step.done.parent
    summary = json.loads(step.done.read_text())
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    out = TEACHER_DIR / f"{name}.pt"
    TEACHER_DIR.mkdir(exist_ok=True)
    export_weights(run_dir / "last.pt", out, half=spec.half)
    modality = cfg["model"]["modality"]
    top1 = test_top1(out, cfg["data"]["path"], modality)
    if spec.half:
        full = run_dir / "export_fp32.pt"
        export_weights(run_dir / "last.pt", full)
        drift = abs(test_top1(full, cfg["data"]["path"], modality) - top1)
        if drift >= 0.05:
            raise SystemExit(f"teachers: {name}: fp16 export moves test top-1 by {drift:.3f} points (limit 0.05)")
    budget = run_budget(cfg)
    record = {
        "file": f"teachers/{name}.pt", "sha256": file_sha256(out), "size_bytes": out.stat().st_size,
        "fp16": spec.half, "arch": summary["arch"], "modality": modality, "dataset": spec.dataset,
        "data_file": cfg["data"]["path"], "used_by": spec.used_by,
        "test_top1": round(top1, 2), "run_final_test_top1": summary["final_test_top1"],
        "epochs": budget["epochs"], "images_seen": budget["images_seen"], "passes": budget["passes"],
        "config": spec.config, "seed": spec.seed, "command": relative_command(step.cmd),
        "train_time_s": round(summary["train_time_s"], 1), "device": summary["device"],
        "machine": machine_line(summary["device"]), "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    records = load_records()
    records[name] = record
    write_records(records)
    return record


def duration(seconds: float) -> str:
    """A training time as the table shows it: seconds under 90 s, else minutes."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def write_records(records: dict) -> None:
    """teachers/teachers.json and the table of teachers/README.md (atomically)."""
    from crossmodal.tempfiles import atomic_write_text

    total_mib = sum(r["size_bytes"] for r in records.values()) / 2**20
    if total_mib > MAX_TOTAL_MIB:
        raise SystemExit(f"teachers: the committed weights would take {total_mib:.1f} MiB (limit {MAX_TOTAL_MIB:.0f} MiB)")
    atomic_write_text(RECORDS, json.dumps(records, indent=1, sort_keys=True) + "\n")
    lines = [
        "# Teachers the benchmarks distill from", "",
        "Each file is the last epoch of a `crossmodal teach` run of a committed config, exported with its "
        "metadata and without optimiser state (`python -m benchmarks.teachers` trains, exports and records them; "
        "`--check` verifies them). Test top-1 is measured on the exported file, on the dataset's test split "
        "(for Tiny-ImageNet-100 and Imagenette, their val split). Load one with "
        "`crossmodal.engine.load_model(path)` or name it as a distill config's teacher checkpoint.", "",
        f"Weights in all: {total_mib:.1f} MiB (limit {MAX_TOTAL_MIB:.0f} MiB).", "",
        "| teacher | arch | input | data | test top-1 | passes | train time | device | sha256 (first 16) | used by |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in sorted(records.items()):
        lines.append(f"| `{r['file']}` | {r['arch']} | {r['modality']} | {r['dataset']} | {r['test_top1']:.2f} | "
                     f"{r['passes']:g} | {duration(r['train_time_s'])} | {r['device']} | {r['sha256'][:16]} | "
                     f"{r['used_by']} |")
    lines += ["", "Commands (each after `crossmodal prepare` of its data, see the config's header):", "", "```"]
    lines += [r["command"] for _, r in sorted(records.items())]
    lines += ["```", "", "Machines: " + "; ".join(sorted({f"{r['device']} on {r['machine']}" for r in records.values()}))
              + ". Train time is the sum of the run's epoch times (metrics.csv), on a machine shared with other "
              "jobs.", ""]
    atomic_write_text(TEACHER_DIR / "README.md", "\n".join(lines))


def ensure(b: Bench, names: list[str], device: list[str] = ()) -> dict[str, Path]:
    """Path of each named teacher: the committed file, else trained (up to b.jobs at once) and exported.

    Under --quick a missing teacher is trained at the quick budget into runs/quick/teachers and used from
    there (never exported over the committed files).
    """
    paths, todo = {}, []
    for name in names:
        path = committed(name)
        if path is not None:
            paths[name] = path
        else:
            todo.append(name)
    steps = {name: train_step(b, name, list(device)) for name in todo}
    for step in steps.values():
        if not step.done.exists():  # a record without the run (an earlier checkout's): train again
            (b.records_dir / f"{step.record}.json").unlink(missing_ok=True)
    if steps:
        b.run_stage(list(steps.values()))
    for name, step in steps.items():
        if b.quick:
            paths[name] = step.done.parent / "last.pt"
        else:
            print(f"teachers: {name}: {export(b, name, step)}")
            paths[name] = TEACHER_DIR / f"{name}.pt"
    return paths


def teacher(b: Bench, name: str, device: list[str] = ()) -> dict:
    """Benchmark teacher `name` for experiment `b`: its checkpoint path (repository-relative), test top-1, sha256
    and budget; the committed file, else trained now (at the quick budget under --quick)."""
    path = ensure(b, [name], list(device))[name]
    rec = load_records().get(name) if path.parent == TEACHER_DIR else None
    if rec is None:  # a --quick teacher: its run's own numbers
        run = b.record(name)
        rec = {"test_top1": run["summary"]["final_test_top1"], "sha256": None, "passes": run["budget"]["passes"],
               "arch": run["summary"]["arch"]}
    return {"name": name, "path": shown(path), **{k: rec[k] for k in ("test_top1", "sha256", "passes", "arch")}}


def check() -> int:
    """Re-evaluate every committed teacher; report sha256 or top-1 mismatches (exit 1 on any)."""
    from crossmodal.engine.checkpoint import file_sha256

    bad = 0
    for name, r in sorted(load_records().items()):
        path = REPO / r["file"]
        if not path.exists() or file_sha256(path) != r["sha256"]:
            print(f"{name}: {r['file']} is missing or its sha256 differs from teachers.json")
            bad += 1
            continue
        top1 = test_top1(path, r["data_file"], r["modality"])
        ok = abs(top1 - r["test_top1"]) < 0.01
        bad += not ok
        print(f"{name}: test top-1 {top1:.2f} (recorded {r['test_top1']:.2f}) {'ok' if ok else 'MISMATCH'}")
    return 1 if bad else 0


def main() -> None:
    ap = parser("teachers", __doc__)
    ap.add_argument("--only", default="", help="comma-separated teacher names (default: all)")
    ap.add_argument("--device", default=None, help="engine.device for the teach runs (e.g. cuda)")
    ap.add_argument("--check", action="store_true", help="verify the committed teachers and exit")
    args = ap.parse_args()
    if args.check:
        raise SystemExit(check())
    names = [n for n in args.only.split(",") if n] or list(TEACHERS)
    unknown = sorted(set(names) - set(TEACHERS))
    if unknown:
        ap.error(f"--only: unknown teacher(s) {unknown}; known: {', '.join(TEACHERS)}")
    b = bench("teachers", args)
    ensure(b, names, ["--device", args.device] if args.device else [])


if __name__ == "__main__":
    main_guard(main)
