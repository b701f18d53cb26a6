"""`crossmodal distill CONFIG`: train a student from frozen teachers (CRD, KD and the other distillers)."""
from __future__ import annotations

import click

from cli.options import run_config, run_options


class _DistillCommand(click.Command):
    """`distill --help` names the registered losses, read from the registry when the help is shown
    (so `crossmodal --help` does not import the losses)."""

    def format_help_text(self, ctx, formatter):
        from crossmodal.losses import list_distillers

        template = self.help
        self.help = template.replace("{losses}", " ".join(list_distillers()))
        try:
            super().format_help_text(ctx, formatter)
        finally:
            self.help = template


@click.command(cls=_DistillCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@run_options
def distill(config, overrides, resume):
    """Distill the teachers named in CONFIG into a student (compression, cross-modal, ensemble).

    CONFIG (YAML, see configs/) names the prepared data, the student (`student.arch`,
    `student.modality`), the teachers (`teachers: [{checkpoint: runs/t/best.pt, modality: rgb}]`),
    and the weighted losses (`losses: {ce: 1, kd: 1, crd: 0.8}`; a null weight takes the method's
    reference default) with their parameters (`loss_params: {crd: {nce_k: 4096}}`).
    Teachers are frozen in eval mode; the student's checkpoint records each teacher's path and
    sha256. Writes <out_dir>/<name>/ like `teach`. Losses: {losses}.

    \b
    Examples:
      crossmodal distill configs/cpu/cifar10_resnet20_resnet8_crd.yaml
      crossmodal distill CONFIG --set losses.crd=1.0 --set loss_params.crd.nce_k=4096
    """
    from crossmodal.tasks.distill import DistillConfig, run_distill

    run_config(config, overrides, resume, DistillConfig, run_distill)
