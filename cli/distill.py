"""`crossmodal distill CONFIG`: train a student from frozen teachers (CRD, KD and the other distillers)."""
from __future__ import annotations

import os

import click

from cli.options import run_options


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@run_options
def distill(config, overrides, resume):
    """Distill the teachers named in CONFIG into a student (compression, cross-modal, ensemble).

    CONFIG (YAML, see configs/) names the prepared data, the student (`student.arch`,
    `student.modality`), the teachers (`teachers: [{checkpoint: runs/t/best.pt, modality: rgb}]`),
    and the weighted losses (`losses: {ce: 1, kd: 1, crd: 0.8}`; a null weight takes the method's
    reference default) with their parameters (`loss_params: {crd: {nce_k: 4096}}`).
    Teachers are frozen in eval mode; the student's checkpoint records each teacher's path and
    sha256. Writes <out_dir>/<name>/ like `teach`. Losses: ce kd crd fitnet at sp cc vid rkd pkt ab ft fsp nst.

    \b
    Examples:
      crossmodal distill configs/cpu/cifar10_resnet20_resnet8_crd.yaml
      crossmodal distill CONFIG --set losses.crd=1.0 --set loss_params.crd.nce_k=4096
    """
    from crossmodal.config import load_config
    from crossmodal.engine.distributed import cleanup_distributed
    from crossmodal.tasks.distill import DistillConfig, run_distill

    cfg = load_config(config, DistillConfig, overrides)
    try:
        summary = run_distill(cfg, resume=resume)
    finally:
        cleanup_distributed()
    if os.environ.get("RANK", "0") == "0":
        from cli.options import summary_line

        click.echo(summary_line(cfg.name, summary))
