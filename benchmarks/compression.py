"""Compression (the paper's Table 1 protocol, CPU-sized): one teacher, a smaller student by 7 methods, several seeds.

    python -m benchmarks.compression --dataset cifar10 --seeds 0,1 --jobs 2            # ~40 min on 2 cores
    python -m benchmarks.compression --dataset tinyimagenet100 --seeds 0,1 --jobs 2    # ~40 min on 2 cores
    python -m benchmarks.compression --dataset cifar100 --seeds 0 --profile gpu         # the paper's full recipe

The teacher is trained once by `crossmodal teach` and reused by every student. Students: vanilla (labels
only), KD, FitNet, AT, PKT, CRD, CRD+KD, each `crossmodal distill` with the reference scripts' loss weights.

Profiles:
- cpu (default): resnet20 -> resnet8 with the shipped configs/cpu budgets (each run under one pass over the
  data; the budget is printed in the results file).
- gpu: the paper's CIFAR-100 recipe (240 epochs, batch 64, lr 0.05, steps at 150/180/210, K 16384),
  resnet32x4 -> resnet8x4, from configs/cifar100/. Needs CUDA and data/cifar100.h5
  (`crossmodal prepare cifar100 cifar-100-python.tar.gz --out data/cifar100.h5`); it skips otherwise.
"""
from __future__ import annotations

from pathlib import Path

from benchmarks.common import REPO, Bench, Step, bench, main_guard, mean_std, budget, new_figure, parser, summary, \
    BenchmarkSkipped

METHODS = ["vanilla", "KD", "FitNet", "AT", "PKT", "CRD", "CRD+KD"]
QUICK_METHODS = ["vanilla", "KD", "CRD", "CRD+KD"]  # --quick: the CRD path and its baselines (FitNet/AT/PKT: unit tests)
SUFFIX = {"KD": "kd", "FitNet": "fitnet", "AT": "at", "PKT": "pkt", "CRD": "crd", "CRD+KD": "crd_kd"}
# Methods without a shipped config in the gpu profile: the KD pair config with these losses.
DERIVED_LOSSES = {"FitNet": "{ce: 1.0, fitnet: 100.0}", "AT": "{ce: 1.0, at: 1000.0}", "PKT": "{ce: 1.0, pkt: 30000.0}"}

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
    return dict(teacher_cfg=f"configs/cpu/{d}_resnet20.yaml", teacher=f"{d}_resnet20",
                student_cfg=f"configs/cpu/{d}_resnet8.yaml", student=f"{d}_resnet8",
                pair=f"configs/cpu/{d}_resnet20_resnet8_{{}}.yaml", paper="resnet56 -> resnet20",
                data=None, arch=("resnet20", "resnet8"))


def run_name(p: dict, method: str, seed: int) -> str:
    """The run name of `method`'s student at `seed` (vanilla: the student trained from labels alone)."""
    if method == "vanilla":
        return f"{p['student']}_s{seed}"
    return f"{Path(p['pair'].format(SUFFIX[method])).stem}_s{seed}"


def student_steps(b: Bench, p: dict, seeds: list[int], data: list[str], device: list[str],
                  methods: list[str] = METHODS) -> list[Step]:
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
                                 f"teachers.0.checkpoint={b.runs}/{p['teacher']}/best.pt", *extra, *data, *device))
    return steps


def stages(b: Bench, p: dict, seeds: list[int], data: list[str], device: list[str],
           methods: list[str] = METHODS) -> list[list[Step]]:
    """The teacher, then the students of `methods` at `seeds` (each list runs as one stage)."""
    return [[b.train("teach", p["teacher_cfg"], p["teacher"], *data, *device)],
            student_steps(b, p, seeds, data, device, methods)]


def main() -> None:
    ap = parser("compression", __doc__)
    ap.add_argument("--dataset", choices=["cifar10", "tinyimagenet100", "cifar100"], default="cifar10")
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds of the student runs")
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    args = ap.parse_args()
    if (args.profile == "gpu") != (args.dataset == "cifar100"):
        ap.error("the gpu profile is the paper's CIFAR-100 recipe (--dataset cifar100 --profile gpu); "
                 "cifar10 and tinyimagenet100 use the cpu profile")
    name = f"compression_{args.dataset}" + ("_gpu" if args.profile == "gpu" else "")
    b = bench(name, args, module="compression")
    p = profile(args.dataset, args.profile)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = METHODS
    if b.quick:  # a smoke run: one seed and the CRD path show every step works
        seeds, methods = seeds[:1], QUICK_METHODS
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
    for stage in stages(b, p, seeds, data, device, methods):
        b.run_stage(stage)
    report(b, p, seeds, args, methods)


def report(b: Bench, p: dict, seeds: list[int], args, methods: list[str] = METHODS) -> None:
    teacher = summary(b.runs / p["teacher"])
    per_method: dict[str, list[dict]] = {m: [] for m in methods}
    for seed in seeds:
        for method in methods:
            per_method[method].append(summary(b.runs / run_name(p, method, seed)))
    paper = PAPER[p["paper"]]
    t_arch, s_arch = p["arch"]
    vanilla_mean = mean_std([s["final_test_top1"] for s in per_method["vanilla"]])[0]
    body = [
        f"Teacher {t_arch} -> student {s_arch} on {args.dataset} ({'the paper recipe' if args.profile == 'gpu' else 'CPU-sized'}). "
        f"Test top-1 of the final epoch, mean and population std over seeds {', '.join(map(str, seeds))}.",
        "",
        "Budget, stated plainly: " + (
            "the paper's (240 epochs)." if args.profile == "gpu" else
            f"teacher {budget(b.runs / p['teacher'])}; each student {budget(b.runs / (p['student'] + f'_s{seeds[0]}'))}; "
            "well under one pass over the training set per student, against the paper's 240 "
            "epochs. CRD uses K = 4096 negatives (paper 16384)."),
        "",
        f"| method | test top-1 mean | std | per seed | best-epoch mean | gain over vanilla | paper ({p['paper']}, "
        "CIFAR-100) | paper gain | images/s |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| teacher {t_arch} | {teacher['final_test_top1']:.2f} | - | - | {teacher['best_test_top1']:.2f} | - | "
        f"{paper['teacher']:.2f} | - | {teacher['images_per_s']:.0f} |",
    ]
    means = {}
    for method, runs in per_method.items():
        finals = [s["final_test_top1"] for s in runs]
        mean, std = mean_std(finals)
        means[method] = (mean, std)
        best = mean_std([s["best_test_top1"] for s in runs])[0]
        gain = "-" if method == "vanilla" else f"{mean - vanilla_mean:+.2f}"
        paper_gain = "-" if method == "vanilla" else f"{paper[method] - paper['vanilla']:+.2f}"
        ips = mean_std([s["images_per_s"] for s in runs])[0]
        body.append(f"| {s_arch} {method} | {mean:.2f} | {std:.2f} | {', '.join(f'{v:.2f}' for v in finals)} | "
                    f"{best:.2f} | {gain} | {paper[method]:.2f} | {paper_gain} | {ips:.0f} |")
    body += ["", "images/s: training throughput of each run (other runs shared the machine; see --jobs)."]
    fig, (ax,) = new_figure(width=7)
    xs = range(len(methods))
    ax.bar(xs, [means[m][0] for m in methods], yerr=[means[m][1] for m in methods], capsize=4, color="#4c72b0")
    ax.axhline(teacher["final_test_top1"], color="k", linestyle="--", linewidth=1, label=f"teacher {t_arch}")
    ax.set_xticks(list(xs), methods)
    lo = min(means[m][0] - means[m][1] for m in methods)
    ax.set_ylim(max(0.0, lo - 5), max(teacher["final_test_top1"], max(v[0] + v[1] for v in means.values())) + 2)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"{args.dataset}: {t_arch} -> {s_arch}, {len(seeds)} seed(s)")
    ax.legend(loc="lower right")
    b.write(f"Compression on {args.dataset}: {t_arch} -> {s_arch}", body, fig)


if __name__ == "__main__":
    main_guard(main)
