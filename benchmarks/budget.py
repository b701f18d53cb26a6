"""CRD against the labels-only student as the budget grows (CIFAR-10, resnet20 -> resnet8): the ablation that asks
whether the number of passes is why CRD's lead over labels alone, clear at 5 passes, is gone at 15.

    python -m benchmarks.budget --jobs 2        # vanilla and CRD at 5, 15 and 45 passes, seeds 0 and 1
    python -m benchmarks.budget --quick         # smoke run on the mini data
    python -m benchmarks.budget --so-far        # the finished runs' numbers (and the running ones' epoch)

The runs at 5 passes are the CRD ablation's (benchmarks.ablation: its reference setting and its labels-only
student), those at 15 are the compression table's (benchmarks.compression): the same commands, so their records are
reused and only what is missing runs here. The runs at 45 passes are this experiment's own: the same configs
(configs/cpu/cifar10_resnet8.yaml, configs/cpu/cifar10_resnet20_resnet8_crd.yaml; the cosine schedule spans each
run's budget) with `--epochs 45`. The paper trains 240 epochs (CIFAR-100); the 45-pass runs are what a CPU allows,
and the GPU queue's budget jobs (benchmarks.gpu.queue) run the same two configs for 240 passes, seed 0: their row
joins the table once both are done.
"""
from __future__ import annotations

import json
from typing import Optional

from benchmarks import ablation, common, compression, teachers
from benchmarks.common import Bench, bench, main_guard, mean_std, new_figure, parser, read_curve
from benchmarks.gpu.queue import BUDGET_EPOCHS

LONG = 45  # passes of this experiment's own runs
MID = 15  # the compression table's (configs/cpu/)


def gpu_point(b: Bench) -> Optional[dict]:
    """The GPU queue's 240-pass runs (seed 0), when both are done: {"vanilla", "CRD", "device"}, else None."""
    records = {}
    for method in ("vanilla", "crd"):
        path = b.results_dir / f"gpu_budget_cifar10_{BUDGET_EPOCHS}ep_{method}_s0.json"
        if not path.exists():
            return None
        records[method] = json.loads(path.read_text())
        if records[method].get("status") != "done":
            return None
    return {"vanilla": records["vanilla"]["summary"]["final_test_top1"],
            "CRD": records["crd"]["summary"]["final_test_top1"], "device": records["crd"]["device"]}


def long_names(seed: int) -> dict[str, str]:
    return {"vanilla": f"cifar10_resnet8_{LONG}ep_s{seed}", "CRD": f"cifar10_resnet20_resnet8_crd_{LONG}ep_s{seed}"}


def steps_and_names(b: Bench, data: str, teacher_path: str, seeds: list[int]):
    """(steps in the order they run, {nominal passes: {method: [run name per seed]}})."""
    p = compression.profile("cifar10")
    names = {ablation.EPOCHS: {"vanilla": [], "CRD": []}, MID: {"vanilla": [], "CRD": []},
             LONG: {"vanilla": [], "CRD": []}}
    steps = []
    for seed in seeds:  # seed 0's 45-pass runs first: they decide the question
        long = long_names(seed)
        epochs = [] if b.quick else ["--epochs", str(LONG)]
        long_steps = [b.train("teach", ablation.VANILLA_CONFIG, long["vanilla"], "--seed", str(seed), "--set",
                              f"data.path={data}", *epochs),
                      b.train("distill", ablation.STUDENT_CONFIG, long["CRD"], "--seed", str(seed), "--set",
                              f"data.path={data}", *epochs, "--set", f"teachers.0.checkpoint={teacher_path}")]
        short = [ablation.vanilla_step(b, data, seed),
                 ablation.crd_step(b, data, teacher_path, ablation.reference_k(b), ablation.T_DEFAULT,
                                   f"loss_params.crd.nce_t={ablation.T_DEFAULT}", seed=seed)]
        mid = compression.student_steps(b, p, teacher_path, [seed], ["--set", f"data.path={data}"], [],
                                        ["vanilla", "CRD"])
        steps += long_steps + short + mid
        for passes, (v, c) in ((ablation.EPOCHS, short), (MID, mid), (LONG, long_steps)):
            names[passes]["vanilla"].append(v.record)
            names[passes]["CRD"].append(c.record)
    return steps, names


def main() -> None:
    ap = parser("budget", __doc__)
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds of every run")
    ap.add_argument("--so-far", action="store_true",
                    help="print the finished runs' final top-1 from their records and the unfinished ones' last "
                         "epoch from their run folders; run and write nothing")
    args = ap.parse_args()
    b = bench("budget", args)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.so_far:
        _, names = steps_and_names(b, "DATA", ablation.TEACHER, seeds)  # run names only: no data or teacher read
        print(so_far(b, names, seeds))
        return
    data = b.data("cifar10")
    teacher = teachers.teacher(b, ablation.TEACHER)
    steps, names = steps_and_names(b, data, teacher["path"], seeds)
    b.run_stage(steps)
    report(b, teacher, seeds, names)


def so_far(b: Bench, names: dict, seeds: list[int]) -> str:
    """Markdown: per budget and seed, each method's final top-1 where its record exists, else the last finished
    epoch's test top-1 from its run folder (marked unfinished), else '-'; the gap where both are final."""
    def cell(run: str, epochs: int) -> tuple[str, float | None]:
        if (b.records_dir / f"{run}.json").exists():
            top1 = b.summary(run)["final_test_top1"]
            return f"{top1:.2f}", top1
        curve = read_curve(common.REPO / b.runs / run / "metrics.csv")
        if curve and curve["epoch"]:
            return f"unfinished: {curve['test_top1'][-1]:.2f} at epoch {curve['epoch'][-1]} of {epochs}", None
        return "-", None

    lines = ["| passes | seed | vanilla | CRD | CRD - vanilla |", "|---|---|---|---|---|"]
    for nominal, by_method in names.items():
        for seed, vanilla_run, crd_run in zip(seeds, by_method["vanilla"], by_method["CRD"]):
            (v_text, v), (c_text, c) = cell(vanilla_run, nominal), cell(crd_run, nominal)
            gap = f"{c - v:+.2f}" if v is not None and c is not None else "-"
            lines.append(f"| {nominal} | {seed} | {v_text} | {c_text} | {gap} |")
    return "\n".join(lines)


def report(b: Bench, teacher: dict, seeds: list[int], names: dict) -> None:
    top1 = lambda run: b.summary(run)["final_test_top1"]  # noqa: E731
    rows, results = [], {}
    for nominal, by_method in names.items():
        finals = {m: [top1(r) for r in runs] for m, runs in by_method.items()}
        gaps = [c - v for c, v in zip(finals["CRD"], finals["vanilla"])]
        budget = b.budget(by_method["CRD"][0])
        (v_mean, _), (c_mean, _), (g_mean, g_std) = (mean_std(finals["vanilla"]), mean_std(finals["CRD"]),
                                                     mean_std(gaps, sample=True))
        rows.append(f"| {budget['passes']:g} | {', '.join(f'{v:.2f}' for v in finals['vanilla'])} | {v_mean:.2f} | "
                    f"{', '.join(f'{v:.2f}' for v in finals['CRD'])} | {c_mean:.2f} | "
                    f"{', '.join(f'{g:+.2f}' for g in gaps)} | {g_mean:+.2f} |")
        results[str(nominal)] = {"budget": budget, "vanilla": dict(zip(map(str, seeds), finals["vanilla"])),
                                            "CRD": dict(zip(map(str, seeds), finals["CRD"])),
                                            "gap_per_seed": dict(zip(map(str, seeds), gaps)),
                                            "gap_mean": round(g_mean, 3), "gap_std": round(g_std, 3)}
    gpu = gpu_point(b)
    if gpu is not None:
        gap = gpu["CRD"] - gpu["vanilla"]
        rows.append(f"| {BUDGET_EPOCHS} (GPU, seed 0 only) | {gpu['vanilla']:.2f} | {gpu['vanilla']:.2f} | "
                    f"{gpu['CRD']:.2f} | {gpu['CRD']:.2f} | {gap:+.2f} | {gap:+.2f} |")
        results[str(BUDGET_EPOCHS)] = {"device": gpu["device"], "vanilla": {"0": gpu["vanilla"]},
                                       "CRD": {"0": gpu["CRD"]}, "gap_per_seed": {"0": gap},
                                       "gap_mean": round(gap, 3), "gap_std": 0.0}
    gpu_note = (f" The {BUDGET_EPOCHS}-pass row ran on {gpu['device']} (the GPU queue's budget jobs: the same configs "
                f"with `--set optim.epochs={BUDGET_EPOCHS}`, in bf16 autocast with the CRD loss in float32; "
                "benchmarks/results/gpu_budget_*.json), the others on this CPU in float32." if gpu else
                f" The GPU queue's {BUDGET_EPOCHS}-pass point (benchmarks.gpu.queue, jobs budget_*) has not run yet.")
    body = [
        f"resnet8 on CIFAR-10 from labels alone (vanilla) and by CRD (ce 1, crd 0.8, the reference's K 16384, tau "
        f"0.07, exact sampling, frozen Z) from the committed resnet20 teacher `{teacher['path']}` (test top-1 "
        f"{teacher['test_top1']:.2f}); test top-1 of each run's final epoch, seeds {', '.join(map(str, seeds))}. "
        "Each budget is a whole run (the cosine schedule spans it), not a point on a longer run's curve." + gpu_note,
        "",
        "| passes | vanilla per seed | vanilla mean | CRD per seed | CRD mean | CRD - vanilla per seed | mean gap |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Read the gap per seed (the same seed gives both runs the same data order): a gap that grows with the budget "
        "says the CPU budget is why CRD does not lead at 15 passes; one that shrinks says CRD speeds up early "
        "learning on this pair without raising where it ends.",
    ]
    fig, (ax,) = new_figure(width=5)
    passes = [float(k) for k in results]
    seeds_at = {k: [s for s in map(str, seeds) if s in results[k]["gap_per_seed"]] for k in results}
    ax.plot(passes, [results[k]["gap_mean"] for k in results], marker="o")
    for seed in map(str, seeds):
        ks = [k for k in results if seed in seeds_at[k]]
        ax.plot([float(k) for k in ks], [results[k]["gap_per_seed"][seed] for k in ks], linestyle=":", marker=".",
                label=f"seed {seed}")
    ax.axhline(0.0, color="k", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("passes over the training set")
    ax.set_ylabel("CRD - vanilla, test top-1 (points)")
    ax.legend(loc="best")
    b.write("CRD against labels only as the budget grows (cifar10, resnet20 -> resnet8)", body, fig,
            results={"metric": "final-epoch test top-1 (%)", "teacher": teacher, "seeds": seeds, "by_passes": results})


if __name__ == "__main__":
    main_guard(main)
