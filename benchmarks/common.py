"""What the paper-experiment benchmarks share: data, steps run as CLI commands (parallel, skip-if-done,
resume-if-killed), budgets for --quick, summaries, mean/std, and the results files (markdown + plot).

An experiment module builds a list of stages; each stage is a list of `Step`s that may run at the same
time (`--jobs N` processes, each with OMP_NUM_THREADS=1 when N > 1: on a small CPU one thread per process
is faster than oversubscribing). A step whose output exists is skipped, so a killed benchmark continues
where it stopped, and a run with a last.pt resumes (`--resume`). Every step is an ordinary `crossmodal`
command: the results file lists them, so any number can be reproduced alone.

Full mode writes benchmarks/results/<name>.md and <name>.png; `--quick` (a smoke run of the whole
pipeline with tiny budgets and the mini datasets where they exist) writes under runs/quick/ instead,
so it never overwrites the committed results.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from crossmodal.config import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

# Raw archive in ../shared/data, prepared file, `crossmodal prepare` arguments after the kind.
DATASETS = {
    "cifar10": ("cifar10.tar.gz", "data/cifar10.h5", ["imagefolder", "--modalities", "rgb,L,ab"]),
    "cifar10-mini": ("cifar10-mini.tar.gz", "data/cifar10_mini.h5", ["imagefolder", "--modalities", "rgb,L,ab"]),
    "tinyimagenet100": ("tinyimagenet100-32.tar.gz", "data/tinyimagenet100.h5", ["imagefolder", "--modalities", "rgb"]),
    "imagenette": ("imagenette2-96.tgz", "data/imagenette.h5", ["imagefolder", "--modalities", "rgb,L,ab"]),
    "imagenette-mini": ("imagenette2-96-mini.tgz", "data/imagenette_mini.h5",
                        ["imagefolder", "--modalities", "rgb,L,ab"]),
    "nyu18": ("nyu18", "data/nyu18.h5", ["rgbd", "--modalities", "rgb,depth", "--size", "96"]),
}
# In --quick mode a dataset with a mini version reads the mini version.
QUICK_DATA = {"cifar10": "cifar10-mini", "imagenette": "imagenette-mini"}
# --quick budgets: one epoch of three small steps (teach, distill, finetune) and one probe epoch.
QUICK_TRAIN = ["--epochs", "1", "--batch-size", "16", "--set", "engine.max_steps_per_epoch=3"]
QUICK_PROBE = ["--epochs", "1"]


class BenchmarkSkipped(SystemExit):
    """Real data absent: the benchmark says which file and exits 0 (nothing to measure here)."""


@dataclass
class Step:
    """One command of an experiment; skipped when `done` exists, resumed when `resume_from` exists."""

    cmd: list[str]
    done: Path
    resume_from: Optional[Path] = None

    @property
    def text(self) -> str:
        return shlex.join(self.cmd)


@dataclass
class Bench:
    """Parsed common options and the paths that follow from them."""

    name: str  # results file stem
    quick: bool = False
    jobs: int = 1
    runs: Path = field(default_factory=lambda: Path("runs"))
    commands: list[str] = field(default_factory=list)  # every step's command, in order, for the results file
    module: str = ""  # python -m benchmarks.<module> (default: name)

    @property
    def results_dir(self) -> Path:
        return REPO / ("runs/quick/results" if self.quick else "benchmarks/results")

    @property
    def probe_dir(self) -> Path:
        return self.runs / "probe"

    # ------------------------------------------------------------------ data
    def data(self, key: str) -> str:
        """The prepared file of dataset `key` (its mini version under --quick), preparing it if needed."""
        key = QUICK_DATA.get(key, key) if self.quick else key
        raw, out, prepare_args = DATASETS[key]
        if not (SHARED / raw).exists():
            raise BenchmarkSkipped(f"{self.name}: skipped: {SHARED / raw} is absent (this benchmark reads the real "
                                   f"data from ../shared/data)")
        if not (REPO / out).exists():
            (REPO / out).parent.mkdir(parents=True, exist_ok=True)
            self.run_stage([Step(["crossmodal", "prepare", prepare_args[0], str(SHARED / raw), "--out", out,
                                  *prepare_args[1:]], REPO / out)])
        return out

    # ------------------------------------------------------------------ commands
    def train(self, command: str, config: str, name: str, *extra: str) -> Step:
        """`crossmodal teach|distill CONFIG --name NAME` writing runs/<NAME>/ (quick budget under --quick)."""
        cmd = ["crossmodal", command, config, "--out-dir", str(self.runs), "--name", name, *extra]
        if self.quick:
            cmd += QUICK_TRAIN
        run_dir = REPO / self.runs / name
        return Step(cmd, run_dir / "summary.json", run_dir / "last.pt")

    def probe(self, method: str, name: str, *args: str) -> Step:
        """`crossmodal probe METHOD ... --name NAME` writing runs/probe/<NAME>/results.json."""
        cmd = ["crossmodal", "probe", method, *args, "--out-dir", str(self.probe_dir), "--name", name]
        if self.quick:
            cmd += QUICK_PROBE
        out = REPO / self.probe_dir / name
        return Step(cmd, out / "results.json", (out / "last.pt") if method == "finetune" else None)

    def run_stage(self, steps: list[Step]) -> None:
        """Run the steps not yet done, up to `jobs` at once; stop at the first failure (naming its log)."""
        for step in steps:
            self.commands.append(step.text)
        todo = [s for s in steps if not s.done.exists()]
        env = dict(os.environ)
        if self.jobs > 1:
            env["OMP_NUM_THREADS"] = "1"
        logs = REPO / self.runs / "bench_logs"
        logs.mkdir(parents=True, exist_ok=True)
        running: list[tuple[Step, subprocess.Popen, Path]] = []
        failed: list[str] = []
        while todo or running:
            while todo and len(running) < self.jobs and not failed:
                step = todo.pop(0)
                cmd = step.cmd + (["--resume"] if step.resume_from is not None and step.resume_from.exists() else [])
                log = logs / f"{_slug(step)}.log"
                print(f"+ {shlex.join(cmd)}   (log: {_shown(log)})", flush=True)
                handle = open(log, "w")
                running.append((step, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=handle,
                                                       stderr=subprocess.STDOUT), log))
            if failed and not running:
                break
            time.sleep(0.5)
            for item in list(running):
                step, proc, log = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                if proc.returncode != 0:
                    tail = log.read_text().strip().splitlines()[-1:] or [""]
                    failed.append(f"{step.text} exited {proc.returncode} ({tail[0]}; log {_shown(log)})")
                else:
                    print(f"  done: {step.text}", flush=True)
        if failed:
            sys.exit(f"{self.name}: " + "; ".join(failed))

    # ------------------------------------------------------------------ results
    def write(self, title: str, body: list[str], figure=None, argv: Optional[list[str]] = None) -> Path:
        """benchmarks/results/<name>.md (and .png): title, machine, body, the reproduce line and every command."""
        import torch

        self.results_dir.mkdir(parents=True, exist_ok=True)
        argv = sys.argv[1:] if argv is None else argv
        lines = [f"# {title}", "", f"Machine: {machine_line()}, torch {torch.__version__}; "
                 f"written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "", *body, ""]
        if figure is not None:
            png = self.results_dir / f"{self.name}.png"
            save_figure(figure, png)
            lines += [f"![{title}]({png.name})", ""]
        reproduce = f"python -m benchmarks.{self.module or self.name}" + (" " + shlex.join(argv) if argv else "")
        lines += [f"Reproduce: `{reproduce}`", "",
                  "Commands it runs, in order (each skipped when its output exists):", "", "```"]
        lines += list(dict.fromkeys(self.commands)) + ["```", ""]
        out = self.results_dir / f"{self.name}.md"
        text = "\n".join(lines)
        atomic_write_text(out, text)
        print(text)
        return out


def _shown(path: Path) -> str:
    """`path` relative to the repo when it is inside it."""
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def _slug(step: Step) -> str:
    """A log-file name for a step: its run/probe name when it has one, else its output's parent folder."""
    if "--name" in step.cmd:
        return step.cmd[step.cmd.index("--name") + 1]
    return step.done.stem


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    """An argparse parser with the options every experiment takes."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny budgets, mini data where it exists, results under runs/quick/")
    p.add_argument("--jobs", type=int, default=1,
                   help="commands run at once (each with OMP_NUM_THREADS=1 when > 1); 2 on a 2-core machine")
    return p


def bench(name: str, args: argparse.Namespace, module: str = "") -> Bench:
    """The Bench of experiment `name` (results stem) run as `python -m benchmarks.<module or name>`."""
    return Bench(name=name, quick=args.quick, jobs=max(1, args.jobs),
                 runs=Path("runs/quick") if args.quick else Path("runs"), module=module)


def summary(run_dir: Path) -> dict:
    """A finished run's summary.json."""
    return json.loads((REPO / run_dir / "summary.json").read_text())


def budget(run_dir: Path) -> str:
    """'E epochs x S steps x B images (N images seen)' from a run's resolved config.yaml and its data file.

    S is what the engine ran: floor(train samples / batch), capped by engine.max_steps_per_epoch.
    """
    import yaml

    from crossmodal.data.schema import open_prepared

    cfg = yaml.safe_load((REPO / run_dir / "config.yaml").read_text())
    epochs, batch = cfg["optim"]["epochs"], cfg["optim"]["batch_size"]
    h5, info = open_prepared(REPO / cfg["data"]["path"])
    h5.close()
    steps = info["splits"][cfg["data"].get("train_split", "train")]["n"] // batch
    if cfg["engine"].get("max_steps_per_epoch") is not None:
        steps = min(steps, cfg["engine"]["max_steps_per_epoch"])
    plural = "epoch" if epochs == 1 else "epochs"
    return f"{epochs} {plural} x {steps} steps x {batch} images ({epochs * steps * batch:,} images seen)"


def probe_rows(bench_: Bench, name: str) -> list[dict]:
    """The rows of probe run <runs>/probe/<name>/results.json."""
    return json.loads((REPO / bench_.probe_dir / name / "results.json").read_text())["rows"]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation (0 for one value)."""
    mean = sum(values) / len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def new_figure(ncols: int = 1, width: float = 5.0):
    """A matplotlib figure (Agg backend) with `ncols` axes side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 3.6), squeeze=False)
    return fig, list(axes[0])


def paired_bars(ax, ticks: list[str], series: dict[str, list], floor: float = 0.0, headroom: float = 1.3,
                **tick_style) -> None:
    """Two bars per tick (series name -> values, None = no bar) with a legend; the y axis runs from 0 to
    `headroom` x the tallest bar (or `floor`, a line drawn beside them), leaving room for the legend."""
    xs = range(len(ticks))
    width = 0.38
    for (name, values), shift, color in zip(series.items(), (-width / 2, width / 2), ("#4c72b0", "#dd8452")):
        bars = [(x, v) for x, v in zip(xs, values) if v is not None]
        ax.bar([x + shift for x, _ in bars], [v for _, v in bars], width, label=name, color=color)
    ax.set_ylim(0, max([floor] + [v for values in series.values() for v in values if v is not None]) * headroom)
    ax.set_xticks(list(xs), ticks, **tick_style)
    ax.legend(loc="upper right", fontsize=8)


def save_figure(fig, path: Path) -> None:
    """Write the figure to `path` atomically and close it."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(path.name + ".tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main_guard(fn) -> None:
    """Run an experiment's main; a BenchmarkSkipped prints its reason and exits 0."""
    try:
        fn()
    except BenchmarkSkipped as skip:
        print(skip.code)
        sys.exit(0)
