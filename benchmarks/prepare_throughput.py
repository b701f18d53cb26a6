"""Throughput of `crossmodal prepare imagefolder` on CIFAR-10 (60,000 JPEGs) -> rgb, L, ab.

    python benchmarks/prepare_throughput.py [--src ../shared/data/cifar10.tar.gz] [--workers 1,2]
    python benchmarks/prepare_throughput.py --encoded [--workers 2]   # ImageNet-style --encoding jpeg

--encoded measures encoded storage instead: the 5,500 Imagenette JPEGs at 224 px
(../shared/data/imagenette2-224-sub.tgz) into `--encoding jpeg` (stored as they are), and
JPEGs of ImageNet's typical 500x375 synthesised from them in a temporary tar (each 224-px image
resized to 500x375 and re-encoded at quality 90), stored as they are and with --max-side 256.
Results: benchmarks/results/prepare_throughput_encoded.md.

Each run is the real command in a fresh process (interpreter start, archive read, decode, Lab,
stats, HDF5 write, rename), timed end to end. CPU time is the child's user + system time, so
"CPU / wall" shows how much of the machine the run used. Then the first 10,000 train rows of the
file are rewritten with each HDF5 compression filter to show why the file is uncompressed.
Outputs go to a temporary folder that is deleted afterwards; results to
benchmarks/results/prepare_throughput.md (or --out), and the same numbers to the .json beside it.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from crossmodal.tempfiles import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.common import git_commit, machine_line  # noqa: E402

DEFAULT_SRC = REPO.parent / "shared" / "data" / "cifar10.tar.gz"
RESULTS = REPO / "benchmarks" / "results" / "prepare_throughput.md"


def busiest_processes(n: int = 6) -> list[str]:
    """What else was running: top's header and its n busiest processes (CPU % over the last second)."""
    listing = subprocess.run(["top", "-b", "-n", "2", "-d", "1", "-o", "%CPU", "-w", "120"],
                             capture_output=True, text=True).stdout
    last = listing[listing.rfind("top - "):].splitlines()  # the second sample: CPU % over 1 s, not since boot
    table = next(i for i, line in enumerate(last) if line.lstrip().startswith("PID"))
    return [line.rstrip() for line in last[:3] + last[table:table + n + 1]]


def prepared_images(path: Path) -> int:
    """Rows in all splits of a prepared file: the images the run wrote."""
    from crossmodal.data.schema import open_prepared

    f, info = open_prepared(path)
    f.close()
    return sum(split["n"] for split in info["splits"].values())


def write_seconds(stdout: str, command: list[str]) -> float:
    """The write time `prepare` prints ('... in N s'); a run that does not print it is refused, naming it."""
    written = re.search(r"in ([\d.]+) s", stdout)
    if written is None:
        raise SystemExit(f"`{shlex.join(command)}` printed no 'in N s' write time: {stdout.strip()[-200:]!r}")
    return float(written.group(1))


def run_once(src: Path, workers: int, out_dir: Path) -> dict:
    """Run the command once; return its wall and CPU seconds, images/s and the command line."""
    out = out_dir / f"cifar10-w{workers}.h5"
    command = [sys.executable, "-m", "cli", "prepare", "imagefolder", str(src), "--out", str(out),
               "--modalities", "rgb,L,ab", "--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"prepare failed ({result.returncode}): {result.stderr.strip()}")
    size_mb = out.stat().st_size / 1e6
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    images = prepared_images(out)
    return {"out": out, "workers": workers, "wall": wall, "images": images, "images_per_s": images / wall,
            "cpu": cpu, "cpu_per_wall": cpu / wall, "images_per_cpu_s": images / cpu,
            "write_seconds": write_seconds(result.stdout, command), "load_before": load,
            "size_mb": size_mb, "command": "python -m cli " + " ".join(command[3:]).replace(str(out), "OUT.h5")}


def compression_study(prepared: Path, n: int = 10_000) -> list[dict]:
    """Rewrite the first n train rows of a prepared file with each HDF5 filter; time, size, random-read speed."""
    import h5py
    import numpy as np

    with h5py.File(prepared, "r") as f:
        arrays = {name: f["train"][name][:n] for name in ("rgb", "L", "ab")}
    out_dir = prepared.parent
    rows = []
    for label, options in (("none", {}), ("lzf", {"compression": "lzf"}),
                           ("gzip level 1", {"compression": "gzip", "compression_opts": 1})):
        path = out_dir / "compression.h5"
        started = time.perf_counter()
        with h5py.File(path, "w") as f:
            for name, array in arrays.items():
                dataset = f.create_dataset(name, shape=array.shape, dtype=array.dtype,
                                           chunks=(1,) + array.shape[1:], **options)
                for start in range(0, len(array), 256):
                    dataset[start:start + 256] = array[start:start + 256]
        write = time.perf_counter() - started
        picks = np.random.default_rng(0).integers(0, len(arrays["rgb"]), 2000)
        started = time.perf_counter()
        with h5py.File(path, "r") as f:
            datasets = [f[name] for name in arrays]
            for i in picks:  # what a training step does: random single samples
                for dataset in datasets:
                    dataset[i]
        rows.append({"filter": label, "write": write, "mb": path.stat().st_size / 1e6,
                     "read_ms": (time.perf_counter() - started) / len(picks) * 1e3})
        path.unlink()
    for row in rows:
        row["write_vs_none"], row["mb_change_vs_none"] = row["write"] / rows[0]["write"], row["mb"] / rows[0]["mb"] - 1
    return rows


def stamp(command: str) -> dict:
    """The fields each results JSON starts with: command, machine, commit, torch and when it was written."""
    return {"command": command, "machine": machine_line(), "commit": git_commit(), "torch": version("torch"),
            "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def write_both(out: Path, text: str, record: dict) -> None:
    """Write the markdown report and the JSON record beside it, each atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=1) + "\n")


def report(runs: list[dict], src: Path, others: list[str], compression: list[dict]) -> str:
    """The results page in Markdown."""
    lines = [
        f"# `crossmodal prepare` throughput (CIFAR-10, {runs[0]['images']:,} JPEGs -> rgb, L, ab)",
        "",
        f"Machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), Python "
        f"{platform.python_version()}, torch {version('torch')}, opencv {version('opencv-python-headless')}, "
        f"h5py {version('h5py')}, numpy {version('numpy')}. Source: `{src}`.",
        "",
        "Command (run by `python benchmarks/prepare_throughput.py`, each in a fresh process, timed end to end):",
        "",
        "```",
        *(run["command"] for run in runs),
        "```",
        "",
        "| workers | wall s | images/s | CPU s (user+sys) | CPU / wall | images per CPU-s | of which writing s "
        "| 1-min load before | file MB |",
        "|---|---|---|---|---|---|---|---|---|",
        *(f"| {r['workers']} | {r['wall']:.1f} | {r['images_per_s']:,.0f} | {r['cpu']:.1f} | "
          f"{r['cpu_per_wall']:.2f} | {r['images_per_cpu_s']:,.0f} | {r['write_seconds']:.1f} | "
          f"{r['load_before']:.1f} | {r['size_mb']:.0f} |" for r in runs),
        "",
        "`of which writing` is the time the command itself reports for `write_prepared` (decode, Lab,",
        "stats, HDF5); the rest is interpreter start-up and reading the archive index. `CPU / wall`",
        "below the worker count + 1 means the run waited for cores other processes held.",
        "",
        "What else shared the machine when the benchmark started (`top -b`, CPU % over one second):",
        "",
        "```",
        *others,
        "```",
    ]
    if compression:
        lines += [
            "",
            "## Compression (why the file is uncompressed)",
            "",
            f"The first {10_000:,} train images' rgb, L and ab, decoded once, written with chunks (1, C, H, W) "
            "and each filter, then 2,000 random samples read back (as a training step does):",
            "",
            "| filter | write s | vs none | file MB | vs none | random read ms/sample |",
            "|---|---|---|---|---|---|",
            *(f"| {r['filter']} | {r['write']:.2f} | {r['write_vs_none']:.1f}x | {r['mb']:.0f} | "
              f"{r['mb_change_vs_none']:+.0%} | {r['read_ms']:.3f} |" for r in compression),
            "",
            "Natural 32x32 images stored as uint8 and float16 compress little: the filters make writing",
            "several times slower and random reads (the training path) slower too, for a modestly smaller",
            "file. The prepared file is therefore uncompressed.",
        ]
    return "\n".join(lines) + "\n"


ENCODED_SRC = REPO.parent / "shared" / "data" / "imagenette2-224-sub.tgz"
ENCODED_RESULTS = REPO / "benchmarks" / "results" / "prepare_throughput_encoded.md"
LARGE_SIDE = (375, 500)  # (H, W) of the synthesised ImageNet-typical JPEGs


def run_command(args: list[str], out: Path) -> dict:
    """Run `python -m cli ARGS --out OUT` in a fresh process; wall, CPU (user+sys of it and its workers) and rates."""
    command = [sys.executable, "-m", "cli", *args, "--out", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"prepare failed ({result.returncode}): {result.stderr.strip()}")
    write = write_seconds(result.stdout, command)
    images = prepared_images(out)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "write": write, "cpu": cpu, "images": images, "load_before": load,
            "end_to_end_rate": images / wall, "write_rate": images / write, "per_cpu_s": images / cpu,
            "mb": out.stat().st_size / 1e6,
            "command": "python -m cli " + " ".join(args + ["--out", "OUT.h5"])}


def synthesise_large(src: Path, out: Path, count: int) -> int:
    """A tar of `count` train + count // 4 val JPEGs of 500x375 made from the first Imagenette images; returns N."""
    import tarfile

    import cv2
    import numpy as np

    made = 0
    with tarfile.open(src) as archive, tarfile.open(out, "w") as tar:
        wanted = {"train": count, "val": count // 4}
        for member in archive:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) < 4 or wanted.get(parts[-3], 0) <= 0:
                continue
            wanted[parts[-3]] -= 1
            image = cv2.imdecode(np.frombuffer(archive.extractfile(member).read(), np.uint8), cv2.IMREAD_COLOR)
            large = cv2.resize(image, LARGE_SIDE[::-1], interpolation=cv2.INTER_CUBIC)
            data = cv2.imencode(".jpg", large, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
            info = tarfile.TarInfo(f"large/{parts[-3]}/{parts[-2]}/{parts[-1]}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            made += 1
    return made


def encoded_benchmark(workers: int, out: Path, command: str) -> None:
    """Encoded storage: Imagenette 224 px as-is, synthesised 500x375 as-is and with --max-side 256."""
    if not ENCODED_SRC.exists():
        raise SystemExit(f"{ENCODED_SRC}: not found (the shared data folder ../shared/data beside the repository)")
    others = busiest_processes()
    rows = []
    with tempfile.TemporaryDirectory(prefix="prepare-encoded-bench-") as tmp:
        tmp = Path(tmp)
        base = ["prepare", "imagefolder"]
        run = run_command(base + [str(ENCODED_SRC), "--encoding", "jpeg", "--workers", str(workers)],
                          tmp / "224.h5")
        size_kb = run["mb"] * 1e3 / run["images"]
        rows.append((f"Imagenette 224x224 (~{size_kb:.0f} kB), stored as they are", run))
        large = tmp / "large.tar"
        n_large = synthesise_large(ENCODED_SRC, large, 1600)
        size_kb = large.stat().st_size / n_large / 1e3
        for label, extra in (("stored as they are", []), ("--max-side 256 (decoded at 1/1, resized, re-encoded)",
                                                          ["--max-side", "256"])):
            run = run_command(base + [str(large), "--encoding", "jpeg", "--workers", str(workers), *extra],
                              tmp / "large.h5")
            (tmp / "large.h5").unlink()
            rows.append((f"synthesised 500x375 (~{size_kb:.0f} kB), {label}", run))
    for label, r in rows:
        print(f"{label}: write {r['write']:.2f} s = {r['write_rate']:,.0f} images/s; end to end {r['wall']:.2f} s = "
              f"{r['end_to_end_rate']:,.0f} images/s; CPU {r['cpu']:.2f} s = {r['per_cpu_s']:,.0f} images per "
              f"CPU-second; load before {r['load_before']:.1f}")
        print(f"  {r['command']}")
    lines = [
        "# `crossmodal prepare --encoding jpeg` throughput (ImageNet-style encoded storage)",
        "",
        f"Machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), Python "
        f"{platform.python_version()}, opencv {version('opencv-python-headless')}, h5py {version('h5py')}. "
        f"Written by `python benchmarks/prepare_throughput.py --encoded --workers {workers}`; every run is the "
        "real command in a fresh process.",
        "",
        "| input | images | write s | images/s (write) | end-to-end s | images/s (end to end) | CPU s | "
        "images per CPU-s | 1-min load before | file MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(f"| {label} | {r['images']} | {r['write']:.2f} | {r['write_rate']:,.0f} | {r['wall']:.2f} | "
          f"{r['end_to_end_rate']:,.0f} | {r['cpu']:.2f} | {r['per_cpu_s']:,.0f} | {r['load_before']:.1f} | "
          f"{r['mb']:.0f} |" for label, r in rows),
        "",
        "Commands:",
        "",
        "```",
        *(r["command"] for _, r in rows),
        "```",
        "",
        "`write` is the time the command reports for `write_prepared` (the worker pool, decoding for validation",
        "and stats, HDF5); end to end adds interpreter start-up and reading the archive (the 54 MB .tgz is",
        "decompressed in memory). CPU s counts the command and its worker processes. `images per CPU-s` times",
        "the 2 cores is what the command does on an otherwise idle machine; on this one other jobs held the",
        "cores (see the load and the list below), so wall-clock rates are lower than that.",
        "",
        "Synthesised JPEGs are upscaled 224-px photographs: smoother than real 500x375 photographs, so their",
        "files are smaller and they decode slightly faster than real ImageNet JPEGs of that size.",
        "",
        "What else shared the machine when the benchmark started (`top -b`, CPU % over one second):",
        "",
        "```",
        *others,
        "```",
    ]
    record = {**stamp(command), "source": str(ENCODED_SRC), "workers": workers,
              "runs": [{"input": label, **r} for label, r in rows], "others": others}
    write_both(out, "\n".join(lines) + "\n", record)
    print(f"wrote {out}")


def main(argv=None) -> None:
    """Parse arguments, run each worker count, print and save the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--skip-compression", action="store_true", help="skip the compression comparison")
    parser.add_argument("--encoded", action="store_true", help="measure --encoding jpeg on Imagenette instead")
    parser.add_argument("--out", type=Path, default=None, help="markdown report (and .json beside it) "
                        f"[default: {RESULTS.relative_to(REPO)}, {ENCODED_RESULTS.relative_to(REPO)} with --encoded]")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "benchmarks/prepare_throughput.py", *(sys.argv[1:] if argv is None else argv)])
    if args.encoded:
        encoded_benchmark(int(args.workers.split(",")[-1]), args.out or ENCODED_RESULTS, command)
        return
    if not args.src.exists():
        raise SystemExit(f"{args.src}: not found (the shared data folder ../shared/data beside the repository)")
    others = busiest_processes()
    runs = []
    with tempfile.TemporaryDirectory(prefix="prepare-bench-") as out_dir:
        for workers in (int(w) for w in args.workers.split(",")):
            run = run_once(args.src, workers, Path(out_dir))
            print(f"workers {workers}: {run['wall']:.1f} s, {run['images_per_s']:,.0f} images/s, "
                  f"CPU {run['cpu']:.1f} s, load before {run['load_before']:.1f}", flush=True)
            runs.append(run)
        compression = [] if args.skip_compression else compression_study(runs[-1]["out"])
        for row in compression:
            print(f"{row['filter']}: write {row['write']:.2f} s, {row['mb']:.0f} MB, "
                  f"read {row['read_ms']:.3f} ms/sample")
    text = report(runs, args.src, others, compression)
    record = {**stamp(command), "source": str(args.src), "images": runs[0]["images"],
              "runs": [{k: v for k, v in r.items() if k != "out"} for r in runs], "compression": compression,
              "others": others}
    out = args.out or RESULTS
    write_both(out, text, record)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
