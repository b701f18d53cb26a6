"""What the paper-experiment benchmarks share: data, steps run as CLI commands (parallel, skip-if-done,
resume-if-killed), budgets for --quick, summaries, mean/std, and the results files (markdown + plot).

An experiment module builds a list of stages; each stage is a list of `Step`s that may run at the same
time (`--jobs N` processes, each with OMP_NUM_THREADS=1 when N > 1: on a small CPU one thread per process
is faster than oversubscribing). A step whose output exists is skipped, so a killed benchmark continues
where it stopped, and a run with a last.pt resumes (`--resume`). Every step is an ordinary `crossmodal`
command: the results file lists them, so any number can be reproduced alone.

Full mode writes benchmarks/results/<name>.md and <name>.png; `--quick` (a smoke run of the whole
pipeline with tiny budgets and the mini datasets where they exist) writes under runs/quick/ instead,
so it never overwrites the committed results. `--runs DIR` moves the run, probe and log folders (and
--quick's records and results) from runs/ (runs/quick/) to DIR: the GPU queue's teacher jobs keep them in
their state folder, out of the repository.
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

from benchmarks import partial
from crossmodal.tempfiles import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
# The real datasets: ../shared/data beside the repository, or the folder SHARED_DATA_ENV names (on a GPU machine the
# queue's carried archives are under the repository, not beside it).
SHARED_DATA_ENV = "CROSSMODAL_SHARED_DATA"
SHARED = Path(os.environ[SHARED_DATA_ENV]) if os.environ.get(SHARED_DATA_ENV) else REPO.parent / "shared" / "data"

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
# --quick: CRD's negatives per anchor, below the mini sets' 200-500 training rows (K must stay under N).
QUICK_NCE_K = 128


class BenchmarkSkipped(SystemExit):
    """Real data absent: the benchmark says which file and exits 0 (nothing to measure here)."""


@dataclass
class Step:
    """One command of an experiment; skipped when done (its record or `done` exists), resumed from `resume_from`.

    `record` names the step's committed record (benchmarks/results/records/<record>.json): what a finished
    run produced (summary or probe rows, resolved config, budget, commit, machine), so a later session on a
    fresh checkout reads it instead of training again. `needs` are files the command reads that another
    step of the same experiment writes (a student checkpoint a probe loads): when one is missing, the step
    that writes it runs again first, even if its record exists.
    """

    cmd: list[str]
    done: Path
    resume_from: Optional[Path] = None
    record: Optional[str] = None
    needs: list[Path] = field(default_factory=list)

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
    used: list[str] = field(default_factory=list)  # the records the results file reads, for its .json
    records: Optional[Path] = None  # where step records live (default: see records_dir)
    root: Optional[Path] = None  # --runs: the top folder of every run, probe and log folder (default: runs_root)
    _producers: dict = field(default_factory=dict)  # run folder -> the Step that writes it

    @property
    def runs_root(self) -> Path:
        """The folder every run, probe and log folder is under (`runs` may be a subfolder of it): --runs, else
        runs/ (runs/quick/ under --quick). benchmarks.partial's saved copies are relative to it."""
        return self.root or Path("runs/quick" if self.quick else "runs")

    @property
    def records_dir(self) -> Path:
        """benchmarks/results/records (committed), <runs root>/records under --quick, or `records` if set."""
        if self.records is not None:
            return self.records
        return REPO / self.runs_root / "records" if self.quick else REPO / "benchmarks/results/records"

    @property
    def results_dir(self) -> Path:
        return REPO / self.runs_root / "results" if self.quick else REPO / "benchmarks/results"

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
            if (command == "distill" and _config_has_loss(config, "crd") and not any("crd.nce_k" in a for a in extra)
                    and _config_crd_k(config) > QUICK_NCE_K):  # a config's smaller K fits its own split already
                cmd += ["--set", f"loss_params.crd.nce_k={QUICK_NCE_K}"]
        run_dir = REPO / self.runs / name
        step = Step(cmd, run_dir / "summary.json", run_dir / "last.pt", record=name,
                    needs=_needed_files(cmd, self.runs_root))
        self._producers[run_dir] = step
        return step

    def probe(self, method: str, name: str, *args: str) -> Step:
        """`crossmodal probe METHOD ... --name NAME` writing runs/probe/<NAME>/results.json."""
        cmd = ["crossmodal", "probe", method, *args, "--out-dir", str(self.probe_dir), "--name", name]
        if self.quick:
            cmd += QUICK_PROBE
        out = REPO / self.probe_dir / name
        return Step(cmd, out / "results.json", (out / "last.pt") if method == "finetune" else None,
                    record=f"probe/{name}", needs=_needed_files(cmd, self.runs_root))

    # ------------------------------------------------------------------ records
    def record(self, name: str) -> dict:
        """The record of finished step `name` (a run or probe/<probe name>); noted for the results .json."""
        path = self.records_dir / f"{name}.json"
        if not path.exists():
            raise SystemExit(f"{self.name}: no record {shown(path)}: the step that writes it has not run")
        if name not in self.used:
            self.used.append(name)
        return json.loads(path.read_text())

    def summary(self, run: str) -> dict:
        """summary.json of finished run `run`, from its record."""
        return self.record(run)["summary"]

    def probe_rows(self, name: str) -> list[dict]:
        """The result rows of finished probe `name`, from its record."""
        return self.record(f"probe/{name}")["results"]["rows"]

    def budget(self, name: str) -> dict:
        """The budget of finished run `name`: epochs, steps per epoch, batch, images seen, passes."""
        return self.record(name)["budget"]

    def _is_recorded(self, step: Step) -> bool:
        """True when the step's record exists and was made by the same command on the same inputs."""
        if step.record is None:
            return False
        path = self.records_dir / f"{step.record}.json"
        if not path.exists():
            return False
        rec = json.loads(path.read_text())
        return rec.get("command") == step.text and rec.get("inputs") == _fingerprint(step.cmd, self.runs_root)

    def _write_record(self, step: Step, wall_s: Optional[float]) -> None:
        """Record what finished step `step` produced (from its run or probe folder)."""
        if step.record is None or not step.done.exists():
            return
        out_dir = step.done.parent
        rec = {"name": step.record, "command": step.text, "inputs": _fingerprint(step.cmd, self.runs_root),
               "commit": git_commit(), "machine": machine_line(), "wall_s": None if wall_s is None else round(wall_s, 1),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        key = "summary" if step.done.name == "summary.json" else "results"  # a training run, or a probe's rows
        rec[key] = json.loads(step.done.read_text())
        curve = read_curve(out_dir / "metrics.csv")
        if curve is not None:
            rec["curve"] = curve
        if (out_dir / "config.yaml").exists():  # a training run, or a finetune probe (a training run of its own)
            import yaml

            cfg = yaml.safe_load((out_dir / "config.yaml").read_text())
            rec.update(config=cfg, budget=run_budget(cfg))
        path = self.records_dir / f"{step.record}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(rec, indent=1, sort_keys=True) + "\n")

    def run_stage(self, steps: list[Step]) -> None:
        """Run the steps not yet done, up to `jobs` at once; stop at the first failure (naming its log).

        A step is done when its record matches its command and inputs, or (with no record) its output
        exists; then its record is (re)written from the output. A stale record's run folder is cleared
        before the step runs again. Steps whose needed files are missing first rerun their producers.
        """
        for step in steps:
            self.commands.append(step.text)
        todo = []
        for step in steps:
            if self._is_recorded(step):
                continue
            if step.done.exists() and not self._record_is_stale(step):
                self._write_record(step, None)
                continue
            if self._record_is_stale(step):
                _clear(step.done.parent, self.runs_root)
            elif step.resume_from is not None and not self.quick:
                # an unfinished run of an earlier session (only on the device it ran on: same seed, same device)
                run_dir, runs = step.resume_from.parent, REPO / self.runs_root
                why = partial.refusal(run_dir, _device_flag(step.cmd), runs=runs, partial=partial.PARTIAL)
                if why:
                    print(f"  not restored {shown(run_dir)}: {why}; it starts afresh", flush=True)
                elif partial.restore(run_dir, runs=runs, partial=partial.PARTIAL):
                    print(f"  restored {shown(run_dir)} from {shown(partial.PARTIAL)}", flush=True)
            todo.append(step)
        missing = [p for step in todo for p in step.needs if not p.exists()]
        producers = [self._producers[d] for d in dict.fromkeys(d for p in missing for d in self._producers
                                                                if d in p.parents)]
        if producers:
            for producer in producers:
                _clear(producer.done.parent, self.runs_root)
            self._run(producers)
        self._run(todo)

    def _record_is_stale(self, step: Step) -> bool:
        """A record made by another command or on other inputs (its outputs belong to that run)."""
        return (step.record is not None and (self.records_dir / f"{step.record}.json").exists()
                and not self._is_recorded(step))

    def _run(self, todo: list[Step]) -> None:
        """Run `todo` up to `jobs` at once, recording each as it finishes; exit naming the first failure."""
        todo = list(todo)
        if not todo:
            return
        env = dict(os.environ)
        if self.jobs > 1:
            env["OMP_NUM_THREADS"] = "1"
        logs = REPO / self.runs / "bench_logs"
        logs.mkdir(parents=True, exist_ok=True)
        running: list[tuple[Step, subprocess.Popen, Path, float]] = []
        failed: list[str] = []
        while todo or running:
            while todo and len(running) < self.jobs and not failed:
                step = todo.pop(0)
                cmd = step.cmd + (["--resume"] if step.resume_from is not None and step.resume_from.exists() else [])
                log = logs / f"{_slug(step)}.log"
                print(f"+ {shlex.join(cmd)}   (log: {shown(log)})", flush=True)
                handle = open(log, "w")
                running.append((step, subprocess.Popen(launch_argv(cmd), cwd=REPO, env=env, stdout=handle,
                                                       stderr=subprocess.STDOUT), log, time.perf_counter()))
            if failed and not running:
                break
            time.sleep(0.5)
            for item in list(running):
                step, proc, log, started = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                if proc.returncode != 0:
                    tail = log.read_text().strip().splitlines()[-1:] or [""]
                    failed.append(f"{step.text} exited {proc.returncode} ({tail[0]}; log {shown(log)})")
                else:
                    self._write_record(step, time.perf_counter() - started)
                    print(f"  done: {step.text}", flush=True)
        if failed:
            sys.exit(f"{self.name}: " + "; ".join(failed))

    # ------------------------------------------------------------------ results
    def write(self, title: str, body: list[str], figure=None, argv: Optional[list[str]] = None,
              results: Optional[dict] = None) -> Path:
        """benchmarks/results/<name>.md (and .png): title, machine, body, the reproduce line and every command;
        and <name>.json: `results` (per-method numbers) with the commit, machine, command and the budgets of
        every record the report read."""
        import torch

        self.results_dir.mkdir(parents=True, exist_ok=True)
        argv = sys.argv[1:] if argv is None else argv
        written = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        lines = [f"# {title}", "", f"Machine: {machine_line()}, torch {torch.__version__}; written {written}.", "",
                 *body, ""]
        png = self.results_dir / f"{self.name}.png"
        if figure is not None:
            lines += [f"![{title}]({png.name})", ""]
        reproduce = f"python -m benchmarks.{self.module or self.name}" + (" " + shlex.join(argv) if argv else "")
        lines += [f"Reproduce: `{reproduce}`", "",
                  "Commands it runs, in order (each skipped when its record, or its output, exists):", "", "```"]
        lines += list(dict.fromkeys(self.commands)) + ["```", ""]
        out = self.results_dir / f"{self.name}.md"
        text = "\n".join(lines)
        data = {"experiment": self.name, "title": title, "reproduce": reproduce, "commit": git_commit(),
                "machine": machine_line(), "torch": torch.__version__, "written": written, "results": results or {},
                "runs": {name: {k: rec.get(k) for k in ("command", "budget", "commit", "machine", "wall_s")}
                         for name in self.used for rec in [json.loads((self.records_dir / f"{name}.json").read_text())]},
                "commands": list(dict.fromkeys(self.commands))}
        kept = _kept_report(out, text, data)
        if kept is not None:
            # Rerun over finished records: the same numbers. Rewriting would change only the date and commit,
            # which makes a diff to commit and the README's results block (it cites the commit) stale.
            if figure is not None:
                import matplotlib.pyplot as plt

                plt.close(figure)
            print(f"{shown(out)}: unchanged (the same numbers and commands), kept as written on {kept['written']}")
            print(out.read_text())
            return out
        if figure is not None:
            save_figure(figure, png)
        atomic_write_text(out, text)
        atomic_write_text(out.with_suffix(".json"), json.dumps(data, indent=1) + "\n")
        print(text)
        return out


_VOLATILE = ("commit", "written")  # what a report's rerun over the same records changes and nothing else


def _kept_report(out: Path, text: str, data: dict) -> Optional[dict]:
    """The JSON of `out` when `out` (.md and .json) already says `text` and `data` but for when it was written and
    at which commit (the machine line's date, the JSON's commit and written); else None."""
    try:
        old_text, old_data = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None

    def strip_machine(t: str) -> list[str]:
        return [line for line in t.splitlines() if not line.startswith("Machine: ")]

    same = (strip_machine(old_text) == strip_machine(text)
            and {k: v for k, v in old_data.items() if k not in _VOLATILE}
            == {k: v for k, v in json.loads(json.dumps(data)).items() if k not in _VOLATILE})
    return old_data if same else None


def _config_has_loss(config: str, loss: str) -> bool:
    """True when distill config `config` (repository-relative) names `loss` among its losses."""
    import yaml

    path = REPO / config
    return path.is_file() and loss in ((yaml.safe_load(path.read_text()) or {}).get("losses") or {})


def _config_crd_k(config: str) -> int:
    """CRD's K in distill config `config` (repository-relative): its loss_params.crd.nce_k, else the default."""
    import inspect

    import yaml

    from crossmodal.losses.crd import CRDLoss

    cfg = yaml.safe_load((REPO / config).read_text()) or {}
    k = ((cfg.get("loss_params") or {}).get("crd") or {}).get("nce_k")
    return int(k) if k is not None else inspect.signature(CRDLoss).parameters["nce_k"].default


def _paths_in(cmd: list[str]):
    """Every path-like word of a command: its arguments, and the values of `key=value` and YAML-list overrides."""
    for token in cmd:
        value = token.split("=", 1)[1] if "=" in token else token
        yield from value.replace("[", " ").replace("]", " ").replace(",", " ").replace("{", " ").split()


def _in_runs(part: str, root: Optional[Path] = None) -> bool:
    """True when path word `part` is under runs/ or under the runs root `root` (--runs)."""
    return part.startswith("runs/") or (root is not None and part.startswith(str(root).rstrip("/") + "/"))


def _needed_files(cmd: list[str], root: Optional[Path] = None) -> list[Path]:
    """Checkpoints under runs/ (or the runs root `root`) that a command reads (`--checkpoint X`,
    `...checkpoint=X`)."""
    return [REPO / part for part in _paths_in(cmd) if part.endswith(".pt") and _in_runs(part, root)]


def _fingerprint(cmd: list[str], root: Optional[Path] = None) -> dict[str, str]:
    """sha256 (first 16 hex) of every repository file a command names (configs, committed teachers), not of what
    runs write (under runs/ or the runs root `root`)."""
    from crossmodal.engine.checkpoint import file_sha256

    found = {}
    for part in _paths_in(cmd):
        path = REPO / part
        if path.suffix in (".yaml", ".yml", ".pt") and not part.startswith("runs") and not _in_runs(part, root) \
                and path.is_file():
            found[part] = file_sha256(path)[:16]
    return found


CURVE_COLUMNS = ("epoch", "lr", "train_top1", "test_top1")


def read_curve(path: Path) -> Optional[dict]:
    """A run's per-epoch curve from its metrics.csv: {column: [value per epoch]} for CURVE_COLUMNS present
    (None when the file is absent or has no epoch column)."""
    import csv

    if not path.exists():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "epoch" not in rows[0]:
        return None
    return {col: [int(r[col]) if col == "epoch" else float(r[col]) for r in rows]
            for col in CURVE_COLUMNS if col in rows[0]}


def run_budget(cfg: dict) -> dict:
    """Epochs, steps per epoch, batch, images seen and passes over the training split of a resolved config."""
    from crossmodal.data.schema import open_prepared

    epochs, batch = cfg["optim"]["epochs"], cfg["optim"]["batch_size"]
    h5, info = open_prepared(REPO / cfg["data"]["path"])
    h5.close()
    n = info["splits"][cfg["data"].get("train_split", "train")]["n"]
    steps = n // batch
    if cfg["engine"].get("max_steps_per_epoch") is not None:
        steps = min(steps, cfg["engine"]["max_steps_per_epoch"])
    seen = epochs * steps * batch
    return {"epochs": epochs, "steps_per_epoch": steps, "batch": batch, "images_seen": seen, "train_size": n,
            "passes": round(seen / n, 2)}


def budget_text(b: dict) -> str:
    """'E epochs x S steps x B images (N images seen, P passes)' of a run_budget dict."""
    plural = "epoch" if b["epochs"] == 1 else "epochs"
    return (f"{b['epochs']} {plural} x {b['steps_per_epoch']} steps x {b['batch']} images "
            f"({b['images_seen']:,} images seen, {b['passes']:g} passes over {b['train_size']:,})")


def _clear(folder: Path, root: Optional[Path] = None) -> None:
    """Remove a benchmark run or probe folder (under runs/, or the runs root `root`) before it is made again."""
    import shutil

    roots = [REPO / "runs"] + ([(REPO / root).resolve()] if root is not None else [])
    if folder.exists() and any(r in folder.resolve().parents for r in roots):
        shutil.rmtree(folder)


def git_commit() -> str:
    """The checkout's short commit ('unknown' outside git)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _device_flag(cmd: list[str]) -> Optional[str]:
    """The value of a `--device` option in `cmd`, or None (the config's engine.device then applies)."""
    for i, arg in enumerate(cmd):
        if arg == "--device" and i + 1 < len(cmd):
            return cmd[i + 1]
        if arg.startswith("--device="):
            return arg.split("=", 1)[1]
    return None


def shown(path: Path) -> str:
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
    p.add_argument("--runs", type=Path, default=None, metavar="DIR",
                   help="folder for the run, probe and log folders (and --quick's records and results) "
                        "[default: runs/, runs/quick/ under --quick]")
    return p


def bench(name: str, args: argparse.Namespace, module: str = "") -> Bench:
    """The Bench of experiment `name` (results stem) run as `python -m benchmarks.<module or name>`."""
    root = getattr(args, "runs", None) or (Path("runs/quick") if args.quick else Path("runs"))
    return Bench(name=name, quick=args.quick, jobs=max(1, args.jobs), runs=root, module=module, root=root)


def checkpoint_test_probs(paths: list, data: str, modality: str, split: str = "test"):
    """(softmax outputs (N, classes) of each checkpoint's network on `split` of prepared file `data`, labels (N,)).

    Each network reads the split re-normalised to its own training stats, exactly as `distill` feeds a
    teacher (crossmodal.engine.teachers.load_teachers).
    """
    import torch
    from torch.utils.data import DataLoader

    from crossmodal.data.dataset import PreparedDataset
    from crossmodal.engine.teachers import load_teachers
    from crossmodal.tasks.distill import TeacherConfig

    test = PreparedDataset(REPO / data, split, [modality], preload=True)
    loader = DataLoader(test, batch_size=500)
    probs = []
    for teacher in load_teachers([TeacherConfig(str(REPO / p), modality) for p in paths], test.stats):
        with torch.no_grad():
            probs.append(torch.cat([teacher(batch)["logits"].softmax(1) for batch in loader]))
    return probs, torch.as_tensor(test.labels)


def mean_std(values: list[float], sample: bool = False) -> tuple[float, float]:
    """Mean and standard deviation: population (divide by n), or sample (n - 1) when `sample`; 0 for one value."""
    mean = sum(values) / len(values)
    dof = len(values) - 1 if sample and len(values) > 1 else len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / dof) ** 0.5


def seeds_text(per_seed: dict) -> str:
    """'mean ± std (v0, v1, ...)' of {seed: number} (sample std; '-' when there are none)."""
    values = list(per_seed.values())
    if not values:
        return "-"
    mean, std = mean_std(values, sample=True)
    return f"{mean:.2f} ± {std:.2f} ({', '.join(f'{v:.2f}' for v in values)})"


def welch_t(a: list[float], b: list[float]) -> Optional[float]:
    """(mean(a) - mean(b)) / sqrt(s_a^2/n_a + s_b^2/n_b) with sample stds: how many standard errors apart
    two sets of seeds are (None with fewer than 2 values on a side, or no spread at all)."""
    if len(a) < 2 or len(b) < 2:
        return None
    (ma, sa), (mb, sb) = mean_std(a, sample=True), mean_std(b, sample=True)
    se = (sa ** 2 / len(a) + sb ** 2 / len(b)) ** 0.5
    return None if se == 0 else (ma - mb) / se


def machine_line(device: Optional[str] = None) -> str:
    """The host's CPU and core count; for a run on `device` "cuda", the GPU's name first (the host in brackets)."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    host = f"{cpu}, {os.cpu_count()} cores"
    if device is not None and str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(torch.device(device))} (host: {host})"
    return host


def launch_argv(cmd: list[str]) -> list[str]:
    """The argv that runs `cmd`: a `crossmodal ...` command runs as `python -m cli ...` with this interpreter, so a
    checkout runs its own code whether or not (and wherever) the package is installed (a device machine has no
    console script); every other command runs as it is. Logs and records keep the `crossmodal` spelling."""
    return [sys.executable, "-m", "cli", *cmd[1:]] if cmd and cmd[0] == "crossmodal" else list(cmd)


def relative_command(cmd: list[str]) -> str:
    """`cmd` as one shell line, with arguments that are absolute paths inside the repository made relative
    (a record's command then reads the same on every machine)."""
    root = str(REPO) + os.sep
    return shlex.join(a[len(root):] if a.startswith(root) else a for a in cmd)


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
