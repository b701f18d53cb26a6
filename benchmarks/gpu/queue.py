"""The GPU job queue: prepared jobs, run in order whenever a GPU slot is at hand.

    python -m benchmarks.gpu.queue --list                  # every job and its state (done / partial / waiting)
    python -m benchmarks.gpu.queue --next                  # the next job: its device command, what it carries, sizes
    python -m benchmarks.gpu.queue --dry-run [--tiny]      # --next, then run that job here on the CPU (tiny budget)
    python -m benchmarks.gpu.queue --run JOB --out DIR     # on the device machine: run JOB, results into DIR ($OUT)
    python -m benchmarks.gpu.queue --collect JOB FOLDER    # back here: file what came back (results, teacher, state)

A GPU slot is a bare machine with no network for 15 minutes in all, start included, so a job fits in
`JOB_BUDGET_S` (8 minutes, leaving room for one rerun), takes at most 64 MiB of input (the repository's
working tree, which travels whole, plus the data archive from ../shared/data, or a data file prepared here
(`HOST_DATA`), and the files it carries from .gpu_state/), and returns at most 8 files of at most 16 MiB
(results; a teacher's weights; a partial run's state when it fits). The order is the open issue's first, then
the earlier issues':
  a. benchmarks.budget's 240-pass point (CIFAR-10 resnet20 -> resnet8, labels only and CRD, seed 0: the CPU
     configs with `--set optim.epochs=240`, which test whether the budget is why CRD does not lead at 15 passes);
     `speed`: the speed targets (benchmarks.gpu.speed); `gpu_decode`: data.decode cuda on encoded 224-px JPEGs
     against the 2-worker CPU loader (benchmarks/loader_throughput.py --encoded --decode-device cuda), on the
     224-px Imagenette subset's train split prepared here with ImageNet's own JPEG bytes (`HOST_DATA`: the whole
     archive, 52 MiB, does not fit beside the working tree); `profile_crd`: where a CRD step's time goes
     (benchmarks.gpu.profile_crd: each part of the loss alone, against KD, and its costliest kernels);
  b. the benchmarks' teachers (configs/teachers/), unless teachers/ already holds them: each is
     `python -m benchmarks.teachers --only NAME --device cuda`, the CPU's own command, and comes back as
     teachers/NAME.pt with its teachers.json record (or, stopped at the budget, as a benchmarks.partial
     copy that the next slot continues from the committed tree);
  c. Table 1 on Tiny-ImageNet-100-32 with the paper's recipe (configs/cifar100/, 240 epochs): for
     vgg13 -> vgg8, then wrn_40_2 -> wrn_16_2, then resnet32x4 -> resnet8x4, the teacher and the vanilla,
     KD, CRD and CRD+KD students, seed 0 for every pair before seed 1;
  d. L -> ab on Imagenette-96 (CRD student of the converged L teacher, linear probe against random init), on a
     file prepared here with its JPEGs re-encoded (4:4:4) to fit the input limit (`HOST_DATA`; --next prints the
     command).

State. A job is done when benchmarks/results/gpu_<job>.json (committed) says so. A training job stops at
its budget between two epochs (its last.pt is written atomically after every epoch) and is `partial`:
on a machine that stays warm its run folder (.gpu_state/runs/, ignored, kept between calls) continues
with --resume; when its last.pt fits the limits it also comes back (in parts of at most 15 MiB) and is
carried to the next slot, which resumes it. A finished teacher comes back as its weights (no optimiser
state), kept in .gpu_state/teachers/ and carried to its students' jobs: in float32 when they fit the
input limit beside the data, else rounded to float16 (the job then records the test top-1 of both).
Results: benchmarks/results/gpu_<job>.json and .md, with the device named.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.gpu.common import device_line

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"
STATE = REPO / ".gpu_state"  # ignored: returned teachers and partial runs, carried to the device by name
DATA_LINK = ".gpu_data"  # ignored link to ../shared/data: a carried path through it travels as a file

MiB = 2**20
INPUT_LIMIT = 64 * MiB
FILE_LIMIT = 16 * MiB
PART_SIZE = 15 * MiB
MAX_FILES = 8
JOB_BUDGET_S = 8 * 60
TRAIN_BUDGET_S = 7 * 60 - 30  # training time within a job: start-up, data preparation and returns take the rest

# dataset key -> (archive in ../shared/data, `crossmodal prepare` arguments after the archive)
DATASETS = {
    "cifar10": ("cifar10.tar.gz", ["--modalities", "rgb,L,ab"]),
    "tinyimagenet100": ("tinyimagenet100-32.tar.gz", ["--modalities", "rgb"]),
    "imagenette": ("imagenette2-96.tgz", ["--modalities", "rgb,L,ab"]),
}


@dataclass(frozen=True)
class HostData:
    """A job's data file prepared here, where the CPUs are, and carried to the device as it is (the device prepares
    nothing): `crossmodal prepare imagefolder ARCHIVE --encoding jpeg [--only-splits S]`, with `--reencode
    --quality Q --subsampling C` when `quality` is set (else the source's JPEG bytes are kept)."""

    what: str  # what the job's report calls the data
    archive: str  # the source in ../shared/data
    stem: str
    modalities: str
    quality: int | None = None  # every JPEG is re-encoded at this quality (OpenCV); None keeps the source's bytes
    subsampling: str | None = None  # with quality: "444" (full colour resolution) or "420" (halved)
    only_splits: str | None = None  # "train": only these splits of the archive (None: all of them)

    @property
    def path(self) -> str:
        """Repository-relative and ignored (data/ is): the carry path, the same here and on the device."""
        how = f"q{self.quality}_{self.subsampling}" if self.quality is not None else "orig"
        return f"data/gpu/{self.stem}_{how}.h5"

    @property
    def arguments(self) -> dict:
        """What the file's provenance must record (its `arguments`) for the job to use it."""
        want = {"modalities": self.modalities.split(","), "encoding": "jpeg", "reencode": self.quality is not None}
        if self.quality is not None:
            want.update(jpeg_quality=self.quality, jpeg_subsampling=self.subsampling)
        return want

    @property
    def splits(self) -> list[str] | None:
        """The splits the file must hold exactly (None: whatever the archive has)."""
        return None if self.only_splits is None else self.only_splits.split(",")

    @property
    def how(self) -> str:
        """How the file's JPEGs were made, for --next and the job's report."""
        if self.quality is None:
            return "with its JPEGs kept as the source's bytes"
        return f"re-encoded at JPEG quality {self.quality}, {sampling_name(self.subsampling)}"


def sampling_name(subsampling: str) -> str:
    """"444" -> "4:4:4"."""
    return ":".join(subsampling)


# Imagenette-96 as the archive holds it (57.8 MiB; its JPEGs, q90 4:4:4, are 65.2 MiB) does not fit beside the
# working tree (17.1 MiB) in a device call's 64 MiB. Prepared here with --reencode at quality Q and --subsampling S,
# the file measured (13,394 images, OpenCV; 2026-11-27), in MiB:
#     Q        95     90     85     80     75     70
#     4:4:4   89.3   67.8   61.1   52.6   41.9   40.1
#     4:2:0   75.0   56.6   50.1   43.6   36.2   34.6
# The job's student is the ab (chroma) input, which 4:2:0 gives at half the resolution (on the 96-px mini set at
# q75, the ab mean abs error against the source is 2.16 at 4:2:0 and 1.32 at 4:4:4), so the file is 4:4:4, at the
# highest Q that keeps the job's input (working tree + file; its teacher is committed, in the tree) at or under
# 60 MiB, leaving the tree some room to grow: 80 would make 69.7, 75 makes 59.0. The CPU benchmark
# (benchmarks/crossmodal_imagenette.py) reads the original bytes.
IMAGENETTE96_QUALITY = 75
IMAGENETTE96_SUBSAMPLING = "444"
HOST_DATA = {
    "imagenette96_reencoded": HostData("Imagenette-96", "imagenette2-96.tgz", "imagenette96", "rgb,L,ab",
                                       IMAGENETTE96_QUALITY, IMAGENETTE96_SUBSAMPLING),
    # The decode job times the training loader (train split) only; its 4,000 JPEGs are 40.2 MiB as ImageNet's own
    # bytes, which fits beside the working tree where the whole archive (train + val, 52 MiB) does not.
    "imagenette224_train": HostData("the 224-px Imagenette subset's train split", "imagenette2-224-sub.tgz",
                                    "imagenette224_train", "rgb,L,ab", only_splits="train"),  # L, ab: derived
}
GPU_ENGINE = ["--set", "engine.device=cuda", "--set", "engine.precision=bf16", "--set", "engine.channels_last=true",
              "--set", "engine.progress=false", "--set", "data.workers=8"]
PAIRS = [("vgg13", "vgg8"), ("wrn_40_2", "wrn_16_2"), ("resnet32x4", "resnet8x4")]
METHODS = {"vanilla": None, "kd": "kd", "crd": "crd", "crd_kd": "crd_kd"}  # student run -> config suffix
# benchmarks.budget at the paper's 240 epochs (seed 0): the CPU configs of its labels-only and CRD students, whose
# 5, 15 and 45 passes run on the CPU, with the committed CIFAR-10 teacher. method -> (kind, config, teacher job).
BUDGET_EPOCHS = 240
BUDGET_RUNS = {"vanilla": ("teach", "configs/cpu/cifar10_resnet8.yaml", ""),
               "crd": ("distill", "configs/cpu/cifar10_resnet20_resnet8_crd.yaml", "teacher_cifar10_resnet20")}
# Jobs that run one benchmark script: kind -> (module, the stem of its .json/.md, takes a --work folder)
SCRIPTS = {"speed": ("benchmarks.gpu.speed", "gpu_speed", True),
           "profile": ("benchmarks.gpu.profile_crd", "gpu_profile_crd", False)}


@dataclass
class Job:
    """One queue entry: a command run on the device, its data, the teacher it needs, what it returns."""

    name: str
    group: str  # a, b, c, d (the order)
    kind: str  # speed | decode | profile | teach | distill
    title: str
    config: str = ""  # repository path of the run's config
    dataset: str = ""  # DATASETS key (an archive prepared on the device) or HOST_DATA key (a file made here)
    seed: int = 0
    teacher_job: str = ""  # the job whose teacher this run distills from
    extra: list = field(default_factory=list)  # more CLI arguments (`--set ...`)
    probe: bool = False  # after training: linear probe of the student (ab) against a random init

    @property
    def is_teacher(self) -> bool:
        return self.kind == "teach" and (self.group == "b" or self.name.endswith("_teacher_s%d" % self.seed))


def build_jobs() -> list[Job]:
    """The queue, in order (see the module docstring)."""
    # First the open issue's deciding measurement: benchmarks.budget's 240-pass point (labels only and CRD).
    jobs = [Job(f"budget_cifar10_{BUDGET_EPOCHS}ep_{method}_s0", "a", kind,
                f"CIFAR-10 resnet8 {method} for {BUDGET_EPOCHS} passes (benchmarks.budget's longest point)",
                config=config, dataset="cifar10", teacher_job=teacher_job,
                extra=["--set", f"optim.epochs={BUDGET_EPOCHS}"])
            for method, (kind, config, teacher_job) in BUDGET_RUNS.items()]
    jobs += [Job("speed", "a", "speed", "speed targets: CRD+KD step, +CRD vs +KD, 240-epoch run, teach epoch"),
            Job("gpu_decode", "a", "decode", "data.decode cuda on encoded 224-px JPEGs against the 2-worker CPU loader",
                dataset="imagenette224_train"),
            Job("profile_crd", "a", "profile", "where a CRD step's time goes: each part of the loss alone, its kernels")]
    from benchmarks.teachers import TEACHERS

    for name, spec in TEACHERS.items():
        jobs.append(Job(f"teacher_{name}", "b", "teach", f"benchmark teacher {name} ({spec.config})",
                        config=spec.config, dataset=spec.dataset, seed=spec.seed))
    for seed in (0, 1):
        for teacher, student in PAIRS:
            tjob = f"t1_{teacher}_teacher_s{seed}"
            jobs.append(Job(tjob, "c", "teach", f"Table 1 teacher {teacher}, seed {seed}",
                            config=f"configs/cifar100/{teacher}.yaml", dataset="tinyimagenet100", seed=seed))
            for method, suffix in METHODS.items():
                config = f"configs/cifar100/{student}.yaml" if suffix is None else \
                    f"configs/cifar100/{teacher}_{student}_{suffix}.yaml"
                jobs.append(Job(f"t1_{teacher}_{student}_{method}_s{seed}", "c", "teach" if suffix is None else "distill",
                                f"Table 1 {teacher} -> {student} {method}, seed {seed}", config=config,
                                dataset="tinyimagenet100", seed=seed, teacher_job="" if suffix is None else tjob))
    jobs.append(Job("L_to_ab_imagenette", "d", "distill", "L -> ab on Imagenette-96: CRD student, linear probe",
                    config="configs/cpu/imagenette_L_to_ab_crd.yaml", dataset="imagenette96_reencoded",
                    teacher_job="teacher_imagenette96_L_mobilenetv3", probe=True))
    return jobs


# --------------------------------------------------------------------------------------------- state
def result_path(job: Job, results: Path | None = None) -> Path:
    return (results or RESULTS) / f"gpu_{job.name}.json"


def job_record(job: Job, results: Path | None = None) -> dict:
    """The committed record of a job, or {} when it has none."""
    path = result_path(job, results)
    return json.loads(path.read_text()) if path.exists() else {}


def teacher_file(job_name: str, state: Path | None = None) -> Path:
    """Where a finished teacher's weights are kept here (and carried from)."""
    return (state or STATE) / "teachers" / f"{job_name}.pt"


def committed_teacher(job: Job) -> Path | None:
    """A group-b teacher already in teachers/ (committed by benchmarks.teachers), if any."""
    if job.group != "b":
        return None
    path = REPO / "teachers" / (job.name[len("teacher_"):] + ".pt")
    return path if path.exists() else None


def status(job: Job, results: Path | None = None, state: Path | None = None) -> str:
    """done | partial | ready | waiting (for its teacher)."""
    if job_record(job, results).get("status") == "done" or committed_teacher(job) is not None:
        return "done"
    if job.teacher_job and not (teacher_file(job.teacher_job, state).exists() or _committed_b_teacher(job)):
        return "waiting"
    if job_record(job, results).get("status") == "partial":
        return "partial"
    return "ready"


def _committed_b_teacher(job: Job) -> bool:
    return job.teacher_job.startswith("teacher_") and (REPO / "teachers" / (job.teacher_job[8:] + ".pt")).exists()


def next_job(jobs: list[Job], results: Path | None = None, state: Path | None = None) -> Job | None:
    """The first job in queue order that is partial or ready: a partial job continues before every job after it
    (its state is committed or kept here, so a job before it loses nothing by going first)."""
    return next((job for job in jobs if status(job, results, state) in ("partial", "ready")), None)


# ------------------------------------------------------------------------------------------- inputs
def working_tree_bytes(repo: Path = REPO) -> int:
    """Bytes of what travels without being named: tracked files plus untracked files git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         capture_output=True, check=True).stdout.decode()
    return sum((repo / p).stat().st_size for p in out.split("\0") if p and (repo / p).is_file())


def carried_files(job: Job, state: Path | None = None, shared: Path | None = None) -> dict[str, Path]:
    """Repository-relative carry path -> the file here, for every file the job needs beyond the working tree."""
    state, shared = state or STATE, shared or SHARED_DATA
    files = {}
    if job.dataset in HOST_DATA:
        files[HOST_DATA[job.dataset].path] = REPO / HOST_DATA[job.dataset].path
    elif job.dataset:
        archive = DATASETS[job.dataset][0]
        files[f"{DATA_LINK}/{archive}"] = shared / archive
    if job.teacher_job and not _committed_b_teacher(job):
        path = teacher_file(job.teacher_job, state)
        files[f"{STATE.name}/{path.relative_to(state)}"] = path
    resume = state / "resume" / job.name
    if resume.is_dir():
        for part in sorted(resume.iterdir()):
            files[f"{STATE.name}/{part.relative_to(state)}"] = part
    return files


def input_bytes(job: Job, tree_bytes: int, state: Path | None = None, shared: Path | None = None) -> int:
    """What the job's device call sends: the working tree plus its carried files."""
    return tree_bytes + sum(p.stat().st_size for p in carried_files(job, state, shared).values() if p.exists())


def device_command(job: Job) -> str:
    """The shell command the device tool runs in the repository root."""
    return f"PYTHONUNBUFFERED=1 python -m benchmarks.gpu.queue --run {job.name} --out $OUT"


def host_prepare_command(host: HostData, shared: Path | None = None) -> str:
    """The command that makes a job's host-prepared file here (run before the job is sent)."""
    out = REPO / host.path
    return f"mkdir -p {shlex.quote(str(out.parent))} && {shlex.join(host_prepare_argv(host, out, shared))}"


def host_prepare_argv(host: HostData, out: Path, shared: Path | None = None) -> list[str]:
    """The `crossmodal prepare` command that makes a job's host-prepared file at `out`."""
    prepare = ["crossmodal", "prepare", "imagefolder", str((shared or SHARED_DATA) / host.archive), "--out", str(out),
               "--modalities", host.modalities, "--encoding", "jpeg"]
    if host.only_splits is not None:
        prepare += ["--only-splits", host.only_splits]
    if host.quality is not None:
        prepare += ["--reencode", "--quality", str(host.quality), "--subsampling", host.subsampling]
    return prepare


def host_data_problem(host: HostData, shared: Path | None = None) -> str | None:
    """Why the job cannot use its host-prepared file (missing, unreadable, prepared otherwise); None when it can."""
    path, command = REPO / host.path, host_prepare_command(host, shared)
    if not path.exists():
        return f"{host.path}: missing; prepare it here first: {command}"
    try:
        provenance = _provenance(path)
        arguments = provenance["arguments"]
    except (OSError, KeyError, ValueError) as e:
        return f"{host.path}: not a prepared file ({e}); prepare it again: {command} --force"
    for key, want in host.arguments.items():
        if arguments.get(key) != want:
            return (f"{host.path}: prepared with {key} {arguments.get(key)!r}, the job needs {want!r}; prepare it "
                    f"again: {command} --force")
    splits = sorted(provenance.get("counts", {}))  # split -> rows stored
    if host.splits is not None and splits != sorted(host.splits):
        return (f"{host.path}: holds the splits {', '.join(splits) or 'none'}, the job needs only "
                f"{', '.join(host.splits)}; prepare it again: {command} --force")
    return None


def _provenance(path: Path) -> dict:
    import h5py

    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["provenance"])


def plan(job: Job, tree_bytes: int, state: Path | None = None, shared: Path | None = None) -> dict:
    """What --next prints: command, carry list, input size, and the problems that stop the job; for a job on a
    host-prepared file, also the command that prepares it here first."""
    carry = carried_files(job, state, shared)
    total = input_bytes(job, tree_bytes, state, shared)
    host = HOST_DATA.get(job.dataset)
    problems = [f"{p}: missing" for name, p in carry.items() if not p.exists() and not (host and name == host.path)]
    if host is not None:
        problems += [p for p in [host_data_problem(host, shared)] if p]
    if total > INPUT_LIMIT:
        problems.append(f"input {total / MiB:.1f} MiB > {INPUT_LIMIT / MiB:.0f} MiB (working tree "
                        f"{tree_bytes / MiB:.1f} MiB + carried {(total - tree_bytes) / MiB:.1f} MiB)")
    shared = shared or SHARED_DATA
    out = {"job": job.name, "title": job.title, "command": device_command(job),
           "carry": sorted(carry),
           "input_mib": round(total / MiB, 1), "problems": problems,
           "setup": f"ln -sfn {shared} {REPO / DATA_LINK}  # once: the link the carried data paths go through"}
    if host is not None:
        out["prepare"] = (f"{host_prepare_command(host, shared)}  # here, before sending: the job carries "
                          f"{host.path}, {host.what} {host.how}")
    return out


# --------------------------------------------------------------------------------------- the device side
def prepare_data(job: Job, work: Path, prepared: Path | None) -> Path:
    """The job's prepared file: `prepared` if given, the carried host-prepared file (used as it is), else made
    from the carried archive (cached in `work`)."""
    if prepared is not None:
        return prepared
    if job.dataset in HOST_DATA:
        host = HOST_DATA[job.dataset]
        if not (REPO / host.path).exists():
            raise SystemExit(f"{host.path}: missing; the job carries it from the host, where "
                             "`python -m benchmarks.gpu.queue --next` prints the command that prepares it")
        problem = host_data_problem(host)  # a file prepared otherwise: its report would misstate the data
        if problem:
            raise SystemExit(problem)
        return REPO / host.path
    archive, args = DATASETS[job.dataset]
    out = work / "data" / f"{job.dataset}.h5"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        run([sys.executable, "-m", "cli", "prepare", "imagefolder", str(archive_path(archive)), "--out", str(out),
             *args, "--workers", str(min(16, os.cpu_count() or 1))])
    return out


def archive_path(archive: str) -> Path:
    """Where a job's data archive is: carried to DATA_LINK/ in the repository copy (on the device), else in
    ../shared/data (here, where DATA_LINK is a link to it or absent)."""
    carried = REPO / DATA_LINK / archive
    return carried if carried.exists() else SHARED_DATA / archive


def run(cmd: list[str], timeout: float | None = None, stop_at_rows: int | None = None,
        metrics: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run `cmd` (with `env` added to the environment); on timeout (or once `metrics` holds `stop_at_rows` epoch
    rows) interrupt it: 'stopped'."""
    print("+", shlex.join(cmd), flush=True)
    env = dict(os.environ, **(env or {}), PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    start = time.monotonic()
    while proc.poll() is None:
        time.sleep(0.2)
        over = timeout is not None and time.monotonic() - start > timeout
        enough = stop_at_rows is not None and _rows(metrics) >= stop_at_rows
        if over or enough:
            proc.send_signal(signal.SIGINT)  # KeyboardInterrupt: the run's finally blocks close its files
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return "stopped"
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd[:5])} ... exited {proc.returncode}")
    return "finished"


def _all_epochs_done(run_dir: Path) -> bool:
    """True when the run's last.pt holds every epoch its config asks for."""
    if not (run_dir / "last.pt").exists():
        return False
    from crossmodal.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run_dir / "last.pt")
    return int(ckpt["epoch"]) >= int(ckpt["config"]["optim"]["epochs"])


def _rows(metrics: Path | None) -> int:
    """Epoch rows in a metrics.csv (0 when absent)."""
    if metrics is None or not metrics.exists():
        return 0
    return max(0, len(metrics.read_text().splitlines()) - 1)


def run_job(job: Job, out: Path, state: Path | None = None, prepared: Path | None = None, device: str = "cuda",
            budget_s: float = TRAIN_BUDGET_S, stop_after_epochs: int | None = None, overrides=()) -> dict:
    """Run (or continue) `job`; write its record, results and returned files into `out`; return the record.

    What the job makes goes under `state` (training, teacher and probe runs, their logs and feature caches,
    prepared data, scratch) or `out`, not into the repository: the commands run with the repository as their
    working folder, so each is given its output folders, and a dry run passes a temporary `state`. (A group-b job's
    benchmarks.teachers prepares a missing data file into data/, and on the device exports into teachers/.)"""
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    state = state or STATE
    record = {"job": job.name, "title": job.title, "device": device_line(device), "status": "partial"}
    if job.kind in SCRIPTS:
        module, stem, needs_work = SCRIPTS[job.kind]
        raw = out / job.kind  # the script's own files, folded into the job's record and markdown below
        work = state / job.kind  # its synthetic data and runs (else a folder under the system's temporary one)
        args = ["--out-dir", str(raw)] + (["--device", "cpu", "--quick"] if device == "cpu" else [])
        if needs_work:
            work.mkdir(parents=True, exist_ok=True)
            args += ["--work", str(work)]
        run([sys.executable, "-m", module, *args])
        record.update(status="done", results=json.loads((raw / f"{stem}.json").read_text()),
                      markdown=(raw / f"{stem}.md").read_text())
        shutil.rmtree(raw)
        shutil.rmtree(work, ignore_errors=True)
        return _finish(job, out, record, started)
    if job.kind == "decode":
        data = prepare_data(job, state, prepared)
        if job.dataset in HOST_DATA:
            record["data"] = host_data_note(HOST_DATA[job.dataset], data)
        raw = out / "loader_throughput_encoded_gpu.md"
        run([sys.executable, "benchmarks/loader_throughput.py", "--encoded", "--h5", str(data), "--decode-device",
             device, "--out", str(raw), *(["--batches", "3"] if device == "cpu" else [])])
        record.update(status="done", markdown=raw.read_text())
        raw.unlink()
        return _finish(job, out, record, started)
    if job.group == "b":
        return _run_benchmark_teacher(job, out, record, started, device, budget_s, state)
    runs = state / "runs"
    run_dir = runs / job.name
    _restore_resume_parts(job, state, run_dir)
    data = prepare_data(job, state, prepared)
    if job.dataset in HOST_DATA:
        record["data"] = host_data_note(HOST_DATA[job.dataset], data)
    cmd = [sys.executable, "-m", "cli", job.kind, job.config, "--name", job.name, "--out-dir", str(runs),
           "--seed", str(job.seed), "--set", f"data.path={data}", *job.extra]
    cmd += GPU_ENGINE if device == "cuda" else ["--set", "engine.device=cpu", "--set", "engine.progress=false"]
    if job.teacher_job:
        committed = REPO / "teachers" / (job.teacher_job[8:] + ".pt")
        teacher = committed if _committed_b_teacher(job) else teacher_file(job.teacher_job, state)
        cmd += ["--set", f"teachers.0.checkpoint={teacher}"]
    cmd += list(overrides)
    done_before = 0
    if (run_dir / "last.pt").exists():
        cmd.append("--resume")
        from crossmodal.engine.checkpoint import load_checkpoint

        done_before = int(load_checkpoint(run_dir / "last.pt")["epoch"])
    stop_at = None if stop_after_epochs is None else done_before + stop_after_epochs
    how = run(cmd, timeout=budget_s, stop_at_rows=stop_at, metrics=run_dir / "metrics.csv")
    if how == "stopped" and _all_epochs_done(run_dir):
        # Stopped between its last checkpoint and its summary: resuming trains nothing and writes the summary.
        how = run(cmd + ([] if "--resume" in cmd else ["--resume"]))
    summary = run_dir / "summary.json"
    if how == "finished" and summary.exists():
        record.update(status="done", summary=json.loads(summary.read_text()))
        if job.is_teacher:
            record["teacher"] = _return_teacher(job, run_dir, out, data, device)
        if job.probe:
            record["probe"] = _probe(run_dir, data, out, state)
    else:
        record["epochs_done"] = _rows(run_dir / "metrics.csv")
        carried = sum(p.stat().st_size for p in carried_files(job, state).values() if p.exists())
        resumed = sum(p.stat().st_size for p in (state / "resume" / job.name).glob("last.pt.part*"))
        room = INPUT_LIMIT - working_tree_bytes() - (carried - resumed)  # what the next slot could carry
        record["returned_state"] = _return_state(run_dir, out, room)
    if (run_dir / "metrics.csv").exists():
        shutil.copy(run_dir / "metrics.csv", out / f"gpu_{job.name}_metrics.csv")
    return _finish(job, out, record, started)


def host_data_note(host: HostData, data: Path) -> str:
    """What the job's report says about a host-prepared file, from the file's own provenance."""
    arguments = _provenance(data)["arguments"]
    sampling = sampling_name(arguments.get("jpeg_subsampling", "420"))  # files from before the option: OpenCV's 4:2:0
    how = (f"re-encoded at JPEG quality {arguments.get('jpeg_quality')} (OpenCV, {sampling} chroma)"
           if arguments.get("reencode") else "kept as the source's bytes")
    splits = f", --only-splits {host.only_splits}" if host.only_splits else ""
    return (f"{host.what} prepared on the host from {host.archive} (`--encoding jpeg{splits}`), its JPEGs {how} to "
            f"fit the device tool's {INPUT_LIMIT // MiB} MiB input limit ({data.stat().st_size / MiB:.1f} MiB "
            f"carried); the CPU benchmark reads the original bytes")


def _run_benchmark_teacher(job: Job, out: Path, record: dict, started: float, device: str, budget_s: float,
                           state: Path) -> dict:
    """Group b: `python -m benchmarks.teachers --only NAME` on the device, the same command the CPU runs (its run,
    log and --quick record folders under `state`/runs: --runs), so the teacher comes back as teachers/NAME.pt
    with its teachers.json record (sha256, test top-1, command, time, machine); stopped at the budget, its run
    comes back as a benchmarks.partial copy that the next slot resumes from the committed tree. A CPU dry run
    uses --quick, which exports nothing."""
    from benchmarks import partial, teachers
    from benchmarks.common import SHARED_DATA_ENV

    name = job.name[len("teacher_"):]
    runs = state / "runs"
    cmd = [sys.executable, "-m", "benchmarks.teachers", "--only", name, "--device", device, "--runs", str(runs)]
    if device == "cpu":
        cmd.append("--quick")
    # benchmarks.common reads the archives from ../shared/data, which a GPU machine does not have: point it at the
    # folder that holds the archive this job carried
    how = run(cmd, timeout=budget_s, env={SHARED_DATA_ENV: str(archive_path(DATASETS[job.dataset][0]).parent)})
    if device == "cpu":
        record.update(status="dry run", note="benchmarks.teachers --quick: nothing exported")
    elif how == "finished":
        rec = teachers.load_records()[name]
        shutil.copy(REPO / rec["file"], out / f"teacher_{name}.pt")
        (out / f"teacher_{name}.json").write_text(json.dumps({name: rec}, indent=1) + "\n")
        record.update(status="done", teacher=rec)
    else:
        saved = out / "partial"
        partial.save(runs, saved)
        run_dir = saved / "teachers" / name
        for item in sorted(run_dir.iterdir()) if run_dir.exists() else []:
            shutil.move(str(item), out / f"partial_{name}_{item.name}")
        shutil.rmtree(saved, ignore_errors=True)
        record["epochs_done"] = partial.epochs_done(runs / "teachers" / name)
    return _finish(job, out, record, started)


def _finish(job: Job, out: Path, record: dict, started: float) -> dict:
    record["job_seconds"] = round(time.monotonic() - started, 1)
    record["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    markdown = _markdown(job, record)
    record.pop("markdown", None)
    (out / f"gpu_{job.name}.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / f"gpu_{job.name}.md").write_text(markdown)
    files = [p for p in out.rglob("*") if p.is_file()]
    if len(files) > MAX_FILES or any(p.stat().st_size > FILE_LIMIT for p in files):
        raise SystemExit(f"{job.name}: {len(files)} files to return, the limit is {MAX_FILES} of "
                         f"{FILE_LIMIT // MiB} MiB: {[p.name for p in files]}")
    print(f"{job.name}: {record['status']} in {record['job_seconds']:.0f} s", flush=True)
    return record


def _markdown(job: Job, record: dict) -> str:
    if "markdown" in record:  # a benchmark that writes its own report
        data = f"\nData carried: {record['data']}.\n" if "data" in record else ""
        return (record["markdown"] + data
                + f"\nQueue job `{job.name}` ({record['status']}), {record['job_seconds']:.0f} s.\n")
    lines = [f"# GPU queue: {job.title}", "", f"Job `{job.name}` ({record['status']}), {record['date']}, "
             f"{record['job_seconds']:.0f} s. Device: {record['device']}.", "",
             f"Command (device): `{device_command(job)}`", ""]
    if "data" in record:
        lines += [f"Data: {record['data']}.", ""]
    summary = record.get("summary")
    if summary:
        lines.append(f"Final test top-1 {summary.get('final_test_top1')}, best {summary.get('best_test_top1')} "
                     f"(epoch {summary.get('best_epoch')}), {summary.get('epochs')} epochs, "
                     f"{summary.get('train_time_s', 0):.0f} s of training.")
    for key in ("teacher", "probe", "results", "epochs_done", "returned_state"):
        if key in record:
            lines.append(f"- {key}: `{json.dumps(record[key])[:600]}`")
    return "\n".join(lines) + "\n"


def _split(path: Path, out: Path, stem: str) -> list[str]:
    """Copy `path` into `out` as parts of at most PART_SIZE bytes: stem.part00, stem.part01, ..."""
    names = []
    with open(path, "rb") as f:
        for i, chunk in enumerate(iter(lambda: f.read(PART_SIZE), b"")):
            name = f"{stem}.part{i:02d}"
            (out / name).write_bytes(chunk)
            names.append(name)
    return names


def _join(parts: list[Path], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as f:
        for part in sorted(parts):
            f.write(part.read_bytes())


def _restore_resume_parts(job: Job, state: Path, run_dir: Path) -> None:
    """A partial run's last.pt carried from an earlier slot, unless this machine still has the run folder."""
    parts = sorted((state / "resume" / job.name).glob("last.pt.part*"))
    if parts and not (run_dir / "last.pt").exists():
        _join(parts, run_dir / "last.pt")


def _return_state(run_dir: Path, out: Path, room: int) -> str:
    """Return a partial run's last.pt in parts when the next slot can carry it (`room` bytes beside its other
    inputs) and the parts leave 3 files for the record; else it stays in the device's run folder only."""
    last = run_dir / "last.pt"
    if not last.exists():
        return "none (no epoch finished)"
    size = last.stat().st_size
    if size > room or -(-size // PART_SIZE) > MAX_FILES - 3:
        return (f"kept on the device only: {size / MiB:.0f} MiB does not fit the {max(room, 0) / MiB:.0f} MiB "
                "the next slot can carry (a warm machine resumes it from its run folder)")
    return ", ".join(_split(last, out, "last.pt"))


def _return_teacher(job: Job, run_dir: Path, out: Path, data: Path, device: str) -> dict:
    """The finished teacher's weights, float32 when they fit beside the data in a student's input, else float16."""
    from crossmodal.engine.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(run_dir / "last.pt")
    weights = {k: ckpt[k] for k in ("format", "version", "crossmodal_version", "epoch", "model", "meta",
                                    "task_meta", "config")}
    weights["metrics"] = ckpt["metrics"]
    room = INPUT_LIMIT - working_tree_bytes() - 40 * MiB  # the students carry the data archive (<= 40 MiB) too
    size = sum(t.numel() * t.element_size() for t in weights["model"].values())
    info = {"float32_mib": round(size / MiB, 1), "dtype": "float32"}
    if size > room:
        weights["model"] = {k: v.half() if v.is_floating_point() else v for k, v in weights["model"].items()}
        weights["weights_rounded_to"] = "float16"
        info["dtype"] = "float16"
    target = out / "teacher.pt"
    save_checkpoint(target, weights)
    if target.stat().st_size > FILE_LIMIT:
        info["parts"] = _split(target, out, "teacher.pt")
        target.unlink()
    info["test_top1_float32"] = ckpt["metrics"][-1].get("test_top1")
    if info["dtype"] == "float16":
        info["test_top1_float16"] = _test_top1(weights, data, device)
    return info


def _test_top1(weights: dict, data: Path, device: str) -> float:
    """Test top-1 of a (float16-rounded) teacher, evaluated in float32."""
    import torch

    from crossmodal.data.dataset import PreparedDataset
    from crossmodal.models import build_model

    meta = weights["meta"]
    model = build_model(meta["arch"], in_chans=meta["in_chans"], num_classes=meta["num_classes"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights["model"].items()})
    model.to(device).eval()
    test = PreparedDataset(data, "test", [meta["modality"]], preload=True)
    hits = 0
    with torch.no_grad():
        for first in range(0, len(test), 500):
            batch = [test[i] for i in range(first, min(first + 500, len(test)))]
            x = torch.stack([s[meta["modality"]] for s in batch]).to(device)
            y = torch.stack([s["label"] for s in batch]).to(device)
            hits += int((model(x)["logits"].argmax(1) == y).sum())
    return 100.0 * hits / len(test)


def _probe(run_dir: Path, data: Path, out: Path, state: Path) -> str:
    """Linear probe of the ab student against a random init (the README's probe command). Its probe folder and
    feature cache go under `state`/probe (the probe's default, runs/probe, is in the repository), replaced by a
    rerun of the job."""
    report = out / "probe"
    run([sys.executable, "-m", "cli", "probe", "linear", "--checkpoint", str(run_dir / "last.pt"), "--data",
         str(data), "--modality", "ab", "--random-init", "--report", str(report), "--out-dir", str(state / "probe"),
         "--force"])
    text = "\n".join(p.read_text() for p in sorted(report.glob("*.md")))
    shutil.rmtree(report)
    return text[:2000]


# ---------------------------------------------------------------------------------------------- back here
def collect(job: Job, folder: Path, results: Path | None = None, state: Path | None = None) -> list[Path]:
    """File what a device call returned: record, markdown and metrics into results/, teacher and state into state/."""
    results, state = results or RESULTS, state or STATE
    written = _collect_benchmark_teacher(job, folder) if job.group == "b" else []
    for name in (f"gpu_{job.name}.json", f"gpu_{job.name}.md", f"gpu_{job.name}_metrics.csv"):
        if (folder / name).exists():
            results.mkdir(parents=True, exist_ok=True)
            shutil.copy(folder / name, results / name)
            written.append(results / name)
    teacher_parts = sorted(folder.glob("teacher.pt.part*"))
    if (folder / "teacher.pt").exists() or teacher_parts:
        target = teacher_file(job.name, state)
        _join(teacher_parts or [folder / "teacher.pt"], target)
        written.append(target)
    resume = state / "resume" / job.name
    state_parts = sorted(folder.glob("last.pt.part*"))
    if state_parts or job_record(job, results).get("status") == "done":
        shutil.rmtree(resume, ignore_errors=True)
    if state_parts:
        resume.mkdir(parents=True)
        for part in state_parts:
            shutil.copy(part, resume / part.name)
            written.append(resume / part.name)
    return written


def _collect_benchmark_teacher(job: Job, folder: Path) -> list[Path]:
    """A returned group-b teacher into teachers/ (its record merged into teachers.json), or its partial run into
    benchmarks/partial/teachers/ (committed, so the next slot continues it)."""
    from benchmarks import partial, teachers

    name = job.name[len("teacher_"):]
    written = []
    if (folder / f"teacher_{name}.pt").exists():
        rec = json.loads((folder / f"teacher_{name}.json").read_text())[name]
        target = REPO / rec["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / f"teacher_{name}.pt", target)
        records = teachers.load_records()
        records[name] = rec
        teachers.write_records(records)
        shutil.rmtree(partial.PARTIAL / "teachers" / name, ignore_errors=True)
        written += [target, teachers.RECORDS]
    pieces = sorted(folder.glob(f"partial_{name}_*"))
    if pieces:
        dest = partial.PARTIAL / "teachers" / name
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for piece in pieces:
            shutil.copy(piece, dest / piece.name[len(f"partial_{name}_"):])
            written.append(dest / piece.name[len(f"partial_{name}_"):])
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--list", action="store_true")
    action.add_argument("--next", action="store_true")
    action.add_argument("--dry-run", action="store_true", help="--next, then run that job here (CPU, --tiny budget)")
    action.add_argument("--run", metavar="JOB")
    action.add_argument("--collect", nargs=2, metavar=("JOB", "FOLDER"))
    parser.add_argument("--out", type=Path, help="--run: where returned files go ($OUT)")
    parser.add_argument("--tiny", action="store_true", help="--dry-run: 1 epoch of 2 steps per part, batch 16")
    args = parser.parse_args(argv)
    jobs = build_jobs()
    by_name = {j.name: j for j in jobs}
    if args.list:
        for job in jobs:
            print(f"{job.group}  {status(job):8}  {job.name:42} {job.title}")
        return 0
    if args.run or args.collect:
        name = args.run or args.collect[0]
        if name not in by_name:
            raise SystemExit(f"--run/--collect: no job {name!r}; `--list` shows the queue")
        if args.collect:
            for path in collect(by_name[name], Path(args.collect[1])):
                print("wrote", path)
            return 0
        if args.out is None:
            raise SystemExit("--run needs --out DIR ($OUT on the device)")
        run_job(by_name[name], args.out)
        return 0
    job = next_job(jobs)
    if job is None:
        print("the queue is done")
        return 0
    print(json.dumps(plan(job, working_tree_bytes()), indent=1))
    if args.dry_run:
        import tempfile

        tiny = ["--set", "optim.epochs=1", "--set", "engine.max_steps_per_epoch=2", "--set", "optim.batch_size=16"] \
            if args.tiny else []
        with tempfile.TemporaryDirectory() as tmp:
            prepared, host = None, HOST_DATA.get(job.dataset)
            if host is not None and host_data_problem(host):  # not prepared here yet: the dry run makes its own
                prepared = Path(tmp) / Path(host.path).name
                run([sys.executable, "-m", "cli", *host_prepare_argv(host, prepared)[1:]])
            record = run_job(job, Path(tmp) / "out", state=Path(tmp) / "state", prepared=prepared, device="cpu",
                             overrides=tiny)
            print(json.dumps({k: record[k] for k in ("job", "status", "job_seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
