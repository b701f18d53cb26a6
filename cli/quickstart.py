"""`crossmodal quickstart`: the whole pipeline on photographs bundled with scikit-image, no download, a few minutes."""
from __future__ import annotations

from pathlib import Path

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("quickstart"),
              show_default=True, help="Folder for everything the demo writes (data, runs, probes, results).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the crops, initialisations and order.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--tiny", is_flag=True, help="A seconds-long run on 64 train crops, to check an install (scores "
                                           "mean nothing).")
@click.option("--force", is_flag=True, help="Delete what an earlier quickstart wrote in --out-dir and start over.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPU threads for torch; more rarely helps these small batches and hurts on a shared machine.")
@click.option("--verbose", "-v", is_flag=True, help="Also print the engine's line per epoch.")
def quickstart(out_dir: Path, seed: int, device: str, tiny: bool, force: bool, threads: int, verbose: bool):
    """Run prepare -> teach -> distill (CRD) -> probe on a small real dataset that needs no download.

    Classes are 8 colour photographs that scikit-image bundles; samples are 32 px crops, train
    and test from disjoint regions of each photograph. A resnet8 teacher learns them from
    luminance (L) with labels; a resnet8 student learns from chrominance (ab) by CRD alone,
    without labels (the paper's L -> ab transfer); linear probes then score the teacher, the
    CRD student and a random-init student on the test crops. Prints the table and the commands
    for the real datasets. A rerun reuses finished stages and resumes an interrupted one.
    """
    from crossmodal.tasks.quickstart import run_quickstart

    run_quickstart(out_dir, seed=seed, budget="tiny" if tiny else "full", device=device, force=force,
                   verbose=verbose, threads=threads, echo=click.echo)
