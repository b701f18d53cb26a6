"""The speed targets of the paper's recipe on one GPU, each against a bare PyTorch loop in the same process.

    python -m benchmarks.gpu.speed --out-dir benchmarks/results            # on a CUDA machine (about 3 minutes)
    python -m benchmarks.gpu.speed --device cpu --quick --out-dir /tmp/s   # the script itself, on a CPU

Data: a synthetic CIFAR-size prepared file (50,000 train / 10,000 test images, 32 px, 100 classes, uint8 rgb;
speed does not depend on the pixels), written to a temporary folder. Every engine figure comes from the
engine itself (`run_teach` / `run_distill`, in this process, bf16 + channels_last, device-resident data and
the captured step where they apply) and is read from its metrics.csv (images/s of the last epoch, after
warm-up and capture). Each bare loop uses the same models, batch and precision, batches sliced from a
normalised tensor already on the device, no augmentation, eager PyTorch (forward, losses, backward, SGD).

Targets (one H100, batch 64, resnet32x4 -> resnet8x4, K 16384, N 50,000):
1. CRD+KD step <= 3 ms;  2. +CRD step <= 1.10x a +KD step;  3. 240 epochs of CRD+KD <= 12 min
(240 x (781 steps x step time + one test pass));  4. teach resnet32x4 <= 3 s per CIFAR-size epoch.
Checks: host syncs seen in a captured epoch (torch.cuda.set_sync_debug_mode("warn"); the one read at the
epoch's end is expected), and the captured step against the eager one (same config, weights after a few
steps, fp32).
Writes gpu_speed.md and gpu_speed.json to --out-dir.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from crossmodal.engine.logging import get_logger, read_metrics
from crossmodal.losses.base import DistillSpec, OutputShapes
from crossmodal.losses.crd import CRDLoss
from crossmodal.models import build_model
from crossmodal.sections import AugmentConfig, DataConfig, EngineConfig, ModelConfig, OptimConfig
from crossmodal.tasks.distill import DistillConfig, TeacherConfig, run_distill
from crossmodal.tasks.teach import TeachConfig, run_teach
from crossmodal.tempfiles import atomic_write_text

from benchmarks.gpu.common import device_line, synchronize
from benchmarks.teach_throughput import synthetic_prepared

BATCH = 64
TEACHER, STUDENT = "resnet32x4", "resnet8x4"
TARGETS = {"crd_kd_step_ms": 3.0, "crd_vs_kd": 1.10, "full_run_min": 12.0, "teach_epoch_s": 3.0}


def paper_optim(epochs: int) -> OptimConfig:
    """The paper's recipe: SGD 0.05, momentum 0.9, wd 5e-4, batch 64, steps at 150/180/210."""
    return OptimConfig(lr=0.05, batch_size=BATCH, epochs=epochs, milestones=[150, 180, 210])


def engine_cfg(args, **extra) -> EngineConfig:
    precision = "bf16" if args.device == "cuda" else "fp32"
    return EngineConfig(device=args.device, precision=precision, channels_last=args.device == "cuda",
                        progress=False, log_every=10**9, **extra)


def teach_engine(args, data: Path, out: Path, arch: str, steps) -> dict:
    """Teach `arch` for 2 epochs; the last epoch's row (images/s, epoch time) and the checkpoint."""
    cfg = TeachConfig(name=f"teach_{arch}", out_dir=str(out), seed=0,
                      data=DataConfig(path=str(data), augment=AugmentConfig(crop=32, padding=4, hflip=True),
                                      preload=True),
                      model=ModelConfig(arch=arch), optim=paper_optim(2),
                      engine=engine_cfg(args, max_steps_per_epoch=steps))
    run_teach(cfg)
    row = read_metrics(out / cfg.name / "metrics.csv")[-1]
    return dict(row, checkpoint=str(out / cfg.name / "last.pt"))


def distill_engine(args, data: Path, out: Path, teacher: str, losses: dict, name: str, steps: int,
                   epochs: int = 2, **engine) -> dict:
    """Distill resnet8x4 from `teacher` with `losses`; the last epoch's metrics row."""
    cfg = DistillConfig(name=name, out_dir=str(out), seed=0,
                        data=DataConfig(path=str(data), augment=AugmentConfig(crop=32, padding=4, hflip=True),
                                        preload=True),
                        teachers=[TeacherConfig(checkpoint=teacher, modality="rgb")],
                        student=ModelConfig(arch=args.student), losses=losses,
                        loss_params={k: v for k, v in (("kd", {"temperature": 4}), ("crd", {"nce_k": args.k}))
                                     if k in losses},
                        optim=paper_optim(epochs), engine=engine_cfg(args, max_steps_per_epoch=steps, **engine))
    run_distill(cfg)
    return read_metrics(out / name / "metrics.csv")[-1]


def bare_loop_ms(args, n_rows: int, teacher_arch: str | None, crd: bool, steps: int) -> float:
    """ms per step of a plain loop: batches from a device tensor, [teacher forward], student step, CE [+KD] [+CRD]."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(n_rows, 3, 32, 32, device=device)
    y = torch.randint(0, 100, (n_rows,), device=device)
    memory_format = torch.channels_last if args.device == "cuda" else torch.preserve_format
    student = build_model(args.student if teacher_arch else args.teacher, in_chans=3, num_classes=100)
    student = student.to(device, memory_format=memory_format).train()
    teacher = None if teacher_arch is None else build_model(teacher_arch, in_chans=3, num_classes=100).to(
        device, memory_format=memory_format).eval()
    params = list(student.parameters())
    crd_loss = None
    if crd:
        s_dim, t_dim = student.embedding_dim, teacher.embedding_dim
        shape = lambda dim: OutputShapes(features=[], preact_features=[], embedding=dim, num_classes=100)  # noqa: E731
        crd_loss = CRDLoss(DistillSpec(shape(s_dim), shape(t_dim), n_rows, 100, y.cpu()), nce_k=args.k).to(device)
        params += list(crd_loss.parameters())
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    dtype = torch.bfloat16 if args.device == "cuda" else None

    def step(i: int) -> None:
        index = torch.randint(0, n_rows, (BATCH,), device=device)
        xb = x[index].contiguous(memory_format=memory_format)
        with torch.autocast(args.device, dtype=dtype, enabled=dtype is not None):
            s_out = student(xb)
            loss = F.cross_entropy(s_out["logits"], y[index])
            if teacher is not None:
                with torch.no_grad():
                    t_out = teacher(xb)
                p_t = F.softmax(t_out["logits"].float() / 4, dim=1)
                loss = loss + F.kl_div(F.log_softmax(s_out["logits"].float() / 4, dim=1), p_t,
                                       reduction="batchmean") * 16
                if crd_loss is not None:
                    loss = loss + 0.8 * crd_loss(s_out, t_out, {"index": index})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(1 if args.quick else 5):
        step(i)
    synchronize(args.device)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    synchronize(args.device)
    return 1000 * (time.perf_counter() - start) / steps


def sync_count(args, data: Path, out: Path, teacher: str) -> str:
    """Host syncs the CUDA sync debugger reports during a captured CRD+KD epoch (after capture)."""
    if args.device != "cuda":
        return "not checkable on CPU"
    import crossmodal.engine.trainer as trainer_module

    seen = []
    original = trainer_module.Trainer._train_epoch

    def watched(self, epoch, logger):
        if epoch == 0:
            return original(self, epoch, logger)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                row = original(self, epoch, logger)
            seen.extend(str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return row

    trainer_module.Trainer._train_epoch = watched
    try:
        distill_engine(args, data, out, teacher, {"ce": 1.0, "kd": 1.0, "crd": 0.8}, "sync_check", 50)
    finally:
        trainer_module.Trainer._train_epoch = original
    return f"{len(seen)} synchronising call(s) in a 50-step captured epoch" + (f": {seen[:3]}" if seen else "")


def capture_matches_eager(args, data: Path, out: Path, teacher: str) -> str:
    """Max |weight difference| after 2 x 20 steps of CRD+KD (fp32): captured step vs the same run eager, beside the
    same eager run done twice (what the device's own run-to-run nondeterminism gives, the scale to read it by)."""
    from crossmodal.engine import load_checkpoint

    if args.device != "cuda":
        return "not checkable on CPU (no capture there)"

    weights = {}
    for name, graph in (("eager_check", False), ("eager_again_check", False), ("captured_check", "auto")):
        cfg_args = argparse.Namespace(**vars(args))
        cfg = DistillConfig(name=name, out_dir=str(out), seed=0,
                            data=DataConfig(path=str(data), augment=AugmentConfig(crop=32, padding=4, hflip=True),
                                            preload=True),
                            teachers=[TeacherConfig(checkpoint=teacher, modality="rgb")],
                            student=ModelConfig(arch=args.student), losses={"ce": 1.0, "kd": 1.0, "crd": 0.8},
                            loss_params={"kd": {"temperature": 4}, "crd": {"nce_k": cfg_args.k}},
                            optim=paper_optim(2),
                            engine=EngineConfig(device=args.device, max_steps_per_epoch=2 if args.quick else 20,
                                                progress=False, log_every=10**9, cuda_graph=graph))
        run_distill(cfg)
        weights[name] = load_checkpoint(out / name / "last.pt")["model"]

    def diff(a: str, b: str) -> float:
        return max((weights[a][k].double() - weights[b][k].double()).abs().max().item()
                   for k in weights[a] if weights[a][k].is_floating_point())

    return (f"max |weight difference| after 2 epochs: {diff('eager_check', 'captured_check'):.3g} (eager twice, "
            f"same seed: {diff('eager_check', 'eager_again_check'):.3g})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script (e.g. on a CPU)")
    parser.add_argument("--out-dir", type=Path, required=True, help="where gpu_speed.md and gpu_speed.json go")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu speed: no CUDA device visible; use --device cpu --quick to check the script on a CPU")
        return 2
    get_logger().setLevel("WARNING")
    capture_notes = _LogCollector("engine.cuda_graph")  # a failed capture falls back with a warning: record it
    get_logger().addHandler(capture_notes)
    n_train, n_test = (256, 64) if args.quick else (50_000, 10_000)
    args.k = 128 if args.quick else 16384
    # --quick: small networks too (resnet8 for both), so a CPU runs the whole script in under a minute.
    args.teacher, args.student = ("resnet8", "resnet8") if args.quick else (TEACHER, STUDENT)
    steps = 2 if args.quick else 300  # per measured epoch
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_speed_"))
    started = time.perf_counter()
    data = synthetic_prepared(work / "cifar_size.h5", n_train, n_test)
    out = work / "runs"
    results: dict = {"device": device_line(args.device), "quick": args.quick, "batch": BATCH, "k": args.k, "n_train": n_train,
                     "teacher": args.teacher, "student": args.student,
                     "precision": engine_cfg(args).precision, "steps_per_measured_epoch": steps}

    # teach resnet32x4: full epochs (the target is an epoch's time), engine vs bare loop
    teach = teach_engine(args, data, out, args.teacher, None if not args.quick else steps)
    steps_per_epoch = n_train // BATCH
    results["teach_epoch_s"] = steps_per_epoch * BATCH / teach["images_per_s"]
    results["teach_epoch_with_test_s"] = teach["epoch_time_s"]
    results["teach_bare_epoch_s"] = steps_per_epoch * bare_loop_ms(args, n_train, None, False, steps) / 1000

    # distill resnet32x4 -> resnet8x4 at batch 64
    ms = {}
    for label, losses in (("kd", {"ce": 1.0, "kd": 1.0}), ("crd_kd", {"ce": 1.0, "kd": 1.0, "crd": 0.8})):
        row = distill_engine(args, data, out, teach["checkpoint"], losses, f"distill_{label}", steps)
        ms[label] = 1000 * BATCH / row["images_per_s"]
        ms[label + "_test_s"] = row["epoch_time_s"] - BATCH * steps / row["images_per_s"]
        ms[label + "_bare"] = bare_loop_ms(args, n_train, args.teacher, label == "crd_kd", steps)
    results.update(crd_kd_step_ms=ms["crd_kd"], kd_step_ms=ms["kd"], crd_vs_kd=ms["crd_kd"] / ms["kd"],
                   crd_kd_bare_ms=ms["crd_kd_bare"], kd_bare_ms=ms["kd_bare"],
                   crd_vs_kd_bare=ms["crd_kd_bare"] / ms["kd_bare"])
    results["full_run_min"] = 240 * (steps_per_epoch * ms["crd_kd"] / 1000 + ms["crd_kd_test_s"]) / 60
    results["full_run_bare_min"] = 240 * steps_per_epoch * ms["crd_kd_bare"] / 1000 / 60
    results["sync_check"] = sync_count(args, data, out, teach["checkpoint"])
    results["capture_check"] = capture_matches_eager(args, data, out, teach["checkpoint"])
    results["capture_warnings"] = capture_notes.messages
    results["seconds"] = time.perf_counter() - started
    results["targets"] = {k: {"target": v, "measured": results[k], "met": results[k] <= v} for k, v in TARGETS.items()}
    write_results(args, results)
    return 0


class _LogCollector(logging.Handler):
    """Keeps the messages of a logger that contain `needle`."""

    def __init__(self, needle: str):
        super().__init__(logging.WARNING)
        self.needle, self.messages = needle, []

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.messages.append(record.getMessage())


def write_results(args, r: dict) -> None:
    """gpu_speed.md and gpu_speed.json in --out-dir."""
    rows = [("CRD+KD step (ms)", "crd_kd_step_ms", f"{r['crd_kd_bare_ms']:.2f}"),
            ("+CRD vs +KD step", "crd_vs_kd", f"{r['crd_vs_kd_bare']:.2f}x"),
            ("240-epoch CRD+KD run (min)", "full_run_min", f"{r['full_run_bare_min']:.1f} (no test passes)"),
            (f"teach {r['teacher']}, one epoch (s)", "teach_epoch_s", f"{r['teach_bare_epoch_s']:.2f}")]
    lines = ["# The paper's recipe on one GPU: speed targets", "",
             f"Command: `python -m benchmarks.gpu.speed {'--device cpu --quick ' if args.quick else ''}"
             f"--out-dir {args.out_dir}`", f"Device: {r['device']}",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {r['seconds']:.0f} s in all"
             + ("; **--quick: tiny sizes, the numbers check the script only**" if r["quick"] else ""), "",
             f"{r['teacher']} -> {r['student']}, batch {r['batch']}, K {r['k']}, N {r['n_train']}, "
             f"{r['steps_per_measured_epoch']} steps per measured epoch; engine: {r['precision']}"
             f"{' + channels_last' if r['precision'] == 'bf16' else ''}, device-resident data and the captured step "
             "where they apply; bare: eager PyTorch on device tensors, same models and precision.", "",
             "| target | engine | bare loop | target | met |", "|---|---|---|---|---|"]
    for label, key, bare in rows:
        t = r["targets"][key]
        unit = "x" if key == "crd_vs_kd" else ""
        lines.append(f"| {label} | {t['measured']:.2f}{unit} | {bare} | <= {t['target']}{unit} | "
                     f"{'yes' if t['met'] else 'no'} |")
    lines += ["", f"- +KD step: engine {r['kd_step_ms']:.2f} ms, bare {r['kd_bare_ms']:.2f} ms.",
              f"- teach epoch with its test pass: {r['teach_epoch_with_test_s']:.2f} s.",
              f"- Host syncs: {r['sync_check']}.", f"- Captured vs eager: {r['capture_check']}.",
              f"- Capture fell back to eager: {'; '.join(r['capture_warnings']) or 'never'}.", ""]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / "gpu_speed.md", "\n".join(lines))
    atomic_write_text(args.out_dir / "gpu_speed.json", json.dumps(r, indent=1) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
