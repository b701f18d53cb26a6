"""Cross-modal transfer L -> ab on Imagenette-96 (the paper's Figure 3 protocol, CPU-sized).

    python -m benchmarks.crossmodal_imagenette --jobs 2     # 3 trainings of 15 passes, 3 finetunes of 5

A luminance (L) network (the committed teacher teachers/imagenette96_L_mobilenetv3.pt) is trained with labels;
chrominance (ab) students learn from it WITHOUT labels on
the same images, by KD (the teacher's soft predictions) and by CRD (its embedding). Every ab network is then
scored on ab with labels, two ways: (a) a linear probe on its frozen embedding, (b) a short finetune of the
whole network. References: an ab network trained with labels (supervised ab), a random init (a linear probe
of random features; its finetune is supervised training from scratch at the finetune budget), and the L
teacher's own linear probe on L. Every network is probed at its last epoch (last.pt), never at weights
chosen by test accuracy.
"""
from __future__ import annotations

from benchmarks import teachers
from benchmarks.common import REPO, Bench, Step, bench, budget_text, main_guard, new_figure, paired_bars, parser

L_TEACHER = "imagenette96_L_mobilenetv3"  # a benchmark teacher (benchmarks.teachers)
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


def stages(b: Bench, teacher: dict, data: str) -> list[list[Step]]:
    """Supervised ab and the label-free students with the teacher's probe; then the ab networks' probes."""
    path = ["--set", f"data.path={data}"]
    student = {method: f"{b.runs}/{run}/last.pt" for method, run in STUDENTS.items()}
    return [
        [*(b.train("distill", f"configs/cpu/{run}.yaml", run, "--set", f"teachers.0.checkpoint={teacher['path']}",
                   *path) for run in STUDENTS.values()),
         b.train("teach", f"configs/cpu/{AB_SUPERVISED}.yaml", AB_SUPERVISED, *path),
         linear(b, LINEAR["L teacher"], teacher["path"], data, "L")],
        # The CRD finetune also trains the random init (two trainings): first, so it starts first.
        [finetune(b, FINETUNED["CRD"], student["CRD"], data, random_init=True),
         finetune(b, FINETUNED["KD"], student["KD"], data, random_init=False),
         linear(b, LINEAR["supervised"], f"{b.runs}/{AB_SUPERVISED}/last.pt", data, "ab"),
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
    return next(r for r in b.probe_rows(probe) if (r["checkpoint"] == RANDOM) == random_init)


def main() -> None:
    args = parser("crossmodal_imagenette", __doc__).parse_args()
    b = bench("crossmodal_imagenette", args)
    data = b.data("imagenette")
    teacher = teachers.teacher(b, L_TEACHER)
    for stage in stages(b, teacher, data):
        b.run_stage(stage)
    report(b, teacher, data)


def report(b: Bench, teacher: dict, data: str) -> None:
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
    supervised = b.summary(AB_SUPERVISED)
    finetune_budget = budget_text(b.record(f"probe/{FINETUNED['CRD']}")["budget"])
    body = [
        f"Cross-modal transfer L -> ab on Imagenette-96 (`{data}`: 10 classes, {split_sizes(data)}; the test split "
        "is Imagenette's val). The ab students never see a label: they learn from the L teacher on the same images. "
        "Every ab network is then scored on ab with labels: a linear probe on its frozen embedding (train split "
        "without augmentation) and a finetune of the whole network. timm mobilenetv3_small_100 everywhere, 96 px.",
        "",
        f"Budget, first: each ab student {budget_text(b.budget(STUDENTS['CRD']))}; supervised ab "
        f"{budget_text(b.budget(AB_SUPERVISED))}; each finetune {finetune_budget} (the random init's finetune is "
        f"therefore supervised training from scratch at that budget); the L teacher `{teacher['path']}` "
        f"({teacher['passes']:g} passes).",
        "",
        "| network | labels used in pretraining | linear probe top-1 (top-5) | finetune top-1 (top-5) |",
        "|---|---|---|---|",
    ]
    for label, labels, lin, fine in networks.values():
        fine_text = "-" if fine is None else f"{fine['top1']:.2f} ({fine['top5']:.2f})"
        body.append(f"| {label} | {labels} | {lin['top1']:.2f} ({lin['top5']:.2f}) | {fine_text} |")
    body += [
        "",
        f"Test top-1 of the networks' own training: L teacher {teacher['test_top1']:.2f} (on L), "
        f"supervised ab {supervised['final_test_top1']:.2f} (last epoch). Linear probe: AdamW on standardised "
        "features, the probe's default recipe; finetune recipe: "
        f"`{FINETUNE}`; top-1 of the last epoch.",
        "",
        "Paper (Tian et al. 2020, Section 4.3 / Figure 3, qualitative only): on STL-10, L -> ab, the ab student "
        "distilled by CRD beats the KD student and the random init in both linear probing and finetuning, and comes "
        "close to the ab network trained with labels. Differences in setting: Imagenette-96 (10 ImageNet classes) "
        "instead of STL-10 (whose 100k unlabeled images are the paper's transfer set); mobilenetv3_small_100 "
        "trained for the budget above; one seed.",
    ]
    results = {"metric": "ab test top-1 (%) of a linear probe / a finetune", "seed": 0, "teacher": teacher,
               "budget": b.budget(STUDENTS["CRD"]), "finetune_budget": b.record(f"probe/{FINETUNED['CRD']}")["budget"],
               "networks": {key: {"label": label, "labels_before_probe": labels, "linear_top1": lin["top1"],
                                  "finetune_top1": None if fine is None else fine["top1"]}
                            for key, (label, labels, lin, fine) in networks.items()}}
    b.write("Cross-modal transfer L -> ab on Imagenette-96", body, figure(networks), results=results)


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
