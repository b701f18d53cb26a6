"""CUDA-path check: AMP, channels_last, compile, CRD on the device, DDP with one process, teach/distill throughput.

    bash benchmarks/gpu_check.sh [--out benchmarks/results/gpu_check.md]      # on a CUDA machine (aims at < 8 min)
    python -m benchmarks.gpu_check --device cpu --quick                         # the script itself, on a CPU

Offline: the data are crops of scikit-image's bundled photographs (the quickstart's source, 32 px, rgb/L/ab),
written to a temporary folder by the ordinary writer. Every check runs the real commands (`python -m cli teach`,
`python -m cli distill`, `torchrun --nproc_per_node 1 -m cli distill`) with generated configs, so what is
checked is what users run. Each check is independent: a failure is reported with its error and the script
goes on; the exit status is the number of failed checks (0 = all passed).

Checks:
1. CRD on the device: memories and heads live there; forward + backward + memory update run with
   torch.cuda.set_sync_debug_mode("error") (no host synchronisation inside the loss); loss finite.
2. teach resnet32x4, 32 px, batch 256: fp32, bf16, bf16 + channels_last, fp16 (GradScaler), bf16 +
   channels_last + compile. Throughput = images/s of the last epoch (after warm-up); final test top-1.
3. distill resnet32x4 -> resnet8x4 (bf16 + channels_last): +KD vs +KD+CRD (K 16384), images/s and ratio.
4. DDP with one process: torchrun --nproc_per_node 1 (NCCL) vs a plain run of the same deterministic fp32
   distill config; the students' weights must agree (max abs difference <= 1e-4); then SyncBN under DDP.
5. crd_speed on the device (the CPU benchmark's two parts: loss alone vs the reference algorithm; whole
   resnet32x4 -> resnet8x4 steps +KD vs +CRD).

With --out, the numbers (each check, the teach and distill tables, crd_speed's record) also go to the .json
beside the report.

On the H200 where it first ran (benchmarks/results/gpu_check.md) it took longer than the 8 minutes it aims
at: each command's process start-up took 15-75 s there. `--skip` drops checks to fit a shorter lease.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


class Report:
    """Collects check results and markdown sections; prints as it goes."""

    def __init__(self):
        self.checks: list[tuple[str, bool, str, float]] = []
        self.sections: list[str] = []
        self.results: dict = {}  # the numbers behind the sections, for the JSON record

    def run(self, name: str, fn) -> object:
        print(f"\n=== {name}", flush=True)
        start = time.perf_counter()
        try:
            detail = fn()
            ok = True
        except Exception as err:  # report and go on: one broken path must not hide the others
            traceback.print_exc()
            detail, ok = f"{type(err).__name__}: {err}".splitlines()[0][:300], False
        seconds = time.perf_counter() - start
        self.checks.append((name, ok, str(detail or ""), seconds))
        print(f"--- {name}: {'PASS' if ok else 'FAIL'} ({seconds:.1f} s) {detail or ''}", flush=True)
        return detail if ok else None


def sh(cmd: list[str], env_extra: dict | None = None, timeout: float = 300) -> str:
    """Run `cmd` from the repo root; raise with the output's tail when it fails."""
    print("+", " ".join(cmd), flush=True)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    print(proc.stdout[-3000:], flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}: {proc.stdout.strip().splitlines()[-1:]}")
    return proc.stdout


def write_yaml(path: Path, cfg: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def last_epoch(run_dir: Path) -> dict:
    """The last row of a run's metrics.csv (floats, None for empty cells)."""
    from crossmodal.engine.logging import read_metrics

    return read_metrics(run_dir / "metrics.csv")[-1]


def synthetic_source(n_train: int, n_test: int):
    """10 classes of noisy images whose mean colour depends on the class (when the photos are unavailable)."""
    import numpy as np

    from data_prep.source import SplitSource, Source

    def decode(i: int) -> dict:
        rng = np.random.default_rng(i)
        colour = np.array([(i % 10) * 25, 255 - (i % 10) * 25, ((i % 10) * 77) % 256], dtype=np.float32)
        image = np.clip(colour + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
        return {"rgb": image, "label": i % 10}

    splits = [SplitSource("train", range(n_train), decode, n_train),
              SplitSource("test", range(n_train, n_train + n_test), decode, n_test)]
    return Source("synthetic", splits, [f"class{c}" for c in range(10)], {"rgb"})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script itself (e.g. on a CPU)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--out", type=Path, help="write the markdown report here")
    parser.add_argument("--skip", nargs="*", default=[], help="checks to skip: crd speed teach amp compile distill ddp")
    args = parser.parse_args(argv)
    command = f"bash benchmarks/gpu_check.sh {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (torch.cuda.is_available() is False); run with --device cpu "
              "--quick to check the script on a CPU", file=sys.stderr)
        return 2
    cuda = args.device.startswith("cuda")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    report = Report()
    sizes = dict(batch=32, steps=4, epochs=2, per_class=40, k=512, crd_rows=2000) if args.quick else \
        dict(batch=256, steps=60, epochs=3, per_class=1200, k=16384, crd_rows=50000)
    started = time.perf_counter()

    env_line = f"torch {torch.__version__}, python {platform.python_version()}"
    if cuda:
        props = torch.cuda.get_device_properties(0)
        env_line = (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, capability {props.major}.{props.minor}, "
                    f"{props.multi_processor_count} SMs, CUDA {torch.version.cuda}, " + env_line
                    + f", bf16 supported: {torch.cuda.is_bf16_supported()}")
    print(env_line, flush=True)

    # ------------------------------------------------------------------ data
    data = work / "photos.h5"

    def prepare():
        from data_prep.samples import read_sample_photos
        from data_prep.writer import write_prepared

        note = ""
        if not data.exists():
            try:
                source = read_sample_photos(sizes["per_class"], max(10, sizes["per_class"] // 4), seed=0)
            except Exception as err:  # e.g. a scikit-image without the bundled photos: random images will do
                note = f" (synthetic: the sample photos failed with {type(err).__name__}: {err})"
                source = synthetic_source(sizes["per_class"] * 8, sizes["per_class"] * 2)
            write_prepared(source, data, ["rgb", "L", "ab"], workers=min(8, os.cpu_count() or 1))
        import h5py

        with h5py.File(data, "r") as h5:
            n = h5["train/rgb"].shape[0]
        return f"{n} train images (rgb, L, ab, 32 px) in {data}{note}"

    if report.run("prepare offline data", prepare) is None:
        return finish(report, args, env_line, started, work, command)

    # ------------------------------------------------------------------ 1. CRD on the device
    def crd_on_device():
        from crossmodal.losses.base import DistillSpec, OutputShapes
        from crossmodal.losses.crd import CRDLoss

        device = torch.device(args.device)
        n, b = sizes["crd_rows"], sizes["batch"]
        labels = torch.arange(n) % 100
        shapes = OutputShapes(features=[], preact_features=[], embedding=256, num_classes=100)
        crd = CRDLoss(DistillSpec(shapes, shapes, n, 100, labels), feat_dim=128, nce_k=sizes["k"]).to(device)
        on_device = {name for name, t in list(crd.named_buffers()) + list(crd.named_parameters())
                     if t.device.type != device.type}
        if on_device:
            raise AssertionError(f"tensors left off {device}: {sorted(on_device)[:5]}")
        s = torch.randn(b, 256, device=device, requires_grad=True)
        t = torch.randn(b, 256, device=device)
        losses = []
        for step in range(4):
            index = (torch.arange(b, device=device) + step * b) % n
            if cuda and step > 0:  # step 0 sets up the Z estimate; later steps must not sync with the host
                torch.cuda.set_sync_debug_mode("error")
            try:
                loss = crd({"embedding": s}, {"embedding": t}, {"index": index})
                loss.backward()
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode("default")
            losses.append(float(loss.detach()))
        if not all(torch.isfinite(torch.tensor(losses))):
            raise AssertionError(f"non-finite CRD loss: {losses}")
        return (f"K {sizes['k']}, N {n}, batch {b}: losses {', '.join(f'{v:.3f}' for v in losses)}; "
                f"no host sync in steps 2-4" + ("" if cuda else " (not checkable on CPU)"))

    if "crd" not in args.skip:
        report.run("CRD on the device", crd_on_device)

    # ------------------------------------------------------------------ 2. teach
    base = dict(data=dict(path=str(data), augment=dict(crop=32, padding=4, hflip=True), preload=True,
                          workers=0 if args.quick else 6),
                optim=dict(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=sizes["batch"],
                           epochs=sizes["epochs"], schedule="cosine"),
                engine=dict(device=args.device, max_steps_per_epoch=sizes["steps"], progress=False, log_every=1000))
    runs = work / "runs"
    teach_rows, teacher_ckpt = [], None
    teach_variants = [("fp32", {})]
    if "amp" not in args.skip:
        teach_variants += [("bf16", {"precision": "bf16"}),
                           ("bf16 + channels_last", {"precision": "bf16", "channels_last": True})]
    if cuda and "amp" not in args.skip:
        teach_variants.append(("fp16 (GradScaler)", {"precision": "fp16"}))
    if "compile" not in args.skip:
        teach_variants.append(("bf16 + channels_last + compile",
                               {"precision": "bf16", "channels_last": True, "compile": True}))
    if "teach" not in args.skip:
        for label, engine in teach_variants:
            name = "teach_" + label.split(" (")[0].replace(" + ", "_").replace(" ", "")

            def teach(name=name, engine=engine, label=label):
                cfg = dict(base, name=name, out_dir=str(runs), model=dict(arch="resnet32x4", modality="rgb"))
                cfg["engine"] = dict(base["engine"], **engine)
                start = time.perf_counter()
                sh([sys.executable, "-m", "cli", "teach", str(write_yaml(work / f"{name}.yaml", cfg))])
                wall = time.perf_counter() - start
                last = last_epoch(runs / name)
                if last["train_loss"] is None or not last["train_loss"] == last["train_loss"]:
                    raise AssertionError(f"train loss is {last['train_loss']}")
                teach_rows.append((label, last["images_per_s"], last["test_top1"], last["train_loss"], wall))
                return f"{last['images_per_s']:.0f} img/s (last epoch), test top-1 {last['test_top1']:.2f}%"

            if report.run(f"teach resnet32x4, {label}", teach) is not None and teacher_ckpt is None:
                teacher_ckpt = runs / name / "best.pt"
        if teach_rows:
            fp32 = teach_rows[0][1] if teach_rows[0][0] == "fp32" else None
            teach = report.results["teach"] = {
                "arch": "resnet32x4", "batch": sizes["batch"], "epochs": sizes["epochs"], "steps": sizes["steps"],
                "loader_workers": base["data"]["workers"],
                "rows": [{"setting": label, "images_per_s": ips, "vs_fp32": ips / fp32 if fp32 else None,
                          "final_train_loss": loss, "test_top1": top1, "wall_s": wall}
                         for label, ips, top1, loss, wall in teach_rows]}
            lines = [f"## teach resnet32x4 (32 px, batch {teach['batch']}, {teach['epochs']} epochs x "
                     f"{teach['steps']} steps, loader workers {teach['loader_workers']})", "",
                     "| setting | images/s (last epoch) | vs fp32 | final train loss | test top-1 | wall s (with start-up) |",
                     "|---|---|---|---|---|---|"]
            for r in teach["rows"]:
                ratio = f"{r['vs_fp32']:.2f}x" if r["vs_fp32"] is not None else "-"
                lines.append(f"| {r['setting']} | {r['images_per_s']:.0f} | {ratio} | {r['final_train_loss']:.3f} | "
                             f"{r['test_top1']:.2f} | {r['wall_s']:.0f} |")
            report.sections.append("\n".join(lines))

    # ------------------------------------------------------------------ 3. distill
    def distill_cfg(name: str, losses: dict, engine: dict) -> Path:
        cfg = dict(base, name=name, out_dir=str(runs),
                   teachers=[dict(checkpoint=str(teacher_ckpt), modality="rgb")],
                   student=dict(arch="resnet8x4", modality="rgb"), losses=losses,
                   loss_params={k: v for k, v in (("kd", dict(temperature=4)), ("crd", dict(nce_k=sizes["k"])))
                                if k in losses})
        cfg["engine"] = dict(base["engine"], **engine)
        return write_yaml(work / f"{name}.yaml", cfg)

    distill_rows = []
    if "distill" not in args.skip and teacher_ckpt is not None:
        fast = {"precision": "bf16", "channels_last": True}
        for label, losses in (("+KD", {"ce": 0.1, "kd": 0.9}), ("+KD+CRD", {"ce": 1.0, "kd": 1.0, "crd": 0.8})):
            def distill(label=label, losses=losses):
                name = "distill_" + label.strip("+").replace("+", "_").lower()
                sh([sys.executable, "-m", "cli", "distill", str(distill_cfg(name, losses, fast))])
                last = last_epoch(runs / name)
                distill_rows.append((label, last["images_per_s"], last["test_top1"], last["train_loss"]))
                return f"{last['images_per_s']:.0f} img/s (last epoch), test top-1 {last['test_top1']:.2f}%"

            report.run(f"distill resnet32x4 -> resnet8x4 {label} (bf16, channels_last)", distill)
        if distill_rows:
            kd = distill_rows[0][1]
            distill = report.results["distill"] = {
                "teacher": "resnet32x4", "student": "resnet8x4", "batch": sizes["batch"], "k": sizes["k"],
                "rows": [{"losses": label, "images_per_s": ips, "time_vs_kd": kd / ips, "final_train_loss": loss,
                          "test_top1": top1} for label, ips, top1, loss in distill_rows]}
            lines = [f"## distill resnet32x4 -> resnet8x4 (bf16 + channels_last, batch {distill['batch']}, "
                     f"K {distill['k']})", "",
                     "| losses | images/s (last epoch) | vs +KD | final train loss | test top-1 |", "|---|---|---|---|---|"]
            for r in distill["rows"]:
                lines.append(f"| {r['losses']} | {r['images_per_s']:.0f} | {r['time_vs_kd']:.2f}x time | "
                             f"{r['final_train_loss']:.3f} | {r['test_top1']:.2f} |")
            report.sections.append("\n".join(lines))

    # ------------------------------------------------------------------ 4. DDP, one process
    if "ddp" not in args.skip and teacher_ckpt is not None:
        exact = {"precision": "fp32", "deterministic": True}
        losses = {"ce": 1.0, "kd": 1.0, "crd": 0.8}
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29533"]

        def ddp_one_process():
            """Same deterministic config twice: plain, then under torchrun; falls back to a loose tolerance
            (and says so) when a CUDA op has no deterministic kernel."""
            notes = []
            for engine, tol in ((exact, 1e-4), ({"precision": "fp32"}, 1e-3)):
                try:
                    sh([sys.executable, "-m", "cli", "distill", str(distill_cfg("ddp_plain", losses, engine))])
                    out = sh(torchrun + ["-m", "cli", "distill", str(distill_cfg("ddp_torchrun", losses, engine))])
                    break
                except RuntimeError as err:
                    if not engine.get("deterministic"):
                        raise
                    notes.append(f"deterministic mode failed ({err}); compared without it")
                    shutil.rmtree(runs / "ddp_plain", ignore_errors=True)
                    shutil.rmtree(runs / "ddp_torchrun", ignore_errors=True)
            if "world size 1 (DDP, nccl)" not in out and "world size 1 (DDP, gloo)" not in out:
                raise AssertionError("the torchrun run did not report a 1-process DDP job")
            a = torch.load(runs / "ddp_plain" / "last.pt", map_location="cpu", weights_only=True)["model"]
            b = torch.load(runs / "ddp_torchrun" / "last.pt", map_location="cpu", weights_only=True)["model"]
            diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
            if diff > tol:
                raise AssertionError(f"student weights differ by {diff:.3g} (> {tol}) between torchrun and plain")
            return "; ".join(notes + [f"student weights max |diff| {diff:.3g} <= {tol} (torchrun 1 process vs plain, "
                                      f"{'deterministic ' if engine.get('deterministic') else ''}fp32)"])

        report.run("DDP with one process (torchrun)", ddp_one_process)
        if cuda:
            def sync_bn():
                cfg = distill_cfg("ddp_syncbn", losses, {"precision": "bf16", "sync_bn": True})
                sh(torchrun + ["-m", "cli", "distill", str(cfg)])
                last = last_epoch(runs / "ddp_syncbn")
                return f"SyncBN under DDP: {last['images_per_s']:.0f} img/s, test top-1 {last['test_top1']:.2f}%"

            report.run("SyncBN under DDP (torchrun, 1 process)", sync_bn)
    # ------------------------------------------------------------------ 5. crd_speed (last: the other checks matter more when time is short)
    if "speed" not in args.skip:
        def crd_speed():
            out = work / "crd_speed.md"
            steps = ["--steps", "5", "--warmup", "1", "--ks", "512", "--num-rows", "2000"] if args.quick else \
                ["--steps", "30", "--warmup", "5"]
            sh([sys.executable, "benchmarks/crd_speed.py", "--device", args.device, "--threads", "4", *steps,
                "--out", str(out)])
            text = out.read_text()
            report.sections.append(text.replace("# CRD speed", "## CRD speed", 1).replace("\n## ", "\n### "))
            report.results["crd_speed"] = json.loads(out.with_suffix(".json").read_text())
            return "table below"

        report.run("crd_speed on the device", crd_speed)

    return finish(report, args, env_line, started, work, command)


def finish(report: Report, args, env_line: str, started: float, work: Path, command: str) -> int:
    from benchmarks.common import git_commit, machine_line

    checks = [{"check": name, "passed": ok, "detail": detail, "seconds": seconds}
              for name, ok, detail, seconds in report.checks]
    record = {"command": command, "machine": machine_line(args.device), "commit": git_commit(),
              "torch": torch.__version__, "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "device": env_line, "total_s": time.perf_counter() - started,
              "passed": sum(c["passed"] for c in checks), "checks": checks, **report.results}
    lines = ["# GPU check", "", f"Command: `{record['command']}`", f"Device: {record['device']}",
             f"Date: {record['written']}; total {record['total_s']:.0f} s; {record['passed']} of "
             f"{len(checks)} checks passed.", "", "| check | result | seconds | detail |", "|---|---|---|---|"]
    for c in checks:
        lines.append(f"| {c['check']} | {'PASS' if c['passed'] else 'FAIL'} | {c['seconds']:.0f} | "
                     f"{c['detail'].replace('|', '/')} |")
    text = "\n".join(lines + [""] + [s + "\n" for s in report.sections])
    print("\n" + text, flush=True)
    if args.out:
        from crossmodal.tempfiles import atomic_write_text

        atomic_write_text(args.out, text)
        atomic_write_text(args.out.with_suffix(".json"), json.dumps(record, indent=1) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return len(checks) - record["passed"]


if __name__ == "__main__":
    sys.exit(main())
