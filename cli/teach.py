"""`crossmodal teach CONFIG`: train a supervised classifier (teacher or baseline) on one modality."""
from __future__ import annotations

import click

from cli.options import run_config, run_options


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@run_options
def teach(config, overrides, resume):
    """Train the classifier described by CONFIG (a YAML file, see configs/) on a prepared file.

    Trains `model.arch` on modality `model.modality` of `data.path` (samples with label -1 are
    skipped) and writes <out_dir>/<name>/: config.yaml, metrics.csv, TensorBoard events,
    last.pt, best.pt, summary.json, curves.png. Multi-GPU: torchrun --nproc_per_node N -m cli teach CONFIG.

    \b
    Example:
      crossmodal teach configs/teachers/cifar10_resnet20.yaml --epochs 2 --set engine.max_steps_per_epoch=20
    """
    from crossmodal.tasks.teach import TeachConfig, run_teach

    run_config(config, overrides, resume, TeachConfig, run_teach)
