"""The benchmark harness (benchmarks/common.py, suite.py, compression.py): skip-if-done, resume, parallel
jobs, failures, budgets, missing data, and the commands the compression experiment builds."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from benchmarks import common, compression, suite
from benchmarks.common import Bench, BenchmarkSkipped, Step, budget, mean_std

# A stand-in for a CLI command: appends its argv to the file named first, then sleeps if asked.
RECORDER = ("import sys, time, pathlib; p = pathlib.Path(sys.argv[1]); "
            "p.write_text(p.read_text() + ' '.join(sys.argv[2:]) + '\\n' if p.exists() else ' '.join(sys.argv[2:]) + '\\n'); "
            "time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2].replace('.', '').isdigit() else 0)")


def bench_in(tmp_path: Path, jobs: int = 1) -> Bench:
    return Bench(name="t", jobs=jobs, runs=tmp_path / "runs")


def recorder(done: Path, *args: str, resume_from: Path | None = None) -> Step:
    return Step([sys.executable, "-c", RECORDER, str(done), *args], done, resume_from)


def test_run_stage_skips_done_steps_and_resumes_interrupted_ones(tmp_path):
    b = bench_in(tmp_path)
    done_before = tmp_path / "a.txt"
    done_before.write_text("earlier\n")
    partial = tmp_path / "last.pt"
    partial.write_text("x")
    b.run_stage([recorder(done_before, "again"), recorder(tmp_path / "b.txt", "fresh"),
                 recorder(tmp_path / "c.txt", "cont", resume_from=partial),
                 recorder(tmp_path / "d.txt", "new", resume_from=tmp_path / "absent.pt")])
    assert done_before.read_text() == "earlier\n"  # not rerun
    assert (tmp_path / "b.txt").read_text() == "fresh\n"
    assert (tmp_path / "c.txt").read_text() == "cont --resume\n"  # last.pt there: --resume appended
    assert (tmp_path / "d.txt").read_text() == "new\n"
    assert len(b.commands) == 4  # every command is listed for the results file, skipped ones too


def test_run_stage_runs_jobs_at_once(tmp_path):
    import time

    steps = [recorder(tmp_path / f"{i}.txt", "0.8") for i in range(4)]
    start = time.perf_counter()
    bench_in(tmp_path, jobs=4).run_stage(steps)
    parallel = time.perf_counter() - start
    assert all(s.done.exists() for s in steps)
    # 4 sleeps of 0.8 s one after another would take >= 3.2 s; at once they take well under that.
    assert parallel < 3.0, parallel


def test_run_stage_failure_names_the_command_and_its_log(tmp_path):
    b = bench_in(tmp_path)
    bad = Step([sys.executable, "-c", "import sys; print('broken input'); sys.exit(3)"], tmp_path / "never")
    with pytest.raises(SystemExit) as err:
        b.run_stage([bad, recorder(tmp_path / "after.txt", "x")])
    message = str(err.value.code)
    assert "exited 3" in message and "broken input" in message and "bench_logs" in message
    assert not (tmp_path / "after.txt").exists()  # nothing new starts after a failure


def test_data_absent_skips_with_the_missing_path(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "SHARED", tmp_path / "nowhere")
    with pytest.raises(BenchmarkSkipped) as err:
        bench_in(tmp_path).data("cifar10")
    assert str(tmp_path / "nowhere" / "cifar10.tar.gz") in str(err.value.code)


def test_quick_mode_reads_mini_data_and_writes_under_runs_quick(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "SHARED", tmp_path)
    (tmp_path / "cifar10-mini.tar.gz").write_text("")
    monkeypatch.setattr(common, "REPO", tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cifar10_mini.h5").write_text("")  # prepared already: nothing runs
    b = Bench(name="t", quick=True, runs=Path("runs/quick"))
    assert b.data("cifar10") == "data/cifar10_mini.h5"
    assert b.results_dir == tmp_path / "runs/quick/results"
    step = b.train("teach", "configs/x.yaml", "r")
    assert step.cmd[-len(common.QUICK_TRAIN):] == common.QUICK_TRAIN


def test_mean_std_is_the_population_std():
    assert mean_std([1.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)


def test_budget_counts_the_steps_the_engine_runs(tmp_path, monkeypatch, make_prepared):
    monkeypatch.setattr(common, "REPO", tmp_path)
    make_prepared(splits={"train": 100, "test": 10}, modalities=("rgb",), name="d.h5")
    run = tmp_path / "run"
    run.mkdir()
    for max_steps, expected in ((5, "3 epochs x 5 steps x 16 images (240 images seen)"),
                                (50, "3 epochs x 6 steps x 16 images (288 images seen)")):  # 100 // 16 = 6
        cfg = {"data": {"path": "d.h5"}, "optim": {"epochs": 3, "batch_size": 16},
               "engine": {"max_steps_per_epoch": max_steps}}
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        assert budget(Path("run")) == expected


def test_compression_builds_each_method_with_the_shared_teacher(tmp_path):
    b = Bench(name="t", runs=Path("runs"))
    steps = compression.student_steps(b, compression.profile("cifar10", "cpu"), [0, 1], ["--set", "data.path=d.h5"], [])
    assert len(steps) == 2 * len(compression.METHODS)
    names = [s.cmd[s.cmd.index("--name") + 1] for s in steps]
    assert names[:3] == ["cifar10_resnet8_s0", "cifar10_resnet20_resnet8_kd_s0", "cifar10_resnet20_resnet8_fitnet_s0"]
    for step in steps[1:len(compression.METHODS)]:
        assert "teachers.0.checkpoint=runs/cifar10_resnet20/best.pt" in step.cmd
        assert (common.REPO / step.cmd[2]).exists(), step.cmd[2]  # every CPU config is shipped


def test_compression_gpu_profile_derives_missing_methods_from_the_kd_config():
    b = Bench(name="t", runs=Path("runs"))
    steps = compression.student_steps(b, compression.profile("cifar100", "gpu"), [0], [], ["--device", "cuda"])
    fitnet = next(s for s in steps if "resnet32x4_resnet8x4_fitnet_s0" in s.cmd)
    assert fitnet.cmd[2] == "configs/cifar100/resnet32x4_resnet8x4_kd.yaml"
    assert "losses={ce: 1.0, fitnet: 100.0}" in fitnet.cmd and "loss_params={}" in fitnet.cmd
    crd = next(s for s in steps if "resnet32x4_resnet8x4_crd_s0" in s.cmd)
    assert crd.cmd[2] == "configs/cifar100/resnet32x4_resnet8x4_crd.yaml"


def test_suite_rejects_an_unknown_experiment(capsys):
    with pytest.raises(SystemExit) as err:
        suite.main(["--only", "compresion"])
    assert err.value.code == 2
    assert "compresion" in capsys.readouterr().err


def test_gpu_check_without_cuda_says_how_to_run_it_on_a_cpu(capsys):
    from benchmarks import gpu_check

    if __import__("torch").cuda.is_available():
        pytest.skip("a CUDA device is visible: the no-CUDA message is not reachable")
    assert gpu_check.main(["--device", "cuda"]) == 2
    assert "--device cpu --quick" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_check_script_passes_on_a_cpu(tmp_path):
    """The CUDA check script's own logic (configs, commands, 1-process torchrun/gloo comparison) on a CPU."""
    from benchmarks import gpu_check

    failed = gpu_check.main(["--device", "cpu", "--quick", "--skip", "speed", "amp", "compile",
                             "--work", str(tmp_path), "--out", str(tmp_path / "report.md")])
    report = (tmp_path / "report.md").read_text()
    assert failed == 0, report
    assert "| DDP with one process (torchrun) | PASS |" in report
