"""`crossmodal quickstart`: prepare -> teach -> distill (CRD) -> probe on photographs that scikit-image bundles.

It drives every stage, data preparation included, so it lives with the commands, above both the library
and data_prep (docs/ARCHITECTURE.md). From Python:

    from cli.quickstart import run_quickstart
    results = run_quickstart("quickstart")       # a few minutes on a laptop CPU
    results["rows"]                               # linear-probe top-1/top-5 of each network

The task (data_prep/samples.py): 8 classes, one per bundled colour photograph; samples are 32 px
crops, train and test crops from disjoint cells of each photograph. The paper's cross-modal
transfer L -> ab (CRD Sec. 4.3) on it:
1. prepare: the crops into data/samples.h5 with rgb, L and ab;
2. teach:   a resnet8 on L (luminance) with the labels: the teacher;
3. distill: a resnet8 on ab (chrominance) from the teacher by CRD alone, WITHOUT labels;
4. probe:   a linear classifier on the frozen embedding of the teacher (L), the CRD student (ab)
            and a randomly initialised resnet8 (ab), trained on the train crops, scored on the test crops.
The probes read last.pt of each run: best.pt is chosen by test accuracy, which a demo about
generalisation must not use (and the CRD student's own classifier is never trained).

out_dir holds quickstart.json (the budget and seed it was made with), data/, runs/teacher_L/,
runs/student_ab_crd/, probe/ and results.json / results.md. A rerun reuses every finished stage
and resumes an interrupted training from its last.pt; `force=True` starts over.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import click
import torch

from crossmodal.errors import ConfigError
from crossmodal.sections import AugmentConfig, DataConfig, EngineConfig, ModelConfig, OptimConfig
from crossmodal.tasks.teach import TeachConfig
from crossmodal.tempfiles import atomic_write_text

ARCH = "resnet8"  # the CIFAR-style zoo's smallest ResNet: about 300 training images/s on one CPU core
# Intra-op threads while the quickstart runs. A 64-crop batch of 32 px images is too small to split
# well: on a 2-core machine shared with other jobs, 2 threads trained at 110 images/s, 1 at 290-350.
DEFAULT_THREADS = 1
TEACHER_MODALITY, STUDENT_MODALITY = "L", "ab"
OWN_ENTRIES = ("quickstart.json", "data", "runs", "probe", "results.json", "results.md")  # what force removes


@dataclass(frozen=True)
class QuickstartBudget:
    """How much data and training the quickstart spends."""

    train_per_class: int = 160  # crops per photograph in the train split
    test_per_class: int = 40  # crops per photograph in the test split
    teach_epochs: int = 10
    distill_epochs: int = 10
    probe_epochs: int = 100  # of the linear classifier on cached features
    nce_k: int = 1024  # CRD negatives per anchor (below the 1,280 training crops)
    batch_size: int = 64


BUDGETS = {
    "full": QuickstartBudget(),
    # The whole pipeline on 64 train crops in seconds: for tests and for checking an install.
    "tiny": QuickstartBudget(train_per_class=8, test_per_class=4, teach_epochs=1, distill_epochs=1, probe_epochs=5,
                             nce_k=16, batch_size=16),
}

# The same four steps on the real datasets, printed at the end (every config named here is in configs/).
REAL_DATASET_COMMANDS = """\
  # L -> ab on STL-10 (the paper's Table 5): teacher on L with labels, ab student by CRD on the unlabeled split
  crossmodal prepare stl10 ~/data/stl10 --download --out data/stl10.h5 --modalities rgb,L,ab
  crossmodal teach configs/stl10/L_teacher.yaml
  crossmodal distill configs/stl10/L_to_ab_crd.yaml
  crossmodal probe linear --checkpoint runs/L_to_ab_crd/last.pt --data data/stl10.h5 --random-init
  # RGB -> depth on NYU-Depth-V2: RGB teacher from Imagenette, depth student by CRD, dense probe (mIoU)
  crossmodal prepare imagefolder ../shared/data/imagenette2-96.tgz --out data/imagenette.h5 --modalities rgb,L,ab
  crossmodal teach configs/nyu/rgb_teacher.yaml
  crossmodal prepare nyu nyu_depth_v2_labeled.mat --splits splits.mat -m rgb,depth --size 128 --out data/nyu.h5
  crossmodal distill configs/nyu/rgb_to_depth_crd.yaml
  crossmodal probe dense configs/probe/nyu_depth_dense.yaml
  # Compression on CIFAR-100: resnet32x4 -> resnet8x4 with CRD + KD
  crossmodal prepare cifar100 ~/data/cifar --download --out data/cifar100.h5
  crossmodal teach configs/cifar100/resnet32x4.yaml
  crossmodal distill configs/cifar100/resnet32x4_resnet8x4_crd_kd.yaml
  crossmodal probe linear --checkpoint runs/resnet32x4_resnet8x4_crd_kd/best.pt --data data/cifar100.h5"""


def resolve_budget(budget: Union[str, QuickstartBudget]) -> QuickstartBudget:
    """A budget by name ("full", "tiny") or as given."""
    if isinstance(budget, QuickstartBudget):
        return budget
    if budget not in BUDGETS:
        raise ConfigError(f"quickstart budget {budget!r}: use one of {', '.join(BUDGETS)}")
    return BUDGETS[budget]


def _claim_out_dir(out_dir: Path, plan: dict, force: bool) -> None:
    """Make out_dir ours for `plan`: refuse a foreign folder or another plan (unless force), record the plan."""
    marker = out_dir / "quickstart.json"
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out-dir {out_dir} is a file; pass a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not marker.exists():
        raise ConfigError(f"--out-dir {out_dir} is not empty and holds no quickstart.json, so quickstart did not make "
                          "it; pass a new or empty folder")
    if marker.exists():
        try:
            recorded = json.loads(marker.read_text())
        except json.JSONDecodeError:
            recorded = {}
        if force:
            for name in OWN_ENTRIES:
                path = out_dir / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        elif recorded != plan:
            was = {"seed": recorded.get("seed"), **(recorded.get("budget") or {})}
            now = {"seed": plan["seed"], **plan["budget"]}
            changes = ", ".join(f"{key} {was.get(key)} -> {new}" for key, new in now.items() if was.get(key) != new)
            raise ConfigError(f"{marker}: this folder was made with other settings ({changes}); pass --force to "
                              "start over, or another --out-dir")
    atomic_write_text(marker, json.dumps(plan, indent=2) + "\n")


def _run_or_reuse(run_dir: Path, train: Callable[[bool], dict]) -> tuple[dict, str]:
    """(summary, how): a finished run's summary.json, or `train(resume)` continuing an interrupted run."""
    if (run_dir / "summary.json").exists():
        return json.loads((run_dir / "summary.json").read_text()), "reused"
    resume = (run_dir / "last.pt").exists()
    return train(resume), "resumed" if resume else "trained"


def _prepare(data_path: Path, budget: QuickstartBudget, seed: int) -> str:
    """Write the sample-photo crops to data_path unless a complete file is there (the writer is atomic)."""
    if data_path.exists():
        return "reused"
    from data_prep.samples import read_sample_photos
    from data_prep.writer import write_prepared

    data_path.parent.mkdir(parents=True, exist_ok=True)
    source = read_sample_photos(budget.train_per_class, budget.test_per_class, seed=seed)
    write_prepared(source, data_path, ["rgb", TEACHER_MODALITY, STUDENT_MODALITY], workers=2)
    return "written"


def _run_sections(data_path: Path, budget: QuickstartBudget, epochs: int, device: str) -> dict:
    """The data/optim/engine sections shared by teach and distill."""
    augment = AugmentConfig(crop=32, padding=4, hflip=True)
    return dict(data=DataConfig(path=str(data_path), augment=augment, preload=True),
                optim=OptimConfig(name="adamw", lr=2e-3, weight_decay=0.05, batch_size=budget.batch_size,
                                  epochs=epochs, schedule="cosine"),
                engine=EngineConfig(device=device, progress=False, log_every=1000))


def _probe(name: str, checkpoint: Path, data_path: Path, out_dir: Path, budget: QuickstartBudget, seed: int,
           device: str, random_init: bool) -> tuple[list[dict], bool]:
    """(Linear-probe rows of `checkpoint`, and of a random init of its arch if asked; whether they were reused)."""
    from crossmodal.tasks.probe import ProbeConfig, ProbeOptimConfig, run_probe

    results_path = out_dir / "probe" / name / "results.json"
    if results_path.exists():
        return json.loads(results_path.read_text())["rows"], True
    cfg = ProbeConfig(name=name, seed=seed, out_dir=str(out_dir / "probe"), method="linear",
                      checkpoint=str(checkpoint), random_init=random_init, data=DataConfig(path=str(data_path)),
                      optim=ProbeOptimConfig(epochs=budget.probe_epochs),
                      engine=EngineConfig(device=device, progress=False))
    return run_probe(cfg)["rows"], False


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def format_results(rows: list[dict]) -> str:
    """The printed table: one line per network with its linear-probe top-1/top-5 on the test crops."""
    header = ("network", "arch", "input", "trained with", "probe top-1", "top-5")
    cells = [header] + [(r["network"], r["arch"], r["modality"], r["trained_with"], f"{r['top1']:.1f}%",
                         f"{r['top5']:.1f}%") for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_quickstart(out_dir: Union[str, Path] = "quickstart", seed: int = 0,
                   budget: Union[str, QuickstartBudget] = "full", device: str = "auto", force: bool = False,
                   verbose: bool = False, threads: int = DEFAULT_THREADS,
                   echo: Callable[[str], None] = print) -> dict:
    """Run the four stages into out_dir (reusing finished ones), echo a line per stage and the table; return results."""
    from crossmodal.tasks.distill import DistillConfig, TeacherConfig, run_distill
    from crossmodal.tasks.teach import run_teach
    from data_prep.samples import PHOTOS

    budget = resolve_budget(budget)
    if threads < 1:
        raise ConfigError(f"--threads {threads}: give at least 1")
    from crossmodal.engine import resolve_device

    resolve_device(device)  # a bad --device fails before anything is written
    out_dir = Path(out_dir)
    _claim_out_dir(out_dir, {"seed": seed, "budget": dataclasses.asdict(budget)}, force)
    data_path, runs = out_dir / "data" / "samples.h5", out_dir / "runs"
    engine_log = logging.getLogger("crossmodal")
    previous_level = engine_log.level
    engine_log.setLevel(logging.INFO if verbose else logging.WARNING)  # the engine's per-epoch lines
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    seconds, started = {}, time.perf_counter()
    try:
        clock = time.perf_counter()
        n_train, n_test = len(PHOTOS) * budget.train_per_class, len(PHOTOS) * budget.test_per_class
        echo(f"[1/4] prepare: {n_train} train / {n_test} test crops (32 px) of {len(PHOTOS)} photographs bundled with "
             f"scikit-image -> {data_path}")
        how = _prepare(data_path, budget, seed)
        seconds["prepare"] = time.perf_counter() - clock
        echo(f"      {how} in {seconds['prepare']:.0f} s")

        clock = time.perf_counter()
        echo(f"[2/4] teach: {ARCH} on {TEACHER_MODALITY} (luminance) with labels, {_epochs(budget.teach_epochs)}")
        teach_cfg = TeachConfig(name="teacher_L", seed=seed, out_dir=str(runs),
                                model=ModelConfig(arch=ARCH, modality=TEACHER_MODALITY),
                                **_run_sections(data_path, budget, budget.teach_epochs, device))
        teacher_run, how = _run_or_reuse(runs / "teacher_L", lambda resume: run_teach(teach_cfg, resume=resume))
        seconds["teach"] = time.perf_counter() - clock
        echo(f"      {how} in {seconds['teach']:.0f} s: its own classifier scores "
             f"{teacher_run['final_test_top1']:.1f}% top-1 on the test crops")

        clock = time.perf_counter()
        teacher_ckpt = runs / "teacher_L" / "last.pt"
        echo(f"[3/4] distill: {ARCH} on {STUDENT_MODALITY} (chrominance) from the {TEACHER_MODALITY} teacher by CRD, "
             f"no labels, {_epochs(budget.distill_epochs)}")
        distill_cfg = DistillConfig(
            name="student_ab_crd", seed=seed, out_dir=str(runs),
            student=ModelConfig(arch=ARCH, modality=STUDENT_MODALITY),
            teachers=[TeacherConfig(checkpoint=str(teacher_ckpt), modality=TEACHER_MODALITY)],
            losses={"crd": 1.0}, loss_params={"crd": {"nce_k": budget.nce_k, "mode": "relax"}},
            **_run_sections(data_path, budget, budget.distill_epochs, device))
        _, how = _run_or_reuse(runs / "student_ab_crd", lambda resume: run_distill(distill_cfg, resume=resume))
        seconds["distill"] = time.perf_counter() - clock
        echo(f"      {how} in {seconds['distill']:.0f} s")

        clock = time.perf_counter()
        echo("[4/4] probe: linear classifier on the frozen embeddings of the teacher, the CRD student and a "
             "random-init student")
        common = (data_path, out_dir, budget, seed, device)
        teacher_rows, teacher_reused = _probe("teacher_L", teacher_ckpt, *common, random_init=False)
        student_rows, student_reused = _probe("student_ab", runs / "student_ab_crd" / "last.pt", *common,
                                              random_init=True)
        seconds["probe"] = time.perf_counter() - clock
        echo(f"      {'reused' if teacher_reused and student_reused else 'done'} in {seconds['probe']:.0f} s")
    finally:
        engine_log.setLevel(previous_level)
        torch.set_num_threads(previous_threads)
    seconds["total"] = time.perf_counter() - started

    trained_with = [f"labels ({_epochs(budget.teach_epochs)})",
                    f"CRD from the L teacher, no labels ({_epochs(budget.distill_epochs)})", "nothing (random weights)"]
    networks = ["teacher", "CRD student", "random-init student"]
    rows = [{"network": network, "trained_with": how, **{k: row[k] for k in ("arch", "modality", "top1", "top5")},
             "checkpoint": row["checkpoint"]}
            for network, how, row in zip(networks, trained_with, teacher_rows + student_rows)]
    results = {"rows": rows, "seconds": seconds, "seed": seed, "budget": dataclasses.asdict(budget),
               "data": str(data_path), "classes": len(PHOTOS), "train_crops": n_train, "test_crops": n_test,
               "teacher_classifier_test_top1": teacher_run["final_test_top1"]}
    _report(out_dir, results, echo)
    return results


def _report(out_dir: Path, results: dict, echo: Callable[[str], None]) -> None:
    """Write results.json and results.md; echo the table, what it shows, and the real-dataset commands."""
    rows, table = results["rows"], format_results(results["rows"])
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out_dir / "results.md", _markdown(table, results))
    echo("")
    echo(f"Linear probe on frozen embeddings, {results['test_crops']} test crops from regions no training crop "
         f"touches (chance {100 / results['classes']:.1f}%):")
    echo(table)
    gain = round(rows[1]["top1"], 1) - round(rows[2]["top1"], 1)  # as the table shows them
    echo(f"CRD student minus random-init student: {gain:+.1f} points, learnt from the L teacher without a single "
         "label (random ab features already carry the photographs' colours).")
    echo(f"\nEverything is in {out_dir}/ (results.md, runs/*/curves.png); {results['seconds']['total']:.0f} s in all.")
    echo("The same pipeline on real datasets:")
    echo(REAL_DATASET_COMMANDS)


def _markdown(table: str, results: dict) -> str:
    """results.md: what was run and the table."""
    return (f"# crossmodal quickstart\n\nL -> ab transfer by CRD on crops of {results['classes']} photographs "
            f"bundled with scikit-image ({results['train_crops']} train / {results['test_crops']} test crops from "
            f"disjoint regions), seed {results['seed']}. Linear probe top-1/top-5 on the test crops:"
            f"\n\n```\n{table}\n```\n")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("quickstart"),
              show_default=True, help="Folder for everything the demo writes (data, runs, probes, results).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the crops, initialisations and order.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--tiny", is_flag=True, help="A seconds-long run on 64 train crops, to check an install (scores "
                                           "mean nothing).")
@click.option("--force", is_flag=True, help="Delete what an earlier quickstart wrote in --out-dir and start over.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPU threads for torch; more rarely helps these small batches and hurts on a shared machine.")
@click.option("--verbose", "-v", is_flag=True, help="Also print the engine's line per epoch.")
def quickstart(out_dir: Path, seed: int, device: str, tiny: bool, force: bool, threads: int, verbose: bool):
    """Run prepare -> teach -> distill (CRD) -> probe on a small real dataset that needs no download.

    Classes are 8 colour photographs that scikit-image bundles; samples are 32 px crops, train
    and test from disjoint regions of each photograph. A resnet8 teacher learns them from
    luminance (L) with labels; a resnet8 student learns from chrominance (ab) by CRD alone,
    without labels (the paper's L -> ab transfer); linear probes then score the teacher, the
    CRD student and a random-init student on the test crops. Prints the table and the commands
    for the real datasets. A rerun reuses finished stages and resumes an interrupted one.
    """
    run_quickstart(out_dir, seed=seed, budget="tiny" if tiny else "full", device=device, force=force,
                   verbose=verbose, threads=threads, echo=click.echo)
