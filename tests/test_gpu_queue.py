"""The GPU queue (benchmarks.gpu.queue): order, states, input limits, and a run continued over slots on the CPU."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import make_prepared  # noqa: E402

from benchmarks import teachers  # noqa: E402
from benchmarks.gpu import queue  # noqa: E402
from crossmodal.config import load_config  # noqa: E402
from crossmodal.engine import load_checkpoint  # noqa: E402
from crossmodal.tasks.teach import TeachConfig, run_teach  # noqa: E402

MiB = 2**20


def sparse(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes no disk space."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_queue_order_follows_the_issue_and_students_wait_for_their_teacher(tmp_path, monkeypatch):
    monkeypatch.setattr(queue, "committed_teacher", lambda job: None)  # as if teachers/ held none
    monkeypatch.setattr(queue, "_committed_b_teacher", lambda job: False)
    jobs = queue.build_jobs()
    names = [j.name for j in jobs]
    assert [j.group for j in jobs] == sorted(j.group for j in jobs)  # a, then b, then c, then d
    # the open issue's measurement first: benchmarks.budget's 240-pass point, labels only then CRD
    budget = ["budget_cifar10_240ep_vanilla_s0", "budget_cifar10_240ep_crd_s0"]
    assert names[:5] == [*budget, "speed", "gpu_decode", "profile_crd"] and names[-1] == "L_to_ab_imagenette"
    assert [n for n in names if n.startswith("budget_")] == budget
    crd = next(j for j in jobs if j.name == budget[1])
    assert crd.teacher_job == "teacher_cifar10_resnet20" and crd.extra == ["--set", "optim.epochs=240"]
    t1 = [n for n in names if n.startswith("t1_")]
    assert t1[:5] == ["t1_vgg13_teacher_s0", "t1_vgg13_vgg8_vanilla_s0", "t1_vgg13_vgg8_kd_s0",
                      "t1_vgg13_vgg8_crd_s0", "t1_vgg13_vgg8_crd_kd_s0"]
    assert t1.index("t1_wrn_40_2_teacher_s0") < t1.index("t1_resnet32x4_teacher_s0") < t1.index("t1_vgg13_teacher_s1")
    assert all(Path(queue.REPO, j.config).exists() for j in jobs if j.config)
    benchmark_teachers = [j.name for j in jobs if j.group == "b"]
    assert benchmark_teachers == [f"teacher_{name}" for name in teachers.TEACHERS]  # every benchmark teacher

    results, state = tmp_path / "results", tmp_path / "state"
    assert queue.next_job(jobs, results, state).name == budget[0]
    results.mkdir()
    assert queue.status(crd, results, state) == "waiting"  # the CIFAR-10 teacher is neither committed nor here
    (results / f"gpu_{budget[0]}.json").write_text(json.dumps({"status": "done"}))
    assert queue.next_job(jobs, results, state).name == "speed"  # CRD waits for its teacher: the next job runs
    for name in ("speed", "gpu_decode", "profile_crd", *benchmark_teachers, "t1_vgg13_teacher_s0",
                 "t1_vgg13_vgg8_vanilla_s0"):
        (results / f"gpu_{name}.json").write_text(json.dumps({"status": "done"}))
    kd = next(j for j in jobs if j.name == "t1_vgg13_vgg8_kd_s0")
    assert queue.status(kd, results, state) == "waiting"  # its teacher's weights are not here
    assert queue.next_job(jobs, results, state).name == "t1_wrn_40_2_teacher_s0"  # the next runnable job
    (results / "gpu_t1_resnet32x4_teacher_s0.json").write_text(json.dumps({"status": "partial"}))
    assert queue.next_job(jobs, results, state).name == "t1_wrn_40_2_teacher_s0"  # queue order: before the partial
    (results / "gpu_t1_wrn_40_2_teacher_s0.json").write_text(json.dumps({"status": "partial"}))
    # a partial job goes before every job after it: the vgg13 students, ready once their teacher is here, wait
    sparse(queue.teacher_file("t1_vgg13_teacher_s0", state), 1000)
    assert queue.status(kd, results, state) == "ready"
    assert queue.next_job(jobs, results, state).name == "t1_vgg13_vgg8_kd_s0"  # ... unless they come first
    for name in ("kd", "crd", "crd_kd"):
        (results / f"gpu_t1_vgg13_vgg8_{name}_s0.json").write_text(json.dumps({"status": "done"}))
    assert queue.next_job(jobs, results, state).name == "t1_wrn_40_2_teacher_s0"
    (results / "gpu_t1_wrn_40_2_teacher_s0.json").write_text(json.dumps({"status": "done"}))
    assert queue.next_job(jobs, results, state).name == "t1_wrn_40_2_wrn_16_2_vanilla_s0"
    sparse(queue.teacher_file("teacher_cifar10_resnet20", state), 1000)  # the CIFAR-10 teacher arrives
    assert queue.status(crd, results, state) == "ready" and queue.next_job(jobs, results, state) is crd
    (results / f"gpu_{budget[1]}.json").write_text(json.dumps({"status": "partial"}))
    assert queue.status(crd, results, state) == "partial" and queue.next_job(jobs, results, state) is crd


def test_inputs_are_counted_and_a_job_over_64_mib_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(queue, "_committed_b_teacher", lambda job: False)
    shared, state = tmp_path / "shared", tmp_path / "state"
    sparse(shared / "tinyimagenet100-32.tar.gz", 36 * MiB)
    job = next(j for j in queue.build_jobs() if j.name == "t1_resnet32x4_resnet8x4_crd_kd_s0")
    sparse(queue.teacher_file("t1_resnet32x4_teacher_s0", state), 28 * MiB)  # float32 resnet32x4
    plan = queue.plan(job, tree_bytes=2 * MiB, state=state, shared=shared)
    assert plan["carry"] == [".gpu_data/tinyimagenet100-32.tar.gz", ".gpu_state/teachers/t1_resnet32x4_teacher_s0.pt"]
    assert plan["input_mib"] == 66.0
    assert plan["problems"] == ["input 66.0 MiB > 64 MiB (working tree 2.0 MiB + carried 64.0 MiB)"]
    sparse(queue.teacher_file("t1_resnet32x4_teacher_s0", state), 14 * MiB)  # rounded to float16
    assert queue.plan(job, tree_bytes=2 * MiB, state=state, shared=shared)["problems"] == []
    assert queue.working_tree_bytes() < 32 * MiB  # the repository leaves room for the data and a teacher
    # A partial run's state comes back only when the next slot can carry it beside its other inputs.
    run_dir, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    sparse(run_dir / "last.pt", 20 * MiB)
    assert queue._return_state(run_dir, out, room=19 * MiB).startswith("kept on the device only: 20 MiB")
    assert list(out.iterdir()) == []
    assert queue._return_state(run_dir, out, room=21 * MiB) == "last.pt.part00, last.pt.part01"
    assert sorted(p.stat().st_size for p in out.iterdir()) == [5 * MiB, 15 * MiB]


def _host_file(path: Path, size: int, **arguments) -> Path:
    """A stand-in for a host-prepared file: the provenance `prepare` writes, sparse-padded to `size` bytes."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    recorded = {"modalities": ["rgb", "L", "ab"], "encoding": "jpeg", "reencode": True, "jpeg_quality": 75,
                "jpeg_subsampling": "444", **arguments}
    recorded = {k: v for k, v in recorded.items() if v is not None}  # None: a file prepared without that key
    with h5py.File(path, "w") as f:
        f.attrs["provenance"] = json.dumps({"arguments": recorded})
    with open(path, "r+b") as f:
        f.truncate(size)  # HDF5 reads a file longer than the data it wrote
    return path


def test_the_imagenette_job_carries_a_file_prepared_here_that_fits_the_limit(tmp_path, monkeypatch):
    """Group d carries Imagenette-96 prepared here (JPEGs re-encoded at quality 75, 4:4:4: the student is the ab
    input, whose resolution 4:2:0 would halve), not the archive (57.8 MiB, over the limit beside the working tree):
    --next names the file and the command that makes it, and refuses the job while the file is missing or was
    prepared otherwise (another quality, 4:2:0, or before --subsampling existed). At the measured sizes of that file
    at 4:4:4 (q75 43,967,536 bytes; q80 55,183,712) the job's input stays at or under 60 MiB with q75 and not with
    q80, which is why q75."""
    monkeypatch.setattr(queue, "REPO", tmp_path)
    monkeypatch.setattr(queue, "_committed_b_teacher", lambda job: True)  # its L teacher is committed: in the tree
    shared = tmp_path / "shared"
    job = next(j for j in queue.build_jobs() if j.name == "L_to_ab_imagenette")
    tree = queue.working_tree_bytes(Path(__file__).resolve().parents[1])  # the real repository's
    path = tmp_path / "data" / "gpu" / "imagenette96_q75_444.h5"
    command = (f"mkdir -p {tmp_path}/data/gpu && crossmodal prepare imagefolder {shared}/imagenette2-96.tgz --out "
               f"{path} --modalities rgb,L,ab --encoding jpeg --reencode --quality 75 --subsampling 444")
    plan = queue.plan(job, tree, shared=shared)
    assert plan["carry"] == ["data/gpu/imagenette96_q75_444.h5"]  # no archive: nothing is prepared on the device
    assert plan["problems"] == [f"data/gpu/imagenette96_q75_444.h5: missing; prepare it here first: {command}"]
    assert plan["prepare"].startswith(command + "  # here, before sending")
    assert plan["prepare"].endswith("Imagenette-96 re-encoded at JPEG quality 75, 4:4:4")
    assert plan["input_mib"] == round(tree / MiB, 1)

    _host_file(path, 43_967_536)  # q75 4:4:4, as measured
    plan = queue.plan(job, tree, shared=shared)
    # q75 was chosen with the tree at 17.1 MiB to keep to 60 MiB; the tree grows with committed results, so what
    # must hold from here on is the limit the plan enforces (a tree that outgrows it makes the plan refuse the job)
    assert plan["problems"] == [] and plan["input_mib"] * MiB <= queue.INPUT_LIMIT
    assert plan["input_mib"] == round((tree + 43_967_536) / MiB, 1)
    _host_file(path, 55_183_712)  # what q80 4:4:4 would have made: over the 60 MiB the queue keeps to
    assert queue.plan(job, tree, shared=shared)["input_mib"] > 60

    _host_file(path, 2 * MiB, jpeg_quality=90)
    assert queue.plan(job, tree, shared=shared)["problems"] == [
        f"data/gpu/imagenette96_q75_444.h5: prepared with jpeg_quality 90, the job needs 75; prepare it again: "
        f"{command} --force"]
    _host_file(path, 2 * MiB, reencode=False)
    assert "prepared with reencode False, the job needs True" in queue.plan(job, tree, shared=shared)["problems"][0]
    _host_file(path, 2 * MiB, jpeg_subsampling="420")
    assert "prepared with jpeg_subsampling '420', the job needs '444'" in queue.plan(job, tree, shared=shared)[
        "problems"][0]
    _host_file(path, 2 * MiB, jpeg_subsampling=None)  # prepared before --subsampling existed (4:2:0)
    assert "prepared with jpeg_subsampling None, the job needs '444'" in queue.plan(job, tree, shared=shared)[
        "problems"][0]
    path.write_bytes(b"not hdf5")
    assert queue.plan(job, tree, shared=shared)["problems"][0].startswith(
        "data/gpu/imagenette96_q75_444.h5: not a prepared file (")
    # the teachers' jobs still carry their archives
    others = {j.name: j for j in queue.build_jobs()}
    assert list(queue.carried_files(others["teacher_cifar10_resnet20"], shared=shared)) == [
        ".gpu_data/cifar10.tar.gz"]
    assert "prepare" not in queue.plan(others["teacher_cifar10_resnet20"], tree, shared=shared)


def test_the_decode_job_carries_the_train_split_prepared_here_with_its_own_jpeg_bytes(tmp_path, monkeypatch):
    """The 224-px archive (52 MiB) does not fit beside the working tree, so the decode job carries its train split
    prepared here with the source's JPEG bytes (not re-encoded): --next prints that command, and refuses a file that
    was re-encoded or holds other splits. At the measured size of that file (44,553,600 bytes) the input fits."""
    monkeypatch.setattr(queue, "REPO", tmp_path)
    shared = tmp_path / "shared"
    job = next(j for j in queue.build_jobs() if j.name == "gpu_decode")
    tree = queue.working_tree_bytes(Path(__file__).resolve().parents[1])
    path = tmp_path / "data" / "gpu" / "imagenette224_train_orig.h5"
    command = (f"mkdir -p {tmp_path}/data/gpu && crossmodal prepare imagefolder {shared}/imagenette2-224-sub.tgz "
               f"--out {path} --modalities rgb,L,ab --encoding jpeg --only-splits train")
    plan = queue.plan(job, tree, shared=shared)
    assert plan["carry"] == ["data/gpu/imagenette224_train_orig.h5"]
    assert plan["problems"] == [f"data/gpu/imagenette224_train_orig.h5: missing; prepare it here first: {command}"]
    assert plan["prepare"].endswith("the 224-px Imagenette subset's train split with its JPEGs kept as the source's "
                                    "bytes")

    def prepared(size, counts, **arguments):
        _host_file(path, 2 * MiB, **{"modalities": ["rgb", "L", "ab"], "reencode": False, "jpeg_quality": None,
                                     "jpeg_subsampling": None, **arguments})
        import h5py

        with h5py.File(path, "r+") as f:
            f.attrs["provenance"] = json.dumps({**json.loads(f.attrs["provenance"]), "counts": counts})
        with open(path, "r+b") as f:
            f.truncate(size)
        return queue.plan(job, tree, shared=shared)

    plan = prepared(44_553_600, {"train": 4000})
    assert plan["problems"] == [] and plan["input_mib"] == round((tree + 44_553_600) / MiB, 1)
    assert plan["input_mib"] * MiB <= queue.INPUT_LIMIT
    assert prepared(2 * MiB, {"train": 4000, "test": 1500})["problems"] == [
        f"data/gpu/imagenette224_train_orig.h5: holds the splits test, train, the job needs only train; prepare it "
        f"again: {command} --force"]
    assert prepared(2 * MiB, {})["problems"][0].startswith(
        "data/gpu/imagenette224_train_orig.h5: holds the splits none, the job needs only train;")
    assert prepared(2 * MiB, {"train": 4000}, reencode=True)["problems"] == [
        f"data/gpu/imagenette224_train_orig.h5: prepared with reencode True, the job needs False; prepare it again: "
        f"{command} --force"]


def test_the_printed_prepare_command_makes_a_file_the_plan_accepts(tmp_path, monkeypatch):
    """The `prepare` line of --next, run as printed (on the 300-image mini archive standing in for the full one),
    makes the file the job's plan then accepts (~1 s)."""
    import subprocess

    mini = queue.SHARED_DATA / "imagenette2-96-mini.tgz"
    if not mini.exists():
        pytest.skip(f"{mini} is absent (../shared/data not beside the repository)")
    monkeypatch.setattr(queue, "REPO", tmp_path)
    monkeypatch.setattr(queue, "_committed_b_teacher", lambda job: True)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "imagenette2-96.tgz").symlink_to(mini)
    job = next(j for j in queue.build_jobs() if j.name == "L_to_ab_imagenette")
    plan = queue.plan(job, 0, shared=shared)
    assert len(plan["problems"]) == 1 and "missing" in plan["problems"][0]
    subprocess.run(plan["prepare"], shell=True, check=True, capture_output=True)
    plan = queue.plan(job, 0, shared=shared)
    assert plan["problems"] == [] and plan["carry"] == ["data/gpu/imagenette96_q75_444.h5"]
    assert 0 < plan["input_mib"] < 2  # 300 images at q75 4:4:4: 1.0 MiB


def test_the_imagenette_job_runs_on_the_carried_file_and_its_report_says_how_it_was_made(tmp_path, monkeypatch):
    """On the device, run_job trains and probes on the carried file as it is (no `prepare` runs) and the report
    states the re-encoding; without the file, or with one prepared otherwise, it stops with one line naming it."""
    monkeypatch.setattr(queue, "REPO", tmp_path)
    monkeypatch.setattr(queue, "_committed_b_teacher", lambda job: True)
    job = next(j for j in queue.build_jobs() if j.name == "L_to_ab_imagenette")
    commands = []

    def fake_run(cmd, timeout=None, stop_at_rows=None, metrics=None):  # the commands, not the training
        commands.append(cmd)
        if cmd[3] == "distill":
            run_dir = Path(cmd[cmd.index("--out-dir") + 1]) / job.name
            run_dir.mkdir(parents=True)
            (run_dir / "summary.json").write_text(json.dumps({"final_test_top1": 50.0}))
            (run_dir / "metrics.csv").write_text("epoch\n1\n")
        elif cmd[3] == "probe":
            report = Path(cmd[cmd.index("--report") + 1])
            report.mkdir(parents=True)
            (report / "probe.md").write_text("| ab | 40.0 |")
        return "finished"

    monkeypatch.setattr(queue, "run", fake_run)
    with pytest.raises(SystemExit, match=r"^data/gpu/imagenette96_q75_444.h5: missing; the job carries it from the"):
        queue.run_job(job, tmp_path / "out0", state=tmp_path / "state", device="cpu")
    data = _host_file(tmp_path / "data" / "gpu" / "imagenette96_q75_444.h5", 3 * MiB, jpeg_quality=90)
    with pytest.raises(SystemExit, match=r"^data/gpu/imagenette96_q75_444.h5: prepared with jpeg_quality 90, the"):
        queue.run_job(job, tmp_path / "out0", state=tmp_path / "state", device="cpu")
    assert commands == []
    _host_file(data, 3 * MiB)
    record = queue.run_job(job, tmp_path / "out", state=tmp_path / "state", device="cpu")
    assert [c[3] for c in commands] == ["distill", "probe"]  # nothing prepared
    assert f"data.path={data}" in commands[0] and commands[1][commands[1].index("--data") + 1] == str(data)
    assert record["status"] == "done" and "re-encoded at JPEG quality 75 (OpenCV, 4:4:4 chroma)" in record["data"]
    report = (tmp_path / "out" / "gpu_L_to_ab_imagenette.md").read_text()
    assert ("Data: Imagenette-96 prepared on the host from imagenette2-96.tgz (`--encoding jpeg`), its JPEGs "
            "re-encoded at JPEG quality 75 (OpenCV, 4:4:4 chroma) to fit the device tool's 64 MiB input limit "
            "(3.0 MiB carried); the CPU benchmark reads the original bytes.") in report


def _teach_config(tmp_path: Path, data: Path) -> Path:
    cfg = {"data": {"path": str(data), "augment": {"crop": 16, "padding": 2, "hflip": True}},
           "model": {"arch": "resnet8", "modality": "rgb"},
           "optim": {"lr": 0.05, "batch_size": 16, "epochs": 2, "schedule": "step", "milestones": [1]},
           "engine": {"device": "cpu", "progress": False, "log_every": 1000}}
    path = tmp_path / "tiny_teacher.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _runs_listing() -> set[str]:
    """What the repository's runs/ holds at its top and in the folders a stray job output would land in (a probe's
    default out-dir, runs/probe, and --quick's runs/quick)."""
    runs = queue.REPO / "runs"
    return {str(p.relative_to(runs)) for folder in (runs, runs / "probe", runs / "quick") if folder.is_dir()
            for p in folder.iterdir()}


def test_a_job_writes_its_runs_probe_and_cache_under_its_state_folder_not_into_the_repository(tmp_path, monkeypatch):
    """run_job as a dry run calls it, on a tiny group-d-style job (an L teacher job, then a CRD ab student of it
    with the linear probe, on synthetic 16-px data): every run, the probe folder and its feature cache are under
    the state folder, and the repository's runs/ gets no new entry (the probe once wrote runs/probe/ there: its
    default out-dir, relative to the working folder the queue's commands run in). ~40 s: three subprocesses."""
    data = make_prepared(tmp_path, splits={"train": 48, "test": 16}, modalities=("rgb", "L", "ab"), size=16)
    common = {"data": {"path": str(data), "augment": {"crop": 16, "padding": 2, "hflip": True}},
              "optim": {"lr": 0.05, "batch_size": 16, "epochs": 1},
              "engine": {"device": "cpu", "progress": False, "log_every": 1000}}
    teacher_cfg = tmp_path / "tiny_L_teacher.yaml"
    teacher_cfg.write_text(yaml.safe_dump({**common, "model": {"arch": "resnet8", "modality": "L"}}))
    student_cfg = tmp_path / "tiny_L_to_ab.yaml"
    student_cfg.write_text(yaml.safe_dump({
        **common, "teachers": [{"checkpoint": "set by the queue", "modality": "L"}],
        "student": {"arch": "resnet8", "modality": "ab"}, "losses": {"crd": 1.0},
        "loss_params": {"crd": {"feat_dim": 16, "nce_k": 16, "mode": "relax"}}}))
    teacher = queue.Job("tiny_L_teacher_s0", "c", "teach", "tiny L teacher", config=str(teacher_cfg))
    student = queue.Job("tiny_L_to_ab", "d", "distill", "tiny L -> ab: CRD student, linear probe",
                        config=str(student_cfg), teacher_job=teacher.name, probe=True)
    state = tmp_path / "state"
    # The job's commands run in the repository folder (their working folder, where a relative out-dir lands): here
    # an empty stand-in, so that a benchmark running beside the test cannot add entries to the listing.
    monkeypatch.setattr(queue, "REPO", tmp_path / "repo")
    (tmp_path / "repo" / "runs").mkdir(parents=True)
    before = _runs_listing()
    record = queue.run_job(teacher, tmp_path / "out_teacher", state=state, prepared=data, device="cpu")
    assert record["status"] == "done"
    queue.collect(teacher, tmp_path / "out_teacher", results=tmp_path / "results", state=state)
    assert queue.teacher_file(teacher.name, state).exists()
    record = queue.run_job(student, tmp_path / "out", state=state, prepared=data, device="cpu")
    assert record["status"] == "done" and "ab" in record["probe"]
    assert _runs_listing() - before == set()
    probes = [p for p in (state / "probe").iterdir() if p.is_dir()]
    assert (state / "runs" / student.name / "summary.json").exists() and (state / "probe" / "feature_cache").is_dir()
    assert any((p / "results.json").exists() for p in probes), probes
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "gpu_tiny_L_to_ab.json", "gpu_tiny_L_to_ab.md", "gpu_tiny_L_to_ab_metrics.csv"]


def test_a_benchmark_teacher_job_keeps_its_run_under_the_state_folder(tmp_path, monkeypatch):
    """Group b runs `benchmarks.teachers --runs STATE/runs`: the teacher's run (and its logs and --quick records)
    are under the state folder, and a run stopped at the budget comes back from there as benchmarks.partial parts;
    the repository's runs/ gets nothing (the command itself is checked, not the training)."""
    job = next(j for j in queue.build_jobs() if j.group == "b")
    name, state, commands = job.name[len("teacher_"):], tmp_path / "state", []

    def fake_run(cmd, timeout=None, stop_at_rows=None, metrics=None, env=None):  # a run stopped after two epochs
        commands.append(cmd)
        run_dir = Path(cmd[cmd.index("--runs") + 1]) / "teachers" / name
        run_dir.mkdir(parents=True)
        (run_dir / "last.pt").write_bytes(b"state")
        (run_dir / "metrics.csv").write_text("epoch\n1\n2\n")
        return "stopped"

    monkeypatch.setattr(queue, "run", fake_run)
    before = _runs_listing()
    record = queue.run_job(job, tmp_path / "out", state=state, device="cuda")
    assert commands[0][-2:] == ["--runs", str(state / "runs")] and "--quick" not in commands[0]
    assert record["epochs_done"] == 2 and record["status"] == "partial"
    assert (tmp_path / "out" / f"partial_{name}_last.pt").read_bytes() == b"state"
    assert not [entry for entry in _runs_listing() - before if name in entry]  # (a benchmark may run beside)


@pytest.mark.slow  # ~50 s: five training subprocesses
def test_a_run_continues_over_slots_and_ends_with_the_weights_of_one_run(tmp_path, monkeypatch):
    """Each slot stops the run after one more epoch; its last.pt comes back in parts, is filed here, and the next
    slot (a fresh machine: no run folder) resumes from it. The final weights equal an uninterrupted run's.

    The slots run in subprocesses and the uninterrupted run in this one, so both use the same number of intra-op
    threads: CPU kernels sum in a thread-dependent order, and another test module's torch.set_num_threads(1)
    against the subprocesses' default of one thread per core made the weights differ by rounding (it failed in
    a full-suite run, never alone, until the thread counts were pinned equal)."""
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    data = make_prepared(tmp_path, splits={"train": 128, "test": 16}, modalities=("rgb",), size=16)
    job = queue.Job("tiny_run_s0", "c", "teach", "tiny run", config=str(_teach_config(tmp_path, data)))
    cfg = load_config(job.config, TeachConfig, [f"data.path={data}", f"name={job.name}",
                                                   f"out_dir={tmp_path / 'straight'}"])
    run_teach(cfg)  # the uninterrupted run, in this process

    results, host_state = tmp_path / "results", tmp_path / "host_state"
    records = []
    for slot in range(4):
        device_state = tmp_path / f"device{slot}"  # a bare machine: only what the slot carries
        if (host_state / "resume").exists():
            shutil.copytree(host_state / "resume", device_state / "resume")
        out = tmp_path / f"out{slot}"
        record = queue.run_job(job, out, state=device_state, prepared=data, device="cpu", stop_after_epochs=1)
        records.append(record)
        returned = sorted(p.name for p in out.iterdir())
        assert len(returned) <= queue.MAX_FILES and all(p.stat().st_size <= queue.FILE_LIMIT for p in out.iterdir())
        queue.collect(job, out, results, host_state)
        if record["status"] == "done":
            break
        assert record["returned_state"].startswith("last.pt.part00") and "last.pt.part00" in returned
    assert [r["status"] for r in records][-1] == "done" and len(records) >= 2
    assert records[0]["epochs_done"] == 1 and records[0]["status"] == "partial"
    assert json.loads((results / "gpu_tiny_run_s0.json").read_text())["status"] == "done"
    assert not (host_state / "resume" / job.name).exists()  # a finished run leaves no state to carry
    a = load_checkpoint(tmp_path / "straight" / job.name / "last.pt")["model"]
    b = load_checkpoint(tmp_path / f"device{len(records) - 1}" / "runs" / job.name / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not queue.teacher_file(job.name, host_state).exists()  # only teacher jobs return weights


@pytest.mark.slow  # ~20 s: prepares 5,500 JPEGs and times five loaders
def test_the_decode_job_prepares_encoded_jpegs_and_times_the_device_decode_path(tmp_path):
    """The GPU decode job on the CPU (the same path, decode_jpeg on the CPU): it prepares the carried 224-px
    archive as JPEG rows and returns one report with the CPU loader's rows and the device-decode row."""
    job = next(j for j in queue.build_jobs() if j.name == "gpu_decode")
    host = queue.HOST_DATA[job.dataset]
    archive = queue.SHARED_DATA / host.archive
    if not archive.exists():
        pytest.skip(f"{archive} is absent (../shared/data not beside the repository)")
    # the host's prepare command as --next prints it, into tmp_path, run with this interpreter
    prepare = shlex.split(queue.host_prepare_command(host).split(" && ", 1)[1])
    data = tmp_path / Path(host.path).name
    prepare[prepare.index("--out") + 1] = str(data)
    subprocess.run([sys.executable, "-m", "cli", *prepare[1:]], cwd=queue.REPO, check=True, capture_output=True)
    record = queue.run_job(job, tmp_path / "out", state=tmp_path / "state", prepared=data, device="cpu")
    assert record["status"] == "done"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_gpu_decode.json", "gpu_gpu_decode.md"]
    report = (tmp_path / "out" / "gpu_gpu_decode.md").read_text()
    assert "data.decode cuda on cpu" in report and "RandomResizedCrop 224 + flip | train | 2 |" in report
    assert "train 4,000 images" in report and "| test |" not in report  # the train split only, as carried
    assert "(`--encoding jpeg, --only-splits train`), its JPEGs kept as the source's bytes to fit" in report


def test_the_profile_job_times_every_part_of_the_crd_loss_and_names_its_costliest_operators(tmp_path):
    """The CRD profile job on the CPU (--quick): one record with every part's wall and device time, the whole loss
    costing more than its scores alone, and the operators of the whole loss ranked by self time."""
    job = next(j for j in queue.build_jobs() if j.name == "profile_crd")
    record = queue.run_job(job, tmp_path / "out", state=tmp_path / "state", device="cpu")
    assert record["status"] == "done"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_profile_crd.json", "gpu_profile_crd.md"]
    assert not (tmp_path / "state" / "profile").exists()  # nothing left behind
    rows = {r["part"]: r for r in record["results"]["rows"]}
    assert len(rows) == 10 and all(r["wall_ms"] > 0 and r["device_ms"] > 0 for r in rows.values())
    whole = rows["whole CRD loss, forward + backward + update (default)"]
    assert whole["wall_ms"] > rows["scores against both memories, forward"]["wall_ms"]
    top = record["results"]["top_operators"]
    assert top and [t["ms_per_call"] for t in top] == sorted((t["ms_per_call"] for t in top), reverse=True)
    report = (tmp_path / "out" / "gpu_profile_crd.md").read_text()
    assert "| negatives: exact, without replacement (the default) |" in report
    assert "python -m benchmarks.gpu.profile_crd --device cpu --quick" in report


def test_next_prints_the_device_command_and_what_it_carries(capsys):
    assert queue.main(["--next"]) == 0
    printed = capsys.readouterr().out
    job = queue.next_job(queue.build_jobs())
    if job is None:
        assert "the queue is done" in printed
    else:
        plan = json.loads(printed)
        assert plan["command"] == f"PYTHONUNBUFFERED=1 python -m benchmarks.gpu.queue --run {job.name} --out $OUT"
        assert plan["input_mib"] * MiB <= queue.INPUT_LIMIT or plan["problems"]


def test_a_benchmark_teacher_job_reads_the_archive_it_carried(tmp_path, monkeypatch):
    """On a GPU machine the repository copy has no ../shared/data beside it: a group-b job points benchmarks.common at
    the archive it carried (DATA_LINK/ in the copy); where that is absent (a host without the link), at
    ../shared/data. The child process reads the folder from the environment."""
    from benchmarks.common import SHARED_DATA_ENV

    job = next(j for j in queue.build_jobs() if j.group == "b")
    seen = []
    monkeypatch.setattr(queue, "run", lambda cmd, timeout=None, env=None: seen.append(env) or "stopped")
    monkeypatch.setattr(queue, "REPO", tmp_path / "repo")
    queue.run_job(job, tmp_path / "out0", state=tmp_path / "state", device="cuda")
    assert seen[-1] == {SHARED_DATA_ENV: str(queue.SHARED_DATA)}
    sparse(tmp_path / "repo" / queue.DATA_LINK / queue.DATASETS[job.dataset][0], 10)  # what the device call carried
    queue.run_job(job, tmp_path / "out1", state=tmp_path / "state", device="cuda")
    assert seen[-1] == {SHARED_DATA_ENV: str(tmp_path / "repo" / queue.DATA_LINK)}
    script = "from benchmarks import common; print(common.SHARED)"
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           env=dict(os.environ, **seen[-1]), cwd=Path(__file__).resolve().parents[1])
    assert child.stdout.strip() == str(tmp_path / "repo" / queue.DATA_LINK)


def test_the_dry_run_runs_the_next_job_end_to_end_on_the_cpu(capsys, monkeypatch):
    """`--dry-run --tiny`: the job the next GPU slot gets runs here at a tiny budget and finishes, so a slot is
    not lost to a job that cannot start (~20-30 s). A job on a host-prepared file that is not made yet (a fresh
    checkout) runs on one the dry run prepares in its temporary folder with the printed command's arguments."""
    job = queue.next_job(queue.build_jobs())
    if job is None:
        pytest.skip("the queue is done: nothing left to dry-run")
    host = queue.HOST_DATA.get(job.dataset)
    if host is not None:
        if not (queue.SHARED_DATA / host.archive).exists():
            pytest.skip(f"{queue.SHARED_DATA / host.archive} is absent (../shared/data not beside the repository)")
        monkeypatch.setattr(queue, "host_data_problem", lambda host, shared=None: "missing")  # as on a fresh checkout
    assert queue.main(["--dry-run", "--tiny"]) == 0
    printed = capsys.readouterr().out
    last = json.loads(printed.strip().splitlines()[-1])
    assert last["job"] == job.name and last["status"] == "done"
    if host is not None:
        ran = [line for line in printed.splitlines() if line.startswith("+ ") and " prepare imagefolder " in line]
        assert len(ran) == 1 and str(queue.SHARED_DATA / host.archive) in ran[0]
        assert not shlex.split(ran[0])[shlex.split(ran[0]).index("--out") + 1].startswith(str(queue.REPO))


def test_a_returned_benchmark_teacher_is_filed_into_teachers_and_a_partial_run_into_benchmarks_partial(
        tmp_path, monkeypatch):
    from benchmarks import partial

    monkeypatch.setattr(teachers, "TEACHER_DIR", tmp_path / "teachers")
    monkeypatch.setattr(teachers, "RECORDS", tmp_path / "teachers" / "teachers.json")
    monkeypatch.setattr(queue, "REPO", tmp_path)
    monkeypatch.setattr(partial, "PARTIAL", tmp_path / "partial")
    job = next(j for j in queue.build_jobs() if j.name == "teacher_cifar10_resnet20")
    back = tmp_path / "back"
    back.mkdir()
    (back / "partial_cifar10_resnet20_last.pt").write_bytes(b"state")
    (back / "partial_cifar10_resnet20_metrics.csv").write_text("epoch\n1\n")
    queue.collect(job, back, results=tmp_path / "results", state=tmp_path / "state")
    assert (tmp_path / "partial" / "teachers" / "cifar10_resnet20" / "last.pt").read_bytes() == b"state"
    rec = {"file": "teachers/cifar10_resnet20.pt", "sha256": "ab" * 32, "size_bytes": 7, "arch": "resnet20",
           "modality": "rgb", "dataset": "cifar10", "test_top1": 90.0, "passes": 40, "train_time_s": 60.0,
           "device": "cuda", "machine": "H100", "used_by": "compression", "command": "python -m ..."}
    done = tmp_path / "done"
    done.mkdir()
    (done / "teacher_cifar10_resnet20.pt").write_bytes(b"weights")
    (done / "teacher_cifar10_resnet20.json").write_text(json.dumps({"cifar10_resnet20": rec}))
    queue.collect(job, done, results=tmp_path / "results", state=tmp_path / "state")
    assert (tmp_path / "teachers" / "cifar10_resnet20.pt").read_bytes() == b"weights"
    assert teachers.load_records()["cifar10_resnet20"]["test_top1"] == 90.0
    assert "cifar10_resnet20.pt" in (tmp_path / "teachers" / "README.md").read_text()
    assert not (tmp_path / "partial" / "teachers" / "cifar10_resnet20").exists()  # finished: the partial goes
