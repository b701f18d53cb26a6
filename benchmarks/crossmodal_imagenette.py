"""Cross-modal transfer L -> ab on Imagenette-96 (the paper's Figure 3 protocol, CPU-sized), 3 seeds.

    python -m benchmarks.crossmodal_imagenette --jobs 2     # per seed: 3 trainings of 15 passes, 3 finetunes of 5
    python -m benchmarks.crossmodal_imagenette --so-far     # the finished seeds' numbers from their records

A luminance (L) network (the committed teacher teachers/imagenette96_L_mobilenetv3.pt) is trained with labels;
chrominance (ab) students learn from it WITHOUT labels on
the same images, by KD (the teacher's soft predictions) and by CRD (its embedding). Every ab network is then
scored on ab with labels, two ways: (a) a linear probe on its frozen embedding, (b) a short finetune of the
whole network. References: an ab network trained with labels (supervised ab), a random init (a linear probe
of random features; its finetune is supervised training from scratch at the finetune budget), and the L
teacher's own linear probe on L. Every network is probed at its last epoch (last.pt), never at weights
chosen by test accuracy. Each seed seeds every training and probe of its row (the random init included);
the L teacher is the same committed file for all seeds.
"""
from __future__ import annotations

from benchmarks import teachers
from benchmarks.common import (REPO, Bench, Step, bench, budget_text, main_guard, mean_std, new_figure, paired_bars,
                               parser, seeds_text, welch_t)

L_TEACHER = "imagenette96_L_mobilenetv3"  # a benchmark teacher (benchmarks.teachers)
AB_SUPERVISED = "imagenette_ab_mobilenetv3"
STUDENTS = {"CRD": "imagenette_L_to_ab_crd", "KD": "imagenette_L_to_ab_kd"}  # method -> run (label-free)
FINETUNE = "configs/probe/imagenette_ab_finetune.yaml"
LINEAR = {"L teacher": "L_teacher_linear", "supervised": "ab_supervised_linear", "CRD": "ab_crd_linear",
          "KD": "ab_kd_linear"}
FINETUNED = {"CRD": "ab_crd_finetune", "KD": "ab_kd_finetune"}
RANDOM = "random-init"  # the checkpoint label of a probe's --random-init row
TICKS = {"supervised": "supervised ab", "CRD": "CRD student", "KD": "KD student", "random": "random init"}
NETWORKS = {  # key -> (label, labels used before the probe)
    "L teacher": ("L teacher (on L, reference)", "yes"),
    "supervised": ("ab, supervised", "yes"),
    "CRD": ("ab, CRD student of the L teacher", "no (teacher's embedding)"),
    "KD": ("ab, KD student of the L teacher", "no (teacher's soft predictions)"),
    "random": ("ab, random init", "no"),
}
# The paper's claims here (Figure 3): the CRD student's probe above the KD student's and the random init's.
CLAIMS = [("CRD", "random"), ("CRD", "KD")]
PROBES = ("linear", "finetune")


def seeded(name: str, seed: int) -> str:
    """The run or probe name of `name` at `seed`."""
    return f"{name}_s{seed}"


def linear(b: Bench, name: str, checkpoint: str, data: str, modality: str, seed: int,
           random_init: bool = False) -> Step:
    return b.probe("linear", seeded(name, seed), "--checkpoint", checkpoint, "--data", data, "--modality", modality,
                   "--seed", str(seed), *(["--random-init"] if random_init else []))


def finetune(b: Bench, name: str, checkpoint: str, data: str, seed: int, random_init: bool) -> Step:
    return b.probe("finetune", seeded(name, seed), FINETUNE, "--checkpoint", checkpoint, "--data", data,
                   "--modality", "ab", "--seed", str(seed), "--random-init" if random_init else "--no-random-init")


def trainings(b: Bench, teacher: dict, data: str, seed: int) -> list[Step]:
    """Seed `seed`'s supervised ab network and label-free students, and the L teacher's probe."""
    args = ["--seed", str(seed), "--set", f"data.path={data}"]
    return [*(b.train("distill", f"configs/cpu/{run}.yaml", seeded(run, seed), *args,
                      "--set", f"teachers.0.checkpoint={teacher['path']}") for run in STUDENTS.values()),
            b.train("teach", f"configs/cpu/{AB_SUPERVISED}.yaml", seeded(AB_SUPERVISED, seed), *args),
            linear(b, LINEAR["L teacher"], teacher["path"], data, "L", seed)]


def probes(b: Bench, data: str, seed: int) -> list[Step]:
    """Seed `seed`'s probes of the ab networks (the CRD finetune also trains the random init: first, so it starts
    first)."""
    student = {method: f"{b.runs}/{seeded(run, seed)}/last.pt" for method, run in STUDENTS.items()}
    return [finetune(b, FINETUNED["CRD"], student["CRD"], data, seed, random_init=True),
            finetune(b, FINETUNED["KD"], student["KD"], data, seed, random_init=False),
            linear(b, LINEAR["supervised"], f"{b.runs}/{seeded(AB_SUPERVISED, seed)}/last.pt", data, "ab", seed),
            linear(b, LINEAR["CRD"], student["CRD"], data, "ab", seed, random_init=True),
            linear(b, LINEAR["KD"], student["KD"], data, "ab", seed)]


def stages(b: Bench, teacher: dict, data: str, seeds: list[int]) -> list[list[Step]]:
    """Seed by seed, each seed's probes beside the next seed's trainings (both cores stay busy, and the first
    seed's numbers come first)."""
    out, previous = [], []
    for seed in seeds:
        out.append(previous + trainings(b, teacher, data, seed))
        previous = probes(b, data, seed)
    return out + [previous]


def split_sizes(data: str) -> str:
    """'N train / M test images' of a prepared file."""
    from crossmodal.data.schema import open_prepared

    f, info = open_prepared(REPO / data)
    f.close()
    splits = sorted(info["splits"].items(), key=lambda item: item[0] != "train")  # train first
    return " / ".join(f"{split['n']:,} {name}" for name, split in splits) + " images"


def probe_name(network: str, kind: str) -> str | None:
    """The probe whose rows hold `network`'s `kind` ('linear' or 'finetune') number (None: not probed that way)."""
    if network == "random":  # the random init's rows come from the CRD probes (their --random-init row)
        network = "CRD"
    return (LINEAR if kind == "linear" else FINETUNED).get(network)


def row(b: Bench, network: str, kind: str, seed: int, so_far: bool = False) -> dict | None:
    """`network`'s probe row of `kind` at `seed` (None when it is not probed that way or, with `so_far`, not
    finished yet)."""
    probe = probe_name(network, kind)
    if probe is None:
        return None
    name = seeded(probe, seed)
    if so_far and not (b.records_dir / "probe" / f"{name}.json").exists():
        return None
    random_init = network == "random"
    return next(r for r in b.probe_rows(name) if (r["checkpoint"] == RANDOM) == random_init)


def top1s(b: Bench, seeds: list[int], so_far: bool = False) -> dict:
    """(network, kind) -> {seed: top-1} over `seeds` (with `so_far`, only the finished ones)."""
    out = {}
    for network in NETWORKS:
        for kind in PROBES:
            found = {s: row(b, network, kind, s, so_far) for s in seeds}
            if probe_name(network, kind) is not None:
                out[network, kind] = {s: r["top1"] for s, r in found.items() if r is not None}
    return out


def claims(numbers: dict) -> list[dict]:
    """Each claim of CLAIMS for each probe kind, over the seeds both sides have: difference of means and Welch's t."""
    out = []
    for kind in PROBES:
        for better, worse in CLAIMS:
            a, c = numbers.get((better, kind), {}), numbers.get((worse, kind), {})
            both = [s for s in a if s in c]
            if not both:
                continue
            xs, ys = [a[s] for s in both], [c[s] for s in both]
            diff = mean_std(xs)[0] - mean_std(ys)[0]
            t = welch_t(xs, ys)
            out.append({"claim": f"{better} > {worse}", "probe": kind, "seeds": both, "difference": round(diff, 3),
                        "welch_t": None if t is None else round(t, 2), "holds": diff > 0 and t is not None and t > 2})
    return out


def table(numbers: dict) -> list[str]:
    lines = ["| network | labels used in pretraining | linear probe top-1, mean ± std (per seed) | "
             "finetune top-1, mean ± std (per seed) |", "|---|---|---|---|"]
    for key, (label, labels) in NETWORKS.items():
        lines.append(f"| {label} | {labels} | {seeds_text(numbers.get((key, 'linear'), {}))} | "
                     f"{seeds_text(numbers[key, 'finetune']) if (key, 'finetune') in numbers else '-'} |")
    return lines


def claims_table(found: list[dict]) -> list[str]:
    lines = ["| claim | probe | seeds | difference | Welch t | holds (difference > 0 and t > 2) |",
             "|---|---|---|---|---|---|"]
    for c in found:
        t = "-" if c["welch_t"] is None else f"{c['welch_t']:.2f}"
        lines.append(f"| {c['claim']} | {c['probe']} | {', '.join(map(str, c['seeds']))} | {c['difference']:+.2f} | "
                     f"{t} | {'yes' if c['holds'] else 'no'} |")
    return lines


def main() -> None:
    ap = parser("crossmodal_imagenette", __doc__)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (each seeds one whole row of networks)")
    ap.add_argument("--so-far", action="store_true",
                    help="print the finished probes' numbers from their records (a table in progress); run and "
                         "write nothing")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    b = bench("crossmodal_imagenette", args)
    if b.quick:  # a smoke run: one seed shows every step works
        seeds = seeds[:1]
    if args.so_far:
        numbers = top1s(b, seeds, so_far=True)
        print("\n".join(table(numbers) + [""] + claims_table(claims(numbers))))
        return
    data = b.data("imagenette")
    teacher = teachers.teacher(b, L_TEACHER)
    for stage in stages(b, teacher, data, seeds):
        b.run_stage(stage)
    report(b, teacher, data, seeds)


def report(b: Bench, teacher: dict, data: str, seeds: list[int]) -> None:
    numbers = top1s(b, seeds)
    found = claims(numbers)
    first = seeds[0]
    supervised = [b.summary(seeded(AB_SUPERVISED, s))["final_test_top1"] for s in seeds]
    finetune_budget = b.record(f"probe/{seeded(FINETUNED['CRD'], first)}")["budget"]
    body = [
        f"Cross-modal transfer L -> ab on Imagenette-96 (`{data}`: 10 classes, {split_sizes(data)}; the test split "
        "is Imagenette's val). The ab students never see a label: they learn from the L teacher on the same images. "
        "Every ab network is then scored on ab with labels: a linear probe on its frozen embedding (train split "
        "without augmentation) and a finetune of the whole network. timm mobilenetv3_small_100 everywhere, 96 px. "
        f"Seeds {', '.join(map(str, seeds))}: each seeds a whole row (trainings, probes, the random init); mean and "
        "sample standard deviation over them.",
        "",
        f"Budget, first: each ab student {budget_text(b.budget(seeded(STUDENTS['CRD'], first)))}; supervised ab "
        f"{budget_text(b.budget(seeded(AB_SUPERVISED, first)))}; each finetune {budget_text(finetune_budget)} (the "
        "random init's finetune is therefore supervised training from scratch at that budget); the L teacher "
        f"`{teacher['path']}` ({teacher['passes']:g} passes, test top-1 {teacher['test_top1']:.2f} on L).",
        "",
        *table(numbers),
        "",
        "The paper's claims, tested: difference of means, and Welch's t (the difference over its standard error from "
        "the seeds' sample stds; t > 2 is about two standard errors apart).",
        "",
        *claims_table(found),
        "",
        f"Test top-1 of the networks' own training: L teacher {teacher['test_top1']:.2f} (on L), supervised ab "
        f"{seeds_text(dict(zip(seeds, supervised)))} (last epoch). Linear probe: AdamW on standardised features, the "
        f"probe's default recipe; finetune recipe: `{FINETUNE}`; top-1 of the last epoch.",
        "",
        "Paper (Tian et al. 2020, Section 4.3 / Figure 3, qualitative only): on STL-10, L -> ab, the ab student "
        "distilled by CRD beats the KD student and the random init in both linear probing and finetuning, and comes "
        "close to the ab network trained with labels. Differences in setting: Imagenette-96 (10 ImageNet classes) "
        "instead of STL-10 (whose 100k unlabeled images are the paper's transfer set); mobilenetv3_small_100 "
        "trained for the budget above.",
    ]
    results = {"metric": "ab test top-1 (%) of a linear probe / a finetune, last epoch", "seeds": seeds,
               "teacher": teacher, "budget": b.budget(seeded(STUDENTS["CRD"], first)),
               "finetune_budget": finetune_budget,
               "networks": {key: {"label": label, "labels_before_probe": labels,
                                  **{f"{kind}_top1": ({"per_seed": {str(s): v for s, v in numbers[key, kind].items()},
                                                       "mean": round(mean_std(list(numbers[key, kind].values()))[0], 3),
                                                       "std": round(mean_std(list(numbers[key, kind].values()),
                                                                             sample=True)[1], 3)}
                                                      if (key, kind) in numbers else None) for kind in PROBES}}
                            for key, (label, labels) in NETWORKS.items()},
               "claims": found}
    b.write("Cross-modal transfer L -> ab on Imagenette-96", body, figure(numbers), results=results)


def figure(numbers: dict):
    fig, (ax,) = new_figure(width=7)
    ab = [key for key in NETWORKS if key != "L teacher"]
    teacher = mean_std(list(numbers["L teacher", "linear"].values()))[0]
    ax.axhline(teacher, color="k", linestyle="--", linewidth=1, label="L teacher, linear probe on L")

    def means(kind: str) -> list:
        return [mean_std(list(numbers[k, kind].values()))[0] if numbers.get((k, kind)) else None for k in ab]

    paired_bars(ax, [TICKS[k] for k in ab], {"linear probe": means("linear"), "finetune": means("finetune")},
                floor=teacher, headroom=1.35)
    ax.set_ylabel("ab test top-1 (%), mean over seeds")
    ax.set_title("Imagenette-96 L -> ab: ab networks scored with labels")
    return fig


if __name__ == "__main__":
    main_guard(main)
