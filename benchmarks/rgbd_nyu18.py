"""Cross-modal transfer RGB -> depth on nyu18 (the paper's Section 4.4 protocol, on 18 frames: a functional check).

    python -m benchmarks.rgbd_nyu18 --jobs 2     # ~8 min on 2 cores from nothing; ~1 min when the RGB
                                                 # teacher exists

NYU frames carry no image labels, so the RGB network is the Imagenette-96 RGB classifier (as the paper's
teacher is ImageNet-trained). It reads each frame's RGB while a depth network learns from it by CRD, without
labels, on the 10 unlabelled frames. The depth network's frozen stage maps are then scored by a dense probe
(per-pixel linear head, 13-class segmentation) on the 8 labelled frames, 2-fold by frame index, against a
random init of the same architecture. 18 frames (8 labelled) make this a check that the RGB -> depth path
runs end to end on real RGB-D data, not a result.
"""
from __future__ import annotations

from benchmarks import teachers
from benchmarks.common import Bench, Step, bench, budget_text, main_guard, new_figure, paired_bars, parser

TEACHER = "imagenette96_rgb_mobilenetv3"  # a benchmark teacher (benchmarks.teachers)
STUDENT = "nyu18_rgb_to_depth_crd"
DENSE = "configs/probe/nyu18_depth_dense.yaml"
PROBE = "nyu18_depth_dense"  # kept from the first cross-modal benchmark, so a finished probe is reused
TRAIN_FRAMES = 10  # nyu18's unlabelled frames: the distillation's whole training split


def stages(b: Bench, teacher: dict, nyu: str) -> list[list[Step]]:
    """The depth student, the dense probe (student and random init)."""
    distill = b.train("distill", f"configs/cpu/{STUDENT}.yaml", STUDENT,
                      "--set", f"teachers.0.checkpoint={teacher['path']}", "--set", f"data.path={nyu}")
    if b.quick:  # the quick batch (16) exceeds the training split; the config's own batch is all of it
        distill.cmd += ["--batch-size", str(TRAIN_FRAMES)]
    return [
        [distill],
        [b.probe("dense", PROBE, DENSE, "--checkpoint", f"{b.runs}/{STUDENT}/last.pt", "--data", nyu,
                 "--random-init")],
    ]


def main() -> None:
    args = parser("rgbd_nyu18", __doc__).parse_args()
    b = bench("rgbd_nyu18", args)
    nyu = b.data("nyu18")
    teacher = teachers.teacher(b, TEACHER)
    for stage in stages(b, teacher, nyu):
        b.run_stage(stage)
    report(b, teacher, nyu)


def report(b: Bench, teacher: dict, nyu: str) -> None:
    rows = {("random init" if r["checkpoint"] == "random-init" else "CRD student of the RGB teacher"): r
            for r in b.probe_rows(PROBE)}
    body = [
        f"RGB -> depth on nyu18 (`{nyu}`: the first 18 frames of NYU-Depth-V2's labelled set, 96 px). The Imagenette "
        f"RGB teacher `{teacher['path']}` (test top-1 {teacher['test_top1']:.2f} on Imagenette) reads each frame's "
        f"RGB; the depth student learns from it by CRD, without labels, on the {TRAIN_FRAMES} unlabelled frames. "
        "Dense probe: a per-pixel linear head on the depth network's last three frozen stage maps, 13 classes "
        "(label 0 ignored), on the 8 labelled frames 2-fold by frame index (each frame scored once by a head that "
        "never saw it). timm mobilenetv3_small_100 for both networks.",
        "",
        "**18 frames (8 labelled) make this a functional check of the RGB -> depth path on real RGB-D data, not a "
        "result**: with 8 test frames, differences between the rows say nothing about the method.",
        "",
        f"Budget, first: depth student {budget_text(b.budget(STUDENT))} (one step per epoch over the {TRAIN_FRAMES} "
        f"frames); dense probe head {budget_text(b.record(f'probe/{PROBE}')['budget'])} per fold; RGB teacher "
        f"{teacher['passes']:g} passes over Imagenette-96.",
        "",
        "| depth network | pixel accuracy (%) | mIoU (%) | labelled pixels scored |",
        "|---|---|---|---|",
    ]
    for label, r in rows.items():
        body.append(f"| {label} | {r['pixel_acc']:.2f} | {r['miou']:.2f} | {r['labelled_pixels']:,} |")
    body += [
        "",
        "Paper (Tian et al. 2020, Section 4.4, qualitative only): an ImageNet-trained RGB network is transferred to "
        "a depth network on NYU-Depth-V2 (1,449 labelled frames: 795 train, 654 test), and the depth features are "
        "scored by semantic segmentation (pixel accuracy, mIoU); CRD's depth network is reported ahead of the other "
        "transfer methods compared. Differences in setting: 18 frames instead of 1,449 (10 for the transfer, 8 for "
        "the probe, k-folded); a teacher trained on Imagenette-96 (10 classes) for the budget above instead of "
        "ImageNet; a mobilenetv3_small_100 depth network at 96 px; a frozen linear probe instead of a trained "
        "segmentation network.",
    ]
    results = {"metric": "dense probe pixel accuracy / mIoU (%)", "teacher": teacher, "budget": b.budget(STUDENT),
               "rows": {label: {k: r[k] for k in ("pixel_acc", "miou", "labelled_pixels")} for label, r in rows.items()}}
    b.write("Cross-modal transfer RGB -> depth on nyu18 (functional check)", body, figure(rows), results=results)


def figure(rows: dict):
    fig, (ax,) = new_figure(width=6)
    labels = list(rows)
    paired_bars(ax, labels, {"pixel accuracy": [rows[k]["pixel_acc"] for k in labels],
                             "mIoU": [rows[k]["miou"] for k in labels]})
    ax.set_ylabel("%")
    ax.set_title("nyu18 dense probe on depth (8 labelled frames: a functional check)")
    return fig


if __name__ == "__main__":
    main_guard(main)
