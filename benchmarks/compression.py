"""Compression (the paper's Table 1 protocol, CPU-sized): one teacher, a smaller student by each method, 3 seeds.

    python -m benchmarks.compression --dataset cifar10 --jobs 2                # 7 methods x 3 seeds, 15 passes each
    python -m benchmarks.compression --dataset tinyimagenet100 --methods vanilla,KD,CRD,CRD+KD --jobs 2
    python -m benchmarks.compression --dataset cifar100 --seeds 0 --profile gpu  # the paper's full recipe
    python -m benchmarks.compression --dataset cifar10 --so-far                # the table so far, from records

The teacher is the committed one (teachers/<dataset>_resnet20.pt, `python -m benchmarks.teachers`), trained
to convergence; every student reads it. Students: vanilla (labels only), KD, FitNet, AT, PKT, CRD, CRD+KD,
each `crossmodal distill` with the reference scripts' loss weights and CRD's reference settings (K 16384,
tau 0.07, exact sampling, frozen Z).

Profiles:
- cpu (default): resnet20 -> resnet8, each student 15 passes over the training set (configs/cpu/).
- gpu: the paper's CIFAR-100 recipe (240 epochs, batch 64, lr 0.05, steps at 150/180/210, K 16384),
  resnet32x4 -> resnet8x4, from configs/cifar100/. Needs CUDA and data/cifar100.h5
  (`crossmodal prepare cifar100 ~/torchvision-data --download --out data/cifar100.h5`, a torchvision root);
  it skips otherwise.

Every finished run leaves a record (benchmarks/results/records/<run>.json), so the table can be completed
over several sessions; the results are benchmarks/results/compression_<dataset>.md and .json.
"""
from __future__ import annotations

from pathlib import Path

from benchmarks import teachers
from benchmarks.common import (REPO, Bench, BenchmarkSkipped, Step, bench, budget_text, main_guard, mean_std,
                               new_figure, parser, welch_t)

METHODS = ["vanilla", "KD", "FitNet", "AT", "PKT", "CRD", "CRD+KD"]
QUICK_METHODS = ["vanilla", "KD", "CRD", "CRD+KD"]  # --quick: the CRD path and its baselines (FitNet/AT/PKT: unit tests)
SUFFIX = {"KD": "kd", "FitNet": "fitnet", "AT": "at", "PKT": "pkt", "CRD": "crd", "CRD+KD": "crd_kd"}
# Methods without a shipped config in the gpu profile: the KD pair config with these losses.
DERIVED_LOSSES = {"FitNet": "{ce: 1.0, fitnet: 100.0}", "AT": "{ce: 1.0, at: 1000.0}", "PKT": "{ce: 1.0, pkt: 30000.0}"}
# The paper's claims this table tests: (method, baseline) pairs.
CLAIMS = [("CRD", "vanilla"), ("CRD+KD", "KD"), ("CRD", "KD")]

# The paper's CIFAR-100 test top-1 (Tian et al. 2020, Table 1; mean of 5 runs, 240 epochs) for the pair
# nearest each profile's: resnet56 -> resnet20 (same family, ~2.5x fewer layers) and resnet32x4 -> resnet8x4.
PAPER = {
    "resnet56 -> resnet20": {"teacher": 72.34, "vanilla": 69.06, "KD": 70.66, "FitNet": 69.21, "AT": 70.55,
                             "PKT": 70.34, "CRD": 71.16, "CRD+KD": 71.63},
    "resnet32x4 -> resnet8x4": {"teacher": 79.42, "vanilla": 72.50, "KD": 73.33, "FitNet": 73.50, "AT": 73.44,
                                "PKT": 73.64, "CRD": 75.51, "CRD+KD": 75.46},
}


def profile(dataset: str, name: str = "cpu") -> dict:
    """Config paths and names of the runs for (dataset, profile `name`)."""
    if name == "gpu":
        return dict(teacher_cfg="configs/cifar100/resnet32x4.yaml", teacher="cifar100_resnet32x4",
                    student_cfg="configs/cifar100/resnet8x4.yaml", student="cifar100_resnet8x4",
                    pair="configs/cifar100/resnet32x4_resnet8x4_{}.yaml", paper="resnet32x4 -> resnet8x4",
                    data="data/cifar100.h5", arch=("resnet32x4", "resnet8x4"))
    d = dataset
    return dict(teacher_cfg=None, teacher=f"{d}_resnet20",
                student_cfg=f"configs/cpu/{d}_resnet8.yaml", student=f"{d}_resnet8",
                pair=f"configs/cpu/{d}_resnet20_resnet8_{{}}.yaml", paper="resnet56 -> resnet20",
                data=None, arch=("resnet20", "resnet8"))


def run_name(p: dict, method: str, seed: int) -> str:
    """The run name of `method`'s student at `seed` (vanilla: the student trained from labels alone)."""
    if method == "vanilla":
        return f"{p['student']}_s{seed}"
    return f"{Path(p['pair'].format(SUFFIX[method])).stem}_s{seed}"


def student_steps(b: Bench, p: dict, teacher_path: str, seeds: list[int], data: list[str], device: list[str],
                  methods: list[str] = METHODS) -> list[Step]:
    """One step per (seed, method), seeds in the outer loop so that every method has seed 0 first."""
    steps = []
    for seed in seeds:
        for method in methods:
            if method == "vanilla":
                steps.append(b.train("teach", p["student_cfg"], run_name(p, method, seed), "--seed", str(seed),
                                     *data, *device))
                continue
            config = p["pair"].format(SUFFIX[method])
            extra = []
            if not (REPO / config).exists():  # gpu profile: FitNet/AT/PKT from the KD pair config
                config = p["pair"].format("kd")
                extra = ["--set", f"losses={DERIVED_LOSSES[method]}", "--set", "loss_params={}"]
            steps.append(b.train("distill", config, run_name(p, method, seed), "--seed", str(seed), "--set",
                                 f"teachers.0.checkpoint={teacher_path}", *extra, *data, *device))
    return steps


def teacher_for(b: Bench, p: dict, data: list[str], device: list[str]) -> dict:
    """The profile's teacher: the committed benchmark teacher (cpu), or a `teach` run of the paper's config (gpu)."""
    if p["teacher_cfg"] is None:
        return teachers.teacher(b, p["teacher"], device)
    step = b.train("teach", p["teacher_cfg"], p["teacher"], *data, *device)
    b.run_stage([step])
    summary = b.summary(p["teacher"])
    return {"name": p["teacher"], "path": f"{b.runs}/{p['teacher']}/last.pt", "test_top1": summary["final_test_top1"],
            "sha256": None, "passes": b.budget(p["teacher"])["passes"], "arch": summary["arch"]}


def main() -> None:
    ap = parser("compression", __doc__)
    ap.add_argument("--dataset", choices=["cifar10", "tinyimagenet100", "cifar100"], default="cifar10")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the student runs")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--so-far", action="store_true",
                    help="print the finished students' numbers from their records (a table in progress); run and "
                         "write nothing")
    args = ap.parse_args()
    if (args.profile == "gpu") != (args.dataset == "cifar100"):
        ap.error("the gpu profile is the paper's CIFAR-100 recipe (--dataset cifar100 --profile gpu); "
                 "cifar10 and tinyimagenet100 use the cpu profile")
    methods = [m for m in args.methods.split(",") if m]
    if set(methods) - set(METHODS) or "vanilla" not in methods:
        ap.error(f"--methods: choose from {', '.join(METHODS)}, vanilla included (the baseline every gain is "
                 f"measured against); got {args.methods!r}")
    name = f"compression_{args.dataset}" + ("_gpu" if args.profile == "gpu" else "")
    b = bench(name, args, module="compression")
    p = profile(args.dataset, args.profile)
    seeds = [int(s) for s in args.seeds.split(",")]
    if b.quick:  # a smoke run: one seed and the CRD path show every step works
        seeds, methods = seeds[:1], [m for m in QUICK_METHODS if m in methods]
    if args.so_far:
        print(so_far(b, p, seeds, methods))
        return
    device: list[str] = []
    if args.profile == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise BenchmarkSkipped(f"{name}: skipped: the gpu profile needs CUDA (torch.cuda.is_available() is False)")
        if not (REPO / p["data"]).exists():
            raise BenchmarkSkipped(f"{name}: skipped: {p['data']} is absent (crossmodal prepare cifar100 "
                                   "cifar-100-python.tar.gz --out data/cifar100.h5)")
        data_path, device = p["data"], ["--device", "cuda"]
    else:
        data_path = b.data(args.dataset)
    data = ["--set", f"data.path={data_path}"]
    teacher = teacher_for(b, p, data, device)
    b.run_stage(student_steps(b, p, teacher["path"], seeds, data, device, methods))
    report(b, p, teacher, seeds, args, methods)


def so_far(b: Bench, p: dict, seeds: list[int], methods: list[str]) -> str:
    """Markdown: each method's final top-1 per seed where its record exists ('-' where not), the mean and sample std
    of those, and each claim's difference and Welch t over the seeds every method of it has finished."""
    finals = {}
    for method in methods:
        for seed in seeds:
            path = b.records_dir / f"{run_name(p, method, seed)}.json"
            if path.exists():
                finals[method, seed] = b.summary(run_name(p, method, seed))["final_test_top1"]
    lines = ["| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | std | n |",
             "|---|" + "---|" * (len(seeds) + 3)]
    for method in methods:
        values = [finals[method, s] for s in seeds if (method, s) in finals]
        mean, std = mean_std(values, sample=True) if values else (float("nan"), float("nan"))
        cells = [f"{finals[method, s]:.2f}" if (method, s) in finals else "-" for s in seeds]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {mean:.2f} | {std:.2f} | {len(values)} |")
    lines += ["", "| claim | seeds | difference | Welch t |", "|---|---|---|---|"]
    for better, worse in CLAIMS:
        both = [s for s in seeds if (better, s) in finals and (worse, s) in finals]
        if not both:
            continue
        a, c = [finals[better, s] for s in both], [finals[worse, s] for s in both]
        t = welch_t(a, c)
        lines.append(f"| {better} > {worse} | {', '.join(map(str, both))} | {mean_std(a)[0] - mean_std(c)[0]:+.2f} | "
                     f"{'-' if t is None else f'{t:.2f}'} |")
    return "\n".join(lines)


def mean_curve(curves: list) -> dict | None:
    """{epoch: mean test top-1 over the seeds} from the seeds' recorded curves (None unless every seed has one,
    all over the same epochs)."""
    if not curves or any(c is None for c in curves) or any(c["epoch"] != curves[0]["epoch"] for c in curves):
        return None
    return {str(e): round(sum(c["test_top1"][i] for c in curves) / len(curves), 3)
            for i, e in enumerate(curves[0]["epoch"])}


def during_training(curves: dict[str, list]) -> list[str]:
    """Markdown: each method's test top-1 (mean over seeds) at about six epochs of its run, and the epochs where
    CRD's mean leads the labels-only mean (the methods' records must carry curves; a line saying so otherwise)."""
    means = {m: mean_curve(c) for m, c in curves.items()}
    if any(v is None for v in means.values()):
        missing = [m for m, v in means.items() if v is None]
        return ["", f"During training: not tabled (no per-epoch curve in the records of {', '.join(missing)})."]
    epochs = list(next(iter(means.values())))
    shown = sorted({epochs[round(i * (len(epochs) - 1) / 5)] for i in range(6)}, key=int)
    lines = ["", "Test top-1 during training (mean over the seeds; each run's own cosine schedule, so an early epoch "
             "is not a shorter run's end):", "",
             "| method | " + " | ".join(f"epoch {e}" for e in shown) + " |", "|---|" + "---|" * len(shown)]
    lines += [f"| {m} | " + " | ".join(f"{v[e]:.2f}" for e in shown) + " |" for m, v in means.items()]
    if "CRD" in means and "vanilla" in means:
        lead = [e for e in epochs if means["CRD"][e] > means["vanilla"][e]]
        gaps = {e: means["CRD"][e] - means["vanilla"][e] for e in epochs}
        widest = max(gaps, key=gaps.get)
        lines += ["", f"CRD's mean is above the labels-only mean at {len(lead)} of {len(epochs)} epochs"
                  + (f" (widest: {gaps[widest]:+.2f} at epoch {widest}; at the last epoch {gaps[epochs[-1]]:+.2f})."
                     if lead else ".")]
    return lines


def plot_curves(ax, curves: dict[str, list]) -> None:
    for method, per_seed in curves.items():
        mean = mean_curve(per_seed)
        if mean is not None:
            ax.plot([int(e) for e in mean], list(mean.values()), label=method)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%), mean over seeds")
    ax.set_title("during training" if ax.lines else "during training: no curves recorded")
    if ax.lines:
        ax.legend(loc="lower right", fontsize=7)


def report(b: Bench, p: dict, teacher: dict, seeds: list[int], args, methods: list[str] = METHODS) -> None:
    finals = {m: [b.summary(run_name(p, m, s))["final_test_top1"] for s in seeds] for m in methods}
    stats = {m: mean_std(v, sample=True) for m, v in finals.items()}
    paper = PAPER[p["paper"]]
    t_arch, s_arch = p["arch"]
    student_budget = b.budget(run_name(p, "vanilla", seeds[0]))
    body = [
        f"Teacher {t_arch} -> student {s_arch} on {args.dataset}. Test top-1 of each student's final epoch, mean "
        f"and sample standard deviation over seeds {', '.join(map(str, seeds))}.",
        "",
        f"Budget, first: each student {budget_text(student_budget)}; the teacher `{teacher['path']}` "
        f"({teacher['passes']:g} passes, test top-1 {teacher['test_top1']:.2f}). "
        + ("The paper's recipe (240 epochs)." if args.profile == "gpu" else
           "The paper trains 240 epochs on CIFAR-100 on a GPU; this is the CPU-sized protocol (cosine schedule over "
           "the budget; the reference's batch, lr, weight decay, loss weights and CRD settings)."),
        "",
        f"| method | test top-1 mean | std | per seed | gain over vanilla | paper ({p['paper']}, CIFAR-100) | "
        "paper gain |",
        "|---|---|---|---|---|---|---|",
        f"| teacher {t_arch} | {teacher['test_top1']:.2f} | - | - | - | {paper['teacher']:.2f} | - |",
    ]
    vanilla_mean = stats["vanilla"][0]
    for method in methods:
        mean, std = stats[method]
        gain = "-" if method == "vanilla" else f"{mean - vanilla_mean:+.2f}"
        paper_gain = "-" if method == "vanilla" else f"{paper[method] - paper['vanilla']:+.2f}"
        body.append(f"| {s_arch} {method} | {mean:.2f} | {std:.2f} | {', '.join(f'{v:.2f}' for v in finals[method])} "
                    f"| {gain} | {paper[method]:.2f} | {paper_gain} |")
    claims = []
    body += ["", "The paper's claims, tested: difference of means, and Welch's t (the difference over its standard "
             "error from the seeds' sample stds; |t| > 2 is about two standard errors apart).", "",
             "| claim | difference | Welch t | holds here (difference > 0 and t > 2) |", "|---|---|---|---|"]
    for better, worse in CLAIMS:
        if better not in finals or worse not in finals:
            continue
        diff = stats[better][0] - stats[worse][0]
        t = welch_t(finals[better], finals[worse])
        holds = diff > 0 and t is not None and t > 2
        claims.append({"claim": f"{better} > {worse}", "difference": round(diff, 3),
                       "welch_t": None if t is None else round(t, 2), "holds": holds})
        body.append(f"| {better} > {worse} | {diff:+.2f} | {'-' if t is None else f'{t:.2f}'} | "
                    f"{'yes' if holds else 'no'} |")
    curves = {m: [b.record(run_name(p, m, s)).get("curve") for s in seeds] for m in methods}
    body += during_training(curves)
    fig, (ax, ax_curve) = new_figure(ncols=2, width=6)
    plot_curves(ax_curve, curves)
    xs = range(len(methods))
    ax.bar(xs, [stats[m][0] for m in methods], yerr=[stats[m][1] for m in methods], capsize=4, color="#4c72b0")
    ax.axhline(teacher["test_top1"], color="k", linestyle="--", linewidth=1, label=f"teacher {t_arch}")
    ax.set_xticks(list(xs), methods)
    lo = min(stats[m][0] - stats[m][1] for m in methods)
    ax.set_ylim(max(0.0, lo - 5), max(teacher["test_top1"], max(v[0] + v[1] for v in stats.values())) + 2)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"{args.dataset}: {t_arch} -> {s_arch}, {len(seeds)} seed(s), {student_budget['passes']:g} passes")
    ax.legend(loc="lower right")
    results = {
        "metric": "final-epoch test top-1 (%)", "dataset": args.dataset, "teacher": teacher,
        "student_arch": s_arch, "budget": student_budget, "seeds": seeds,
        "methods": {m: {"per_seed": dict(zip(map(str, seeds), finals[m])), "mean": round(stats[m][0], 3),
                        "std": round(stats[m][1], 3)} for m in methods},
        "claims": claims, "paper": {"pair": p["paper"], **paper},
        "test_top1_by_epoch": {m: mean_curve(c) for m, c in curves.items() if mean_curve(c) is not None},
    }
    b.write(f"Compression on {args.dataset}: {t_arch} -> {s_arch}", body, fig, results=results)


if __name__ == "__main__":
    main_guard(main)
