"""Cross-modal transfer L -> ab on Imagenette-96 (the paper's Figure 3 protocol, CPU-sized).

    python -m benchmarks.crossmodal_imagenette --jobs 2     # ~35 min on 2 cores from nothing; ~20 min
                                                            # when the L teacher and both students exist

A luminance (L) network is trained with labels; chrominance (ab) students learn from it WITHOUT labels on
the same images, by KD (the teacher's soft predictions) and by CRD (its embedding). Every ab network is then
scored on ab with labels, two ways: (a) a linear probe on its frozen embedding, (b) a short finetune of the
whole network. References: an ab network trained with labels (supervised ab), a random init (a linear probe
of random features; its finetune is supervised training from scratch at the finetune budget), and the L
teacher's own linear probe on L. The label-free students are probed at last.pt (their best.pt is not chosen
by accuracy), the networks trained with labels at best.pt.
"""
from __future__ import annotations

from benchmarks.common import (REPO, Bench, Step, bench, budget, main_guard,
                               new_figure, paired_bars, parser, probe_rows, summary)

L_TEACHER = "imagenette_L_mobilenetv3"
AB_SUPERVISED = "imagenette_ab_mobilenetv3"
STUDENTS = {"CRD": "imagenette_L_to_ab_crd", "KD": "imagenette_L_to_ab_kd"}  # method -> run (label-free)
FINETUNE = "configs/probe/imagenette_ab_finetune.yaml"
# Probe names (kept from the first cross-modal benchmark, so its finished probes are reused).
LINEAR = {"L teacher": "L_teacher_linear", "supervised": "ab_supervised_linear", "CRD": "ab_crd_linear",
          "KD": "ab_kd_linear"}
FINETUNED = {"CRD": "ab_crd_finetune", "KD": "ab_kd_finetune"}
RANDOM = "random-init"  # the checkpoint label of a probe's --random-init row
TICKS = {"supervised": "supervised ab", "CRD": "CRD student", "KD": "KD student", "random": "random init"}


def linear(b: Bench, name: str, checkpoint: str, data: str, modality: str, random_init: bool = False) -> Step:
    return b.probe("linear", name, "--checkpoint", checkpoint, "--data", data, "--modality", modality,
                   *(["--random-init"] if random_init else []))


def finetune(b: Bench, name: str, checkpoint: str, data: str, random_init: bool) -> Step:
    return b.probe("finetune", name, FINETUNE, "--checkpoint", checkpoint, "--data", data, "--modality", "ab",
                   "--random-init" if random_init else "--no-random-init")


def stages(b: Bench, data: str) -> list[list[Step]]:
    """Supervised networks; label-free students and the supervised probes; the students' probes."""
    path = ["--set", f"data.path={data}"]
    teacher = ["--set", f"teachers.0.checkpoint={b.runs}/{L_TEACHER}/best.pt"]
    student = {method: f"{b.runs}/{run}/last.pt" for method, run in STUDENTS.items()}
    return [
        [b.train("teach", f"configs/cpu/{L_TEACHER}.yaml", L_TEACHER, *path),
         b.train("teach", f"configs/cpu/{AB_SUPERVISED}.yaml", AB_SUPERVISED, *path)],
        [*(b.train("distill", f"configs/cpu/{run}.yaml", run, *teacher, *path) for run in STUDENTS.values()),
         linear(b, LINEAR["L teacher"], f"{b.runs}/{L_TEACHER}/best.pt", data, "L"),
         linear(b, LINEAR["supervised"], f"{b.runs}/{AB_SUPERVISED}/best.pt", data, "ab")],
        # The CRD finetune also trains the random init (two trainings): first, so it starts first.
        [finetune(b, FINETUNED["CRD"], student["CRD"], data, random_init=True),
         finetune(b, FINETUNED["KD"], student["KD"], data, random_init=False),
         linear(b, LINEAR["CRD"], student["CRD"], data, "ab", random_init=True),
         linear(b, LINEAR["KD"], student["KD"], data, "ab")],
    ]


def split_sizes(data: str) -> str:
    """'N train / M test images' of a prepared file."""
    from crossmodal.data.schema import open_prepared

    f, info = open_prepared(REPO / data)
    f.close()
    splits = sorted(info["splits"].items(), key=lambda item: item[0] != "train")  # train first
    return " / ".join(f"{split['n']:,} {name}" for name, split in splits) + " images"


def row(b: Bench, probe: str, random_init: bool = False) -> dict:
    """The checkpoint's row (or the random-init row) of a probe."""
    return next(r for r in probe_rows(b, probe) if (r["checkpoint"] == RANDOM) == random_init)


def main() -> None:
    args = parser("crossmodal_imagenette", __doc__).parse_args()
    b = bench("crossmodal_imagenette", args)
    data = b.data("imagenette")
    for stage in stages(b, data):
        b.run_stage(stage)
    report(b, data)


def report(b: Bench, data: str) -> None:
    # network -> (label, labels used before the probe, linear row, finetune row or None)
    networks = {
        "L teacher": ("L teacher (on L, reference)", "yes", row(b, LINEAR["L teacher"]), None),
        "supervised": ("ab, supervised", "yes", row(b, LINEAR["supervised"]), None),
        "CRD": ("ab, CRD student of the L teacher", "no (teacher's embedding)", row(b, LINEAR["CRD"]),
                row(b, FINETUNED["CRD"])),
        "KD": ("ab, KD student of the L teacher", "no (teacher's soft predictions)", row(b, LINEAR["KD"]),
               row(b, FINETUNED["KD"])),
        "random": ("ab, random init", "no", row(b, LINEAR["CRD"], random_init=True),
                   row(b, FINETUNED["CRD"], random_init=True)),
    }
    supervised = summary(b.runs / AB_SUPERVISED)
    finetune_budget = budget(b.probe_dir / FINETUNED["CRD"])
    body = [
        f"Cross-modal transfer L -> ab on Imagenette-96 (`{data}`: 10 classes, {split_sizes(data)}; the test split "
        "is Imagenette's val). The ab students never see a label: they learn from the L teacher on the same images. "
        "Every ab network is then scored on ab with labels: a linear probe on its frozen embedding (train split "
        "without augmentation) and a finetune of the whole network. timm mobilenetv3_small_100 everywhere, 96 px.",
        "",
        f"Budget, stated plainly: L teacher {budget(b.runs / L_TEACHER)}; supervised ab {budget(b.runs / AB_SUPERVISED)}; "
        f"each ab student {budget(b.runs / STUDENTS['CRD'])}; each finetune {finetune_budget} (the random init's "
        "finetune is therefore supervised training from scratch at that budget). Far below the paper's training: "
        "these are functional numbers at a tiny budget, not the paper's.",
        "",
        "| network | labels used in pretraining | linear probe top-1 (top-5) | finetune top-1 (top-5) |",
        "|---|---|---|---|",
    ]
    for label, labels, lin, fine in networks.values():
        fine_text = "-" if fine is None else f"{fine['top1']:.2f} ({fine['top5']:.2f})"
        body.append(f"| {label} | {labels} | {lin['top1']:.2f} ({lin['top5']:.2f}) | {fine_text} |")
    body += [
        "",
        f"Test top-1 of the networks' own training: L teacher {summary(b.runs / L_TEACHER)['final_test_top1']:.2f}, "
        f"supervised ab {supervised['final_test_top1']:.2f} (last epoch). Linear probe: AdamW on standardised "
        "features, the probe's default recipe; finetune recipe: "
        f"`{FINETUNE}`; top-1 of the last epoch.",
        "",
        "Paper (Tian et al. 2020, Section 4.3 / Figure 3, qualitative only): on STL-10, L -> ab, the ab student "
        "distilled by CRD beats the KD student and the random init in both linear probing and finetuning, and comes "
        "close to the ab network trained with labels. Differences in setting: Imagenette-96 (10 ImageNet classes) "
        "instead of STL-10 (whose 100k unlabeled images are the paper's transfer set); mobilenetv3_small_100 "
        "trained for the budget above instead of the paper's networks trained to convergence; one seed.",
    ]
    b.write("Cross-modal transfer L -> ab on Imagenette-96", body, figure(networks))


def figure(networks: dict):
    fig, (ax,) = new_figure(width=7)
    ab = [key for key in networks if key != "L teacher"]
    teacher = networks["L teacher"][2]["top1"]
    ax.axhline(teacher, color="k", linestyle="--", linewidth=1, label="L teacher, linear probe on L")
    paired_bars(ax, [TICKS[k] for k in ab], {
        "linear probe": [networks[k][2]["top1"] for k in ab],
        "finetune": [None if networks[k][3] is None else networks[k][3]["top1"] for k in ab],
    }, floor=teacher, headroom=1.35)
    ax.set_ylabel("ab test top-1 (%)")
    ax.set_title("Imagenette-96 L -> ab: ab networks scored with labels")
    return fig

if __name__ == "__main__":
    main_guard(main)
