"""The paper's experiments, one after another, on real data (../shared/data), CPU-sized.

    python -m benchmarks.suite --jobs 2            # the whole suite: many hours on 2 cores (see the README)
    python -m benchmarks.suite --quick --jobs 2    # smoke run of every experiment: under 5 minutes
    python -m benchmarks.suite --only ensemble,ablation

Each experiment is also runnable alone (`python -m benchmarks.<name>`). A finished step leaves a committed
record (benchmarks/results/records/) and is never rerun, so a killed suite, or one continued in another
session on a fresh checkout, goes on where it stopped. The suite writes benchmarks/results/suite.md (runs/quick/results/
under --quick): each experiment's command, wall time and exit status.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time

from benchmarks.common import REPO, launch_argv, machine_line
from crossmodal.tempfiles import atomic_write_text

# (experiment, arguments), in an order that respects what they share: each experiment asks for its teachers
# (benchmarks.teachers.teacher: the committed file, else trained then), so the headline tables come first (the
# two with a stated expectation, CIFAR-10 compression and L -> ab, before the rest; then `budget`, which asks whether
# the CIFAR-10 table's budget decides CRD's gain there) and the ensemble's four
# teachers are trained when the ensemble needs them; compression on Tiny-ImageNet-100 trains the seed-0 students
# that transfer probes; ablation's labels-only run is ensemble's; `teachers` last checks that every benchmark
# teacher is committed.
EXPERIMENTS = [
    ("compression", ["--dataset", "cifar10", "--seeds", "0,1,2"]),
    ("crossmodal_imagenette", []),
    ("budget", []),
    ("compression", ["--dataset", "tinyimagenet100", "--seeds", "0,1,2", "--methods", "vanilla,KD,CRD,CRD+KD"]),
    ("transfer", []),
    ("ablation", []),
    ("ensemble", []),
    ("rgbd_nyu18", []),
    ("teachers", []),
]


def cli_problem() -> str:
    """Why this checkout's CLI, which every step runs (`python -m cli` with this interpreter), cannot start here
    ('' when it can): a missing dependency would otherwise fail every step of every experiment, one after the
    other."""
    cmd = launch_argv(["crossmodal", "--version"])
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return (f"`{shlex.join(cmd)}` exited {done.returncode} ({last}): install the package and its dependencies "
                f"(pip install -e .)")
    return ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny budgets, results under runs/quick/")
    ap.add_argument("--jobs", type=int, default=1, help="commands each experiment runs at once")
    ap.add_argument("--only", default="", help="comma-separated experiment names (default: all)")
    args = ap.parse_args(argv)
    only = {name for name in args.only.split(",") if name}
    unknown = only - {name for name, _ in EXPERIMENTS}
    if unknown:
        ap.error(f"--only: unknown experiment(s) {sorted(unknown)}; known: {sorted({n for n, _ in EXPERIMENTS})}")
    broken = cli_problem()
    if broken:
        print(f"benchmarks.suite: {broken}", file=sys.stderr)
        return 2
    rows, started = [], time.perf_counter()
    for name, extra in EXPERIMENTS:
        if only and name not in only:
            continue
        cmd = [sys.executable, "-m", f"benchmarks.{name}", *extra, "--jobs", str(args.jobs)]
        cmd += ["--quick"] if args.quick else []
        print(f"\n##### {shlex.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.run(cmd, cwd=REPO).returncode
        rows.append((shlex.join(["python", *cmd[1:]]), time.perf_counter() - start, code))
    total = time.perf_counter() - started
    lines = ["# Benchmark suite" + (" (--quick smoke run)" if args.quick else ""), "",
             f"Machine: {machine_line()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Wall time counts "
             "only the steps this invocation ran: steps whose outputs existed were skipped.", "",
             "| experiment | wall time | exit |", "|---|---|---|"]
    lines += [f"| `{cmd}` | {seconds / 60:.1f} min | {code} |" for cmd, seconds, code in rows]
    lines += ["", f"Total: {total / 60:.1f} min. Reproduce: `python -m benchmarks.suite "
              f"{'--quick ' if args.quick else ''}--jobs {args.jobs}`", ""]
    out = REPO / ("runs/quick/results" if args.quick else "benchmarks/results") / "suite.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n".join(lines))
    print("\n".join(lines))
    return sum(1 for _, _, code in rows if code)


if __name__ == "__main__":
    sys.exit(main())
