"""Every command fails closed: the fuzz table (tests/fuzz_cases.py), then signals, a full disk, locks and resumes.

A table case passes when the command exits with the case's status, prints exactly one `error:`
line naming what is wrong, no traceback, creates no file beyond the case's `new_files`, and
leaves every file that existed before unchanged. Commands run in-process (click's CliRunner);
only signal and disk-limit cases run a subprocess.
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.main import app
from conftest import make_prepared
from fuzz_cases import CASES, World, make_image_folder

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def snapshot(root: Path) -> dict[str, tuple]:
    """{relative path: (size, content digest)} of every file under root (folders as ('dir',))."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir():
            state[rel] = ("dir",)
        elif path.is_file():
            data = path.read_bytes()
            state[rel] = (len(data), hashlib.sha1(data).hexdigest())
        else:
            state[rel] = ("special",)
    return state


def teach_config(data: Path, out_dir: Path, **optim) -> dict:
    """A CPU teach config that trains resnet8 on `data` in a few steps."""
    return {"data": {"path": str(data)}, "model": {"arch": "resnet8", "modality": "rgb"},
            "optim": {"lr": 0.05, "batch_size": 8, "epochs": 1, "milestones": [1], **optim},
            "engine": {"device": "cpu", "progress": False, "max_steps_per_epoch": 2}, "out_dir": str(out_dir)}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    """The shared valid inputs: a prepared file, a teacher trained on it, configs, an image folder."""
    root = tmp_path_factory.mktemp("fuzz")
    shared = root / "shared"
    shared.mkdir()
    data = make_prepared(shared)
    import yaml

    from crossmodal.config import load_config
    from crossmodal.tasks.teach import TeachConfig, run_teach

    (shared / "teach.yaml").write_text(yaml.safe_dump(teach_config(data, shared / "runs")))
    run_teach(load_config(shared / "teach.yaml", TeachConfig, ["name=teacher"]))
    teacher = shared / "runs" / "teacher" / "best.pt"
    teach_cfg = teach_config(data, shared / "unused")
    distill_cfg = {"data": {"path": str(data)}, "student": {"arch": "resnet8", "modality": "rgb"},
                   "teachers": [{"checkpoint": str(teacher), "modality": "rgb"}],
                   "losses": {"ce": 1.0, "kd": 1.0, "crd": 0.8}, "loss_params": {"crd": {"nce_k": 8}},
                   "optim": {"lr": 0.05, "batch_size": 8, "epochs": 1, "milestones": [1]},
                   "engine": {"device": "cpu", "progress": False, "max_steps_per_epoch": 2}}
    images = make_image_folder(shared / "images")
    return World(root=root, data=data, teacher=teacher, teach_cfg=teach_cfg, distill_cfg=distill_cfg, images=images)


def assert_one_error_line(output: str, message: str = "") -> str:
    """The output holds exactly one `error:` line (holding `message`) and no traceback; return that line."""
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "Traceback" not in output and "internal error" not in output, output
    assert message in errors[0], f"{message!r} not in {errors[0]!r}"
    return errors[0]


class Hung(BaseException):
    """A command ran past its time (a BaseException: the error boundary must not turn it into an error line)."""


@contextlib.contextmanager
def no_hang(seconds: int = 60):
    """Fail the test instead of hanging when the body runs longer than `seconds` (an infinite loop, a FIFO read)."""
    def alarm(signum, frame):
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_closed(case, world, monkeypatch, tmp_path):
    world.case_dir = world.root / "cases" / case.id
    world.case_dir.mkdir(parents=True)
    crash_dir = tmp_path / "crashes"
    monkeypatch.setenv("CROSSMODAL_CRASH_DIR", str(crash_dir))
    monkeypatch.chdir(world.case_dir)  # defaults relative to the working folder land where the snapshot sees them
    argv = case.build(world)
    before = snapshot(world.root)
    with no_hang():
        result = CliRunner().invoke(app, argv)
    after = snapshot(world.root)
    assert result.exit_code == case.exit_code, f"{argv}\n{result.output}"
    assert_one_error_line(result.output, case.message)
    prefix = f"cases/{case.id}/"
    new = [p for p in after if p not in before
           and not any(fnmatch.fnmatch(p.removeprefix(prefix), pattern) for pattern in case.new_files)]
    assert new == [], f"new files: {new}"
    changed = [p for p in before if after.get(p) != before[p]]
    assert changed == [], f"changed or removed: {changed}"
    assert not crash_dir.exists()
    assert not (world.case_dir / "pwned").exists() and not Path("pwned").exists()


def test_the_table_is_large_and_covers_every_command():
    assert len(CASES) >= 150
    prefixes = {c.id.split("-")[0] for c in CASES}
    assert prefixes == {"prepare", "inspect", "teach", "distill", "probe", "quickstart"}


# ----------------------------------------------------------------------------- the boundary itself

def test_an_unexpected_exception_prints_one_line_and_writes_the_traceback(tmp_path, monkeypatch):
    import cli.inspect_cmd

    def broken(path):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli.inspect_cmd, "describe", broken)
    monkeypatch.setenv("CROSSMODAL_CRASH_DIR", str(tmp_path / "crashes"))
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "x.h5")])
    assert result.exit_code == 1
    line = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(line) == 1 and "ZeroDivisionError: a bug" in line[0] and "Traceback" not in result.output
    (report,) = (tmp_path / "crashes").iterdir()
    assert str(report) in line[0] and "ZeroDivisionError" in report.read_text() and "broken" in report.read_text()


def test_an_os_error_is_one_line_naming_the_file(tmp_path, monkeypatch):
    import cli.inspect_cmd

    def full(path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(cli.inspect_cmd, "describe", full)
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "x.h5")])
    assert result.exit_code == 2
    assert_one_error_line(result.output, f"{tmp_path / 'x.h5'}: No space left on device; free some space")


def _python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=kwargs.pop("cwd", REPO), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


SLOW_PREPARE = """
import sys, time
import data_prep.images as images
decode = images.decode_image
images.decode_image = lambda data: (time.sleep(0.02), decode(data))[1]
from cli.main import app
sys.argv = ["crossmodal", *sys.argv[1:]]
app()
"""


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_prepare_removes_the_temporary_file(tmp_path, sig, status):
    images = make_image_folder(tmp_path / "images", per_class=150)
    out = tmp_path / "out"
    out.mkdir()
    proc = _python(SLOW_PREPARE, "prepare", "imagefolder", str(images), "--out", str(out / "x.h5"), "-j", "1")
    _wait_for(lambda: any(out.iterdir()))  # the temporary file exists: the write has begun
    time.sleep(0.3)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == status, stderr
    assert_one_error_line(stderr, "terminated" if sig == signal.SIGTERM else "interrupted")
    assert list(out.iterdir()) == []


def test_a_sigkilled_prepare_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    images = make_image_folder(tmp_path / "images", per_class=150)
    out = tmp_path / "out"
    out.mkdir()
    proc = _python(SLOW_PREPARE, "prepare", "imagefolder", str(images), "--out", str(out / "x.h5"), "-j", "1")
    _wait_for(lambda: any(out.iterdir()))
    proc.kill()
    proc.communicate(timeout=30)
    (stale,) = out.iterdir()
    assert f"-{proc.pid}." in stale.name  # the dead writer's pid is in the name
    result = CliRunner().invoke(app, ["prepare", "imagefolder", str(make_image_folder(tmp_path / "small")),
                                      "--out", str(out / "x.h5"), "-j", "1"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in out.iterdir()] == ["x.h5"]


def test_a_full_disk_during_prepare_is_one_error_line_and_no_crash(tmp_path):
    """RLIMIT_FSIZE makes writes past 300 kB fail (EFBIG) like a full disk; h5py used to segfault at exit."""
    images = make_image_folder(tmp_path / "images", per_class=150, side=16)
    out = tmp_path / "out"
    out.mkdir()
    code = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
import data_prep.writer as writer
writer.check_free_space = lambda *args: None  # let the write reach the limit
from cli.main import app
sys.argv = ["crossmodal", *sys.argv[1:]]
app()
"""
    proc = _python(code, "prepare", "imagefolder", str(images), "--out", str(out / "x.h5"), "-j", "1")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    assert_one_error_line(stderr, "writing failed (File too large)")
    assert list(out.iterdir()) == []


def assert_prepare_fails_leaving_nothing(tmp_path, fragment: str) -> None:
    """`prepare` of a small image folder into an empty folder: exit 2, one error line naming `fragment`, nothing left."""
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(app, ["prepare", "imagefolder", str(make_image_folder(tmp_path / "images")),
                                      "--out", str(out / "x.h5")])
    assert result.exit_code == 2
    assert_one_error_line(result.output, fragment)
    assert list(out.iterdir()) == []


def test_prepare_checks_free_space_before_writing(tmp_path, monkeypatch):
    import shutil

    from crossmodal import tempfiles

    monkeypatch.setattr(tempfiles.shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    assert_prepare_fails_leaving_nothing(tmp_path, "has 0 MB free")


def test_a_fifo_named_like_an_image_is_not_read(tmp_path):
    images = make_image_folder(tmp_path / "images")
    os.mkfifo(images / "train" / "cat" / "pipe.jpg")
    out = tmp_path / "x.h5"
    with no_hang():
        result = CliRunner().invoke(app, ["prepare", "imagefolder", str(images), "--out", str(out)])
    assert result.exit_code == 0, result.output
    from crossmodal.data.schema import open_prepared

    f, summary = open_prepared(out)
    f.close()
    assert summary["splits"]["train"]["n"] == 6  # the 6 real images, not the FIFO


def test_encrypted_zip_members_are_skipped_and_counted(tmp_path, world):
    from fuzz_cases import _zip_with

    world.case_dir = tmp_path
    archive = _zip_with(world)
    data = bytearray(archive.read_bytes())
    first = data.find(b"PK\x03\x04")  # encrypt only the first member (train/cat/0.png)
    data[first + 6] |= 1
    central = data.find(b"PK\x01\x02")
    data[central + 8] |= 1
    archive.write_bytes(bytes(data))
    result = CliRunner().invoke(app, ["prepare", "imagefolder", str(archive), "--out", str(tmp_path / "x.h5")])
    assert result.exit_code == 0, result.output
    assert "encrypted" in result.output and "1 skipped" in result.output
    strict = CliRunner().invoke(app, ["prepare", "imagefolder", str(archive), "--out", str(tmp_path / "y.h5"),
                                      "--strict"])
    assert strict.exit_code == 2 and not (tmp_path / "y.h5").exists()


def test_checkpoint_save_on_a_full_disk_is_one_error_line(tmp_path, world, monkeypatch):
    import crossmodal.engine.checkpoint as ckpt_io

    real_save, calls = torch.save, []

    def full_disk_save(obj, f):
        calls.append(1)
        if len(calls) > 1:  # the second save (best.pt after last.pt) finds the disk full
            raise OSError(28, "No space left on device")
        return real_save(obj, f)

    monkeypatch.setattr(ckpt_io.torch, "save", full_disk_save)
    import yaml

    config = tmp_path / "t.yaml"
    config.write_text(yaml.safe_dump(teach_config(world.data, tmp_path / "runs")))
    result = CliRunner().invoke(app, ["teach", str(config)])
    assert result.exit_code == 2
    assert_one_error_line(result.output, "could not be written (No space left on device)")
    run = tmp_path / "runs" / "t"
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- run folders

def _teach_yaml(tmp_path: Path, world: World, name: str = "t.yaml", data: Path | None = None, **optim) -> Path:
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump(teach_config(data or world.data, tmp_path / "runs", **optim)))
    return path


def test_a_second_run_into_a_locked_folder_fails_at_once(tmp_path, world):
    from crossmodal.engine.rundir import RunFolder

    config = _teach_yaml(tmp_path, world)
    with RunFolder(tmp_path / "runs" / "t"):  # as if another process were training there
        started = time.monotonic()
        result = CliRunner().invoke(app, ["teach", str(config)])
        assert time.monotonic() - started < 30
    assert result.exit_code == 2
    assert_one_error_line(result.output, f"pid {os.getpid()}) is writing into this folder")
    assert sorted(p.name for p in (tmp_path / "runs" / "t").iterdir()) == [".lock"]
    assert CliRunner().invoke(app, ["teach", str(config)]).exit_code == 0  # the lock went with its holder


def test_two_concurrent_teach_processes_never_share_a_folder(tmp_path, world):
    config = _teach_yaml(tmp_path, world, epochs=2)
    code = "import sys\nfrom cli.main import app\nsys.argv = ['crossmodal', *sys.argv[1:]]\napp()\n"
    first = _python(SLOW_EPOCHS, "teach", str(config))  # holds the folder for 30 s after each epoch
    lock = tmp_path / "runs" / "t" / ".lock"
    _wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), timeout=60)
    second = _python(code, "teach", str(config))
    _, stderr = second.communicate(timeout=60)
    assert second.returncode == 2
    assert_one_error_line(stderr, f"another run (pid {first.pid})")
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 143, stderr
    assert_one_error_line(stderr, "terminated")


SLOW_EPOCHS = """
import sys, time
from crossmodal.engine.trainer import Trainer
end_epoch = Trainer._end_epoch
def slow_end_epoch(self, *args, **kwargs):  # after each checkpoint, time for the test to kill the run
    end_epoch(self, *args, **kwargs)
    time.sleep(30)
Trainer._end_epoch = slow_end_epoch
from cli.main import app
sys.argv = ["crossmodal", *sys.argv[1:]]
app()
"""


def _kill_after_first_checkpoint(config: Path, tmp_path: Path) -> None:
    proc = _python(SLOW_EPOCHS, "teach", str(config), "--set", "engine.max_steps_per_epoch=1")
    _wait_for(lambda: (tmp_path / "runs" / "t" / "last.pt").exists(), timeout=60)
    proc.kill()
    proc.communicate(timeout=30)


def _killed_run(folder: Path, world: World) -> Path:
    """A teach run of 4 one-step epochs on a copy of the data (folder/data.h5), SIGKILLed after its first checkpoint."""
    import shutil

    data = Path(shutil.copy(world.data, folder / "data.h5"))
    config = _teach_yaml(folder, world, data=data, epochs=4)
    _kill_after_first_checkpoint(config, folder)
    return config


@pytest.fixture(scope="module")
def killed_template(tmp_path_factory, world) -> Path:
    """One killed run (see _killed_run) that killed_run copies for each test."""
    folder = tmp_path_factory.mktemp("killed")
    _killed_run(folder, world)
    return folder


@pytest.fixture
def killed_run(tmp_path, killed_template, world) -> Path:
    """A copy of the killed run in tmp_path/runs/t (same data file; out_dir may change on resume)."""
    import shutil

    shutil.copytree(killed_template / "runs", tmp_path / "runs")
    return _teach_yaml(tmp_path, world, data=killed_template / "data.h5", epochs=4)


@pytest.mark.parametrize("change, key", [
    (["--lr", "0.1"], "optim.lr"), (["--seed", "3"], "seed"), (["--batch-size", "4"], "optim.batch_size"),
    (["--set", "model.arch=resnet14"], "model.arch"), (["--set", "data.augment.hflip=true"], "data.augment.hflip"),
    (["--set", "engine.max_steps_per_epoch=2"], "engine.max_steps_per_epoch"), (["--epochs", "2"], "below"),
])
def test_resume_refuses_a_changed_run(killed_run, tmp_path, change, key):
    run = tmp_path / "runs" / "t"
    before = snapshot(run)
    result = CliRunner().invoke(app, ["teach", str(killed_run), "--resume", "--set", "engine.max_steps_per_epoch=1",
                                      *change])
    assert result.exit_code == 2
    assert_one_error_line(result.output, key)
    after = snapshot(run)
    assert after.pop(".lock") != before.pop(".lock")  # only the lock changed: it names its last holder
    # The SIGKILL may land while best.pt is being written; its temporary is debris of a dead process, which
    # taking the run folder's lock removes. Nothing else may change, and no temporary may appear.
    debris = {name for name in before if name.endswith(".tmp")}
    assert set(after) - set(before) == set() and {k: v for k, v in before.items() if k not in debris} == after


def test_a_killed_run_resumes_to_its_end(killed_run, tmp_path):
    """After SIGKILL (a stale temporary may be left), --resume finishes epochs 2-4; bit-exactness: test_teach."""
    result = CliRunner().invoke(app, ["teach", str(killed_run), "--resume", "--set", "engine.max_steps_per_epoch=1"])
    assert result.exit_code == 0, result.output
    from crossmodal.engine.logging import read_metrics

    run = tmp_path / "runs" / "t"
    assert [row["epoch"] for row in read_metrics(run / "metrics.csv")] == [1, 2, 3, 4]
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_resume_refuses_data_changed_in_place(tmp_path, world):
    import h5py

    killed_run = _killed_run(tmp_path, world)

    with h5py.File(tmp_path / "data.h5", "r+") as f:  # same path, different content
        f.attrs["source"] = "re-prepared"
    result = CliRunner().invoke(app, ["teach", str(killed_run), "--resume", "--set", "engine.max_steps_per_epoch=1"])
    assert result.exit_code == 2
    assert_one_error_line(result.output, "'data.file' (the file changed")


def test_resume_may_lengthen_a_run_and_says_so(tmp_path, world, caplog, monkeypatch):
    import logging

    monkeypatch.setattr(logging.getLogger("crossmodal"), "propagate", True)  # let caplog see the engine's lines
    caplog.set_level(logging.INFO, logger="crossmodal")
    config = _teach_yaml(tmp_path, world, epochs=1)
    assert CliRunner().invoke(app, ["teach", str(config)]).exit_code == 0
    result = CliRunner().invoke(app, ["teach", str(config), "--resume", "--epochs", "2", "--device", "cpu",
                                      "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "optim.epochs 1 -> 2: lengthening is the one change a resume accepts" in caplog.text
    from crossmodal.engine.logging import read_metrics

    assert [row["epoch"] for row in read_metrics(tmp_path / "runs" / "t" / "metrics.csv")] == [1, 2]


def test_distill_resume_refuses_a_teacher_replaced_in_place(tmp_path, world):
    import shutil

    import yaml

    teacher = tmp_path / "teacher.pt"
    shutil.copy(world.teacher, teacher)
    cfg = {**world.distill_cfg, "teachers": [{"checkpoint": str(teacher), "modality": "rgb"}],
           "out_dir": str(tmp_path / "runs")}
    config = tmp_path / "d.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert CliRunner().invoke(app, ["distill", str(config)]).exit_code == 0
    state = torch.load(teacher, weights_only=True)
    state["epoch"] = 99  # same weights, different file
    torch.save(state, teacher)
    result = CliRunner().invoke(app, ["distill", str(config), "--resume", "--epochs", "2"])
    assert result.exit_code == 2
    assert_one_error_line(result.output, "'teachers.0.sha256' (the teacher file changed")


def test_a_run_name_cannot_leave_out_dir(tmp_path, world):
    config = _teach_yaml(tmp_path, world)
    for name in ("../x", "a/../../x", str(tmp_path / "abs")):
        result = CliRunner().invoke(app, ["teach", str(config), "--name", name])
        assert result.exit_code == 2
        assert_one_error_line(result.output, "run name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.yaml"]


# ----------------------------------------------------------------------------- outputs need --force

def test_inspect_sheet_is_replaced_only_with_force(tmp_path, world):
    sheet = tmp_path / "s.png"
    assert CliRunner().invoke(app, ["inspect", str(world.data), "--sheet", str(sheet)]).exit_code == 0
    first = sheet.read_bytes()
    again = CliRunner().invoke(app, ["inspect", str(world.data), "--sheet", str(sheet), "--split", "train"])
    assert again.exit_code == 2 and sheet.read_bytes() == first
    forced = CliRunner().invoke(app, ["inspect", str(world.data), "--sheet", str(sheet), "--split", "train",
                                      "--force"])
    assert forced.exit_code == 0 and sheet.read_bytes() != first


def test_probe_results_are_replaced_only_with_force(tmp_path, world):
    args = ["probe", "linear", "--checkpoint", str(world.teacher), "--data", str(world.data), "--out-dir",
            str(tmp_path / "p"), "--name", "lin", "--epochs", "2", "--device", "cpu"]
    assert CliRunner().invoke(app, args).exit_code == 0
    results = tmp_path / "p" / "lin" / "results.json"
    first = results.read_bytes()
    again = CliRunner().invoke(app, args + ["--seed", "1"])
    assert again.exit_code == 2 and results.read_bytes() == first
    assert_one_error_line(again.output, "--force")
    assert CliRunner().invoke(app, args + ["--seed", "1", "--force"]).exit_code == 0
    assert results.read_bytes() != first


def test_python_dash_m_cli_runs_inside_the_boundary(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cli", "teach", str(tmp_path / "missing.yaml")], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr, "missing.yaml: no such config file")
    assert proc.stdout == ""


def test_an_unwritable_output_folder_is_one_error_line(tmp_path, monkeypatch):
    import data_prep.writer as writer

    def refuse(self, path):  # what opening a file in a read-only folder raises (root would not see it)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(writer.DropWritesAfterFailure, "__init__", refuse)
    assert_prepare_fails_leaving_nothing(tmp_path, "writing failed (Permission denied)")
