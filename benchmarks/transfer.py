"""Transferability of representations (the paper's Table 4 protocol, CPU-sized): Tiny-ImageNet-100 -> Imagenette-96.

    python -m benchmarks.transfer --jobs 2     # minutes when the compression benchmark's tinyimagenet100
                                               # seed-0 students exist in runs/; else they are trained first

The networks are those of the compression benchmark on Tiny-ImageNet-100 (seed 0): the committed resnet20
teacher (teachers/tinyimagenet100_resnet20.pt), the resnet8 student trained from labels alone, and the resnet8
students by KD, CRD and CRD+KD. A student whose checkpoint is not in runs/ is trained again by exactly the
compression benchmark's command (benchmarks.compression.student_steps). Each network is
frozen and a linear classifier is trained on its embedding of Imagenette-96, resized to the 32 px it was
trained at (`--input-size checkpoint`); a random-init resnet8 row says what the architecture gives without
training. Every network is probed at last.pt, the weights of its reported final test top-1.
"""
from __future__ import annotations

from benchmarks import compression, teachers
from benchmarks.common import Bench, Step, bench, budget_text, main_guard, new_figure, paired_bars, parser

METHODS = ["vanilla", "KD", "CRD", "CRD+KD"]
SEED = 0
RANDOM = "random-init"  # the checkpoint label of a probe's --random-init row
# The paper's linear-probe top-1 (Tian et al. 2020, Table 4): WRN-40-2 teacher -> WRN-16-2 students trained on
# CIFAR-100, frozen, probed on STL-10 and on Tiny-ImageNet.
PAPER = {"teacher": (68.6, 31.5), "student": (69.7, 33.7), "KD": (70.9, 33.9), "AT": (70.7, 34.2),
         "FitNet": (70.3, 33.5), "CRD": (71.6, 35.6), "CRD+KD": (72.2, 35.5)}


def networks(p: dict) -> dict[str, str]:
    """Row label -> run name of every probed network (the teacher: its benchmark teacher name)."""
    teacher, student = p["arch"]
    return {f"teacher {teacher}": p["teacher"],
            **{f"{student} {method}": compression.run_name(p, method, SEED) for method in METHODS}}


def probe(b: Bench, run: str, checkpoint: str, data: str, random_init: bool = False) -> Step:
    return b.probe("linear", f"transfer_{run}", "--checkpoint", checkpoint, "--data", data,
                   "--input-size", "checkpoint", *(["--random-init"] if random_init else []))


def main() -> None:
    args = parser("transfer", __doc__).parse_args()
    b = bench("transfer", args)
    p = compression.profile("tinyimagenet100")
    tiny, imagenette = b.data("tinyimagenet100"), b.data("imagenette")
    teacher = teachers.teacher(b, p["teacher"])
    students = compression.student_steps(b, p, teacher["path"], [SEED], ["--set", f"data.path={tiny}"], [], METHODS)
    vanilla = compression.run_name(p, "vanilla", SEED)
    probes = [probe(b, p["teacher"], teacher["path"], imagenette)]
    probes += [probe(b, run, f"{b.runs}/{run}/last.pt", imagenette, random_init=run == vanilla)
               for run in networks(p).values() if run != p["teacher"]]
    b.run_stage(students)  # done already when the compression benchmark ran (their records exist)
    b.run_stage(probes)
    report(b, p, teacher, imagenette)


def report(b: Bench, p: dict, teacher: dict, imagenette: str) -> None:
    rows = {}  # label -> (probe row, own test top-1 or None)
    for label, run in networks(p).items():
        probed = b.probe_rows(f"transfer_{run}")
        own = teacher["test_top1"] if run == p["teacher"] else b.summary(run)["final_test_top1"]
        rows[label] = (next(r for r in probed if r["checkpoint"] != RANDOM), own)
        rows.update({f"{p['arch'][1]} random init": (r, None) for r in probed if r["checkpoint"] == RANDOM})
    vanilla = compression.run_name(p, "vanilla", SEED)
    body = [
        "Transfer: networks trained on Tiny-ImageNet-100 (100 classes, 32 px) by the compression benchmark "
        f"(`python -m benchmarks.compression --dataset tinyimagenet100`, seed {SEED}), frozen, each scored by a "
        f"linear classifier on its embedding of Imagenette-96 (`{imagenette}`, 10 classes), inputs resized to the "
        "32 px the networks were trained at and normalised with Imagenette's channel stats. Linear probe: AdamW on "
        "standardised features, the probe's default recipe.",
        "",
        f"Budget, first: the teacher `{teacher['path']}` ({teacher['passes']:g} passes); each student "
        f"{budget_text(b.budget(vanilla))} (the paper: 240 epochs on CIFAR-100).",
        "",
        "| network | Imagenette-96 linear probe top-1 (top-5) | its own Tiny-ImageNet-100 test top-1 |",
        "|---|---|---|",
    ]
    for label, (r, own) in rows.items():
        body.append(f"| {label} | {r['top1']:.2f} ({r['top5']:.2f}) | {'-' if own is None else f'{own:.2f}'} |")
    body += [
        "",
        "Paper (Tian et al. 2020, Table 4), for reference: linear-probe top-1 of a WRN-40-2 teacher and WRN-16-2 "
        "students trained on CIFAR-100, probed on STL-10 and on Tiny-ImageNet:",
        "",
        "| network (paper) | CIFAR-100 -> STL-10 | CIFAR-100 -> Tiny-ImageNet |",
        "|---|---|---|",
        *(f"| {name} | {stl:.1f} | {tiny:.1f} |" for name, (stl, tiny) in PAPER.items()),
        "",
        "Differences in setting: source data Tiny-ImageNet-100 (100 of Tiny-ImageNet's classes at 32 px) instead of "
        "CIFAR-100; resnet20 -> resnet8 instead of WRN-40-2 -> WRN-16-2; the CPU budget above instead of 240 "
        "epochs; one target set, Imagenette-96 (10 ImageNet classes, resized to 32 px) instead of STL-10 and "
        "Tiny-ImageNet; AT and FitNet not probed here. In the paper every student, the one trained from labels "
        "alone included, transfers better than its teacher, and CRD and CRD+KD transfer best.",
    ]
    results = {"metric": "Imagenette-96 linear-probe test top-1 (%)", "seed": SEED, "teacher": teacher,
               "budget": b.budget(vanilla),
               "networks": {label: {"probe_top1": r["top1"], "probe_top5": r["top5"], "own_test_top1": own}
                            for label, (r, own) in rows.items()}}
    b.write("Transferability: Tiny-ImageNet-100 networks probed on Imagenette-96", body, figure(rows), results=results)


def figure(rows: dict):
    fig, (ax,) = new_figure(width=8)
    labels = list(rows)
    paired_bars(ax, labels, {"Imagenette-96 linear probe": [rows[k][0]["top1"] for k in labels],
                             "own Tiny-ImageNet-100 test": [rows[k][1] for k in labels]}, rotation=20, ha="right")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Tiny-ImageNet-100 networks, frozen, linear probe on Imagenette-96")
    return fig


if __name__ == "__main__":
    main_guard(main)
