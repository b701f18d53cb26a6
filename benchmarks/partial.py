"""Unfinished benchmark runs carried across sessions: save them into the repository, continue them later.

    python -m benchmarks.partial save      # copy every unfinished run under runs/ into benchmarks/partial/
    python -m benchmarks.partial list      # what is saved, and how far each run got

A session on this project's 2-core machine can end in the middle of a long training run, and the next
session starts from a fresh checkout. `save` copies what an unfinished run needs to resume exactly
(last.pt, config.yaml, metrics.csv, its fingerprint; no TensorBoard events) when its checkpoint is small
enough to commit (MAX_MB); the benchmark harness (benchmarks.common.Bench.run_stage) copies a saved run back
into runs/ before it would start that run from nothing, and `crossmodal ... --resume` continues it, ending
with the weights of an uninterrupted run. A finished run's saved copy is removed by `save`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
PARTIAL = REPO / "benchmarks" / "partial"
RUNS = REPO / "runs"
MAX_MB = 16.0  # a saved checkpoint larger than this is left out (CRD memories over 50,000 rows are ~50 MB)
FILES = ("last.pt", "config.yaml", "metrics.csv", "fingerprint.json")


def unfinished(runs: Path = RUNS) -> list[Path]:
    """Run folders under `runs` (quick runs excluded) with a last.pt and no summary.json."""
    return sorted(p.parent for p in runs.rglob("last.pt")
                  if not (p.parent / "summary.json").exists() and "quick" not in p.relative_to(runs).parts)


def save(runs: Path = RUNS, partial: Path = PARTIAL) -> list[str]:
    """Copy every unfinished run's resumable files into `partial` (replacing older copies); drop finished ones."""
    lines = []
    for run in unfinished(runs):
        size_mb = (run / "last.pt").stat().st_size / 2**20
        rel = run.relative_to(runs)
        if size_mb > MAX_MB:
            lines.append(f"skipped {rel}: last.pt is {size_mb:.1f} MB (limit {MAX_MB:.0f}); it will restart")
            continue
        dest = partial / rel
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for name in FILES:
            if (run / name).exists():
                shutil.copy2(run / name, dest / name)
        lines.append(f"saved {rel}: {epochs_done(dest)} epochs done, {size_mb:.1f} MB")
    for saved in sorted(partial.rglob("last.pt")) if partial.exists() else []:
        rel = saved.parent.relative_to(partial)
        if (runs / rel / "summary.json").exists():
            shutil.rmtree(saved.parent)
            lines.append(f"removed {rel}: finished")
    return lines


def restore(run_dir: Path, runs: Path = RUNS, partial: Path = PARTIAL) -> bool:
    """Copy the saved copy of `run_dir` (a folder under `runs`) back when the run folder has no last.pt."""
    try:
        rel = run_dir.resolve().relative_to(runs.resolve())
    except ValueError:
        return False
    source = partial / rel
    if (run_dir / "last.pt").exists() or not (source / "last.pt").exists():
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        shutil.copy2(item, run_dir / item.name)
    return True


def refusal(run_dir: Path, device: str | None, runs: Path = RUNS, partial: Path = PARTIAL) -> str | None:
    """Why the saved copy of `run_dir` must not be restored for a run on `device` (None when it may, or when there
    is nothing to restore): a run continues only on the kind of device it started on (same seed, same device,
    same numbers), so a CPU run's saved half is not finished on a GPU. `device` None means the run's config decides,
    and the saved config is that config."""
    try:
        source = partial / run_dir.resolve().relative_to(runs.resolve())
    except ValueError:
        return None
    if device is None or (run_dir / "last.pt").exists() or not (source / "config.yaml").exists():
        return None
    import yaml

    saved = str((yaml.safe_load((source / "config.yaml").read_text()) or {}).get("engine", {}).get("device", "auto"))
    if saved.split(":")[0] != device.split(":")[0]:
        return f"its saved half ran on {saved}, this run is on {device}"
    return None


def epochs_done(run: Path) -> int:
    """Completed epochs of a run folder, from its metrics.csv (0 when absent)."""
    metrics = run / "metrics.csv"
    return max(0, len(metrics.read_text().splitlines()) - 1) if metrics.exists() else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.partial", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["save", "list"])
    args = ap.parse_args(argv)
    if args.action == "save":
        print("\n".join(save()) or "nothing unfinished under runs/")
        return 0
    saved = sorted(PARTIAL.rglob("last.pt")) if PARTIAL.exists() else []
    for path in saved:
        cfg_epochs = None
        if (path.parent / "config.yaml").exists():
            import yaml

            cfg_epochs = yaml.safe_load((path.parent / "config.yaml").read_text())["optim"]["epochs"]
        print(json.dumps({"run": str(path.parent.relative_to(PARTIAL)), "epochs_done": epochs_done(path.parent),
                          "epochs": cfg_epochs}))
    if not saved:
        print("nothing saved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
