"""Probes of trained networks: frozen features, linear and dense heads, teacher-student diagnostics, reports.

    from crossmodal.probe import extract_features, fit_linear_probe, linear_cka, segmentation_scores

The runs that tie them to checkpoints and prepared files live in crossmodal.tasks.probe.
"""
from crossmodal.probe.dense import DenseHead, confusion_matrix, kfold_by_index, segmentation_scores
from crossmodal.probe.diagnostics import correlation_difference, linear_cka, logit_correlation
from crossmodal.probe.features import InputAdapter, cached, extract_features, resolve_stage
from crossmodal.probe.linear import LinearProbe, evaluate_linear_probe, fit_linear_probe, topk_accuracy
from crossmodal.probe.report import format_table, markdown_table, write_report

__all__ = [
    "DenseHead",
    "InputAdapter",
    "LinearProbe",
    "cached",
    "confusion_matrix",
    "correlation_difference",
    "evaluate_linear_probe",
    "extract_features",
    "fit_linear_probe",
    "format_table",
    "kfold_by_index",
    "linear_cka",
    "logit_correlation",
    "markdown_table",
    "resolve_stage",
    "segmentation_scores",
    "topk_accuracy",
    "write_report",
]
