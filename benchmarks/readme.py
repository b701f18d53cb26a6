"""The README's results tables, written from the experiments' results files (benchmarks/results/<name>.json).

    python -m benchmarks.readme            # rewrite the block between the README's markers
    python -m benchmarks.readme --check    # exit 1 when the block differs from what the results files say

Every number in the block comes from a committed results file, budget first, with the file it came from and the
command that made it; an experiment whose file is absent is listed as not finished, with its command. The prose
around the block (what the numbers show) is written by hand; tests/test_benchmarks.py checks that the block is
the one these files give.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Optional

from benchmarks import common
from benchmarks.common import budget_text, seeds_text
from crossmodal.tempfiles import atomic_write_text

BEGIN = "<!-- results:begin: written by `python -m benchmarks.readme` from benchmarks/results/*.json -->"
END = "<!-- results:end -->"


def _teacher(t: dict) -> str:
    return f"teacher `{t['path']}` ({t['passes']:g} passes, test top-1 {t['test_top1']:.2f})"


def _claims(claims: list[dict]) -> list[str]:
    lines = ["| claim | difference | Welch t | holds (difference > 0, t > 2) |", "|---|---|---|---|"]
    for c in claims:
        claim = c["claim"] + (f" ({c['probe']} probe)" if "probe" in c else "")
        t = "-" if c["welch_t"] is None else f"{c['welch_t']:.2f}"
        lines.append(f"| {claim} | {c['difference']:+.2f} | {t} | {'yes' if c['holds'] else 'no'} |")
    return lines


def compression(r: dict) -> list[str]:
    seeds = ", ".join(map(str, r["seeds"]))
    lines = [f"Budget: each student {budget_text(r['budget'])}; {_teacher(r['teacher'])}; seeds {seeds}.", "",
             f"| {r['student_arch']} | test top-1, mean ± std (per seed) | vs labels only |", "|---|---|---|"]
    base = r["methods"]["vanilla"]["mean"]
    for method, m in r["methods"].items():
        gain = "-" if method == "vanilla" else f"{m['mean'] - base:+.2f}"
        label = "labels only (vanilla)" if method == "vanilla" else method
        lines.append(f"| {label} | {seeds_text(m['per_seed'])} | {gain} |")
    return lines + [""] + _claims(r["claims"]) + _during(r.get("test_top1_by_epoch", {}))


def _during(by_epoch: dict) -> list[str]:
    """A line on CRD's mean against labels only over the epochs (the compression report's curves), if recorded."""
    if "CRD" not in by_epoch or "vanilla" not in by_epoch:
        return []
    gaps = {e: by_epoch["CRD"][e] - by_epoch["vanilla"][e] for e in by_epoch["vanilla"]}
    widest, last = max(gaps, key=gaps.get), list(gaps)[-1]
    return ["", f"During training (mean over the seeds): CRD above labels only at {sum(g > 0 for g in gaps.values())} "
            f"of {len(gaps)} epochs, by up to {gaps[widest]:+.2f} (epoch {widest}); {gaps[last]:+.2f} at the last."]


def crossmodal(r: dict) -> list[str]:
    seeds = ", ".join(map(str, r["seeds"]))
    lines = [f"Budget: each ab student {budget_text(r['budget'])}; each finetune {budget_text(r['finetune_budget'])}; "
             f"L {_teacher(r['teacher'])}; seeds {seeds}.", "",
             "| network | labels before the probe | linear probe top-1 | finetune top-1 |", "|---|---|---|---|"]
    for n in r["networks"].values():
        cells = [seeds_text(n[k]["per_seed"]) if n[k] else "-" for k in ("linear_top1", "finetune_top1")]
        lines.append(f"| {n['label']} | {n['labels_before_probe']} | {cells[0]} | {cells[1]} |")
    return lines + [""] + _claims(r["claims"])


def budget(r: dict) -> list[str]:
    lines = [f"Budget: each row is a whole run (its cosine schedule spans it); {_teacher(r['teacher'])}; "
             f"seeds {', '.join(map(str, r['seeds']))}.", "",
             "| passes | labels only | CRD | CRD - labels only, per seed | mean gap ± std |", "|---|---|---|---|---|"]
    for nominal, row in r["by_passes"].items():
        passes = f"{row['budget']['passes']:g}" if "budget" in row else f"{nominal} ({row.get('device', 'GPU')})"
        gaps = ", ".join(f"{g:+.2f}" for g in row["gap_per_seed"].values())
        lines.append(f"| {passes} | {seeds_text(row['vanilla'])} | {seeds_text(row['CRD'])} | {gaps} | "
                     f"{row['gap_mean']:+.2f} ± {row['gap_std']:.2f} |")
    return lines


def ablation(r: dict) -> list[str]:
    ref = r["reference"]
    return [f"Budget: each run {budget_text(r['budget'])}; {_teacher(r['teacher'])}; one seed ({r['seed']}).", "",
            "| setting | test top-1 |", "|---|---|",
            f"| labels only | {r['labels_only']:.2f} |",
            f"| CRD, reference settings (K {ref['K']}, tau {ref['tau']:g}) | {ref['top1']:.2f} |",
            *(f"| K {k} | {v:.2f} |" for k, v in r["by_K"].items() if int(k) != ref["K"]),
            *(f"| tau {t} | {v:.2f} |" for t, v in r["by_tau"].items() if float(t) != ref["tau"]),
            *(f"| {name} | {v:.2f} |" for name, v in r["variants"].items())]


def transfer(r: dict) -> list[str]:
    lines = [f"Budget: each student {budget_text(r['budget'])}; {_teacher(r['teacher'])}; seed {r['seed']}.", "",
             "| network (trained on Tiny-ImageNet-100) | Imagenette-96 linear probe top-1 | own test top-1 |",
             "|---|---|---|"]
    for label, n in r["networks"].items():
        own = "-" if n["own_test_top1"] is None else f"{n['own_test_top1']:.2f}"
        lines.append(f"| {label} | {n['probe_top1']:.2f} | {own} |")
    return lines


def ensemble(r: dict) -> list[str]:
    members = r["teachers"]
    lines = [f"Budget: each student {budget_text(r['budget'])}; each of the {len(members)} teachers "
             f"{members[0]['passes']:g} passes; seed {r['seed']}; labels only: {r['labels_only']:.2f}.", "",
             "| teachers n | ensemble top-1 | " + " | ".join(f"{m} student" for m in r["students"]) + " |",
             "|---|---|" + "---|" * len(r["students"])]
    for n, top1 in r["ensemble_top1"].items():
        lines.append(f"| {n} | {top1:.2f} | " + " | ".join(f"{s[n]:.2f}" for s in r["students"].values()) + " |")
    return lines


def rgbd(r: dict) -> list[str]:
    lines = [f"Budget: depth student {budget_text(r['budget'])}; RGB {_teacher(r['teacher'])}. A functional check "
             "on 18 frames (8 labelled), not a result.", "",
             "| depth network | pixel accuracy | mIoU |", "|---|---|---|"]
    lines += [f"| {label} | {row['pixel_acc']:.2f} | {row['miou']:.2f} |" for label, row in r["rows"].items()]
    return lines


# (results stem, heading, renderer, the command that writes it), in the README's order: the headline tables first.
EXPERIMENTS: list[tuple[str, str, Callable[[dict], list[str]], str]] = [
    ("compression_cifar10", "Compression, CIFAR-10: resnet20 -> resnet8", compression,
     "python -m benchmarks.compression --dataset cifar10 --jobs 2"),
    ("crossmodal_imagenette", "Cross-modal L -> ab, Imagenette-96 (the ab students see no label)", crossmodal,
     "python -m benchmarks.crossmodal_imagenette --jobs 2"),
    ("budget", "CRD against labels only as the budget grows (CIFAR-10)", budget,
     "python -m benchmarks.budget --jobs 2"),
    ("compression_tinyimagenet100", "Compression, Tiny-ImageNet-100: resnet20 -> resnet8", compression,
     "python -m benchmarks.compression --dataset tinyimagenet100 --methods vanilla,KD,CRD,CRD+KD --jobs 2"),
    ("ablation", "CRD ablation (CIFAR-10, resnet20 -> resnet8)", ablation, "python -m benchmarks.ablation --jobs 2"),
    ("transfer", "Transferability: Tiny-ImageNet-100 networks probed on Imagenette-96", transfer,
     "python -m benchmarks.transfer --jobs 2"),
    ("ensemble", "Ensemble distillation (CIFAR-10, 1-4 resnet8 teachers -> resnet8)", ensemble,
     "python -m benchmarks.ensemble --jobs 2"),
    ("rgbd_nyu18", "RGB -> depth on nyu18", rgbd, "python -m benchmarks.rgbd_nyu18 --jobs 2"),
]


def block(results_dir: Optional[Path] = None) -> str:
    """The README block (markers included) from the results files in `results_dir`."""
    results_dir = results_dir or common.REPO / "benchmarks" / "results"
    lines = [BEGIN, ""]
    for stem, heading, render, command in EXPERIMENTS:
        path = results_dir / f"{stem}.json"
        if not path.exists():
            lines += [f"**{heading}**: not finished yet (`{command}`).", ""]
            continue
        data = json.loads(path.read_text())
        lines += [f"**{heading}** (`benchmarks/results/{stem}.md`; `{data['reproduce']}`; commit "
                  f"{data['commit'][:7]}, {data['machine']})", "", *render(data["results"]), ""]
    return "\n".join(lines + [END])


def rewritten(readme: str, new_block: str) -> str:
    """`readme` with the text between (and including) its markers replaced by `new_block`."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"README.md: the markers {BEGIN!r} ... {END!r} are missing; put them where the "
                         "results tables belong")
    return readme[:start] + new_block + readme[end + len(END):]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.readme", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 when README.md's block is out of date; write nothing")
    args = ap.parse_args(argv)
    path = common.REPO / "README.md"
    old = path.read_text()
    new = rewritten(old, block())
    if args.check:
        if new != old:
            print("README.md: the results block differs from benchmarks/results/*.json; run python -m "
                  "benchmarks.readme", file=sys.stderr)
            return 1
        return 0
    if new != old:
        atomic_write_text(path, new)
    print(f"README.md: results block {'rewritten' if new != old else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
