"""The benchmark harness (benchmarks/common.py, suite.py, compression.py, teachers.py): skip-if-done, records
that carry finished runs across checkouts, resume, parallel jobs, failures, budgets, missing data, the results
.json, committed teachers, and the commands the compression experiment builds."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks import common, compression, suite, teachers
from benchmarks.common import Bench, BenchmarkSkipped, Step, mean_std, run_budget, welch_t

# A stand-in for a CLI command: appends its argv to the file named first, then sleeps if asked.
RECORDER = ("import sys, time, pathlib; p = pathlib.Path(sys.argv[1]); "
            "p.write_text(p.read_text() + ' '.join(sys.argv[2:]) + '\\n' if p.exists() else ' '.join(sys.argv[2:]) + '\\n'); "
            "time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2].replace('.', '').isdigit() else 0)")


def bench_in(tmp_path: Path, jobs: int = 1) -> Bench:
    return Bench(name="t", jobs=jobs, runs=tmp_path / "runs", records=tmp_path / "records")


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


# A step that marks its start, waits (up to 60 s) until four steps have started, and records its start and end.
MEET = ("import sys, time, pathlib; out = pathlib.Path(sys.argv[1]); start = time.time(); "
        "out.with_suffix('.started').touch(); deadline = start + 60\n"
        "while len(list(out.parent.glob('*.started'))) < 4 and time.time() < deadline: time.sleep(0.05)\n"
        "out.write_text(f'{start} {time.time()}')")


def test_run_stage_runs_jobs_at_once(tmp_path):
    """With jobs=4, four steps run at the same time: each starts before any ends (from the times the steps
    record, not from a wall-time threshold, which a loaded machine stretches)."""
    steps = [Step([sys.executable, "-c", MEET, str(tmp_path / f"{i}.txt")], tmp_path / f"{i}.txt") for i in range(4)]
    bench_in(tmp_path, jobs=4).run_stage(steps)
    spans = [tuple(map(float, step.done.read_text().split())) for step in steps]
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans  # all four overlapped


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


def test_runs_option_moves_every_run_log_and_quick_record_and_partial_copies_follow_it(tmp_path, monkeypatch):
    """--runs DIR (the GPU queue's group-b jobs pass their state folder): run, teacher and log folders and --quick's
    records and results go under DIR, a saved benchmarks.partial copy is restored relative to DIR (a teacher's run
    DIR/teachers/NAME from benchmarks/partial/teachers/NAME), and nothing names runs/. Without it, as before."""
    from benchmarks import partial

    root = tmp_path / "state" / "runs"
    b = common.bench("t", common.parser("t", "").parse_args(["--runs", str(root)]))
    assert b.runs == b.runs_root == root and b.records_dir == common.REPO / "benchmarks/results/records"
    quick = common.bench("t", common.parser("t", "").parse_args(["--quick", "--runs", str(root)]))
    assert quick.records_dir == root / "records" and quick.results_dir == root / "results"
    default = common.bench("t", common.parser("t", "").parse_args(["--quick"]))
    assert default.runs == Path("runs/quick") and default.records_dir == common.REPO / "runs/quick/records"
    step = b.train("teach", "configs/x.yaml", "r")
    assert step.cmd[step.cmd.index("--out-dir") + 1] == str(root) and step.done == root / "r" / "summary.json"

    monkeypatch.setattr(partial, "PARTIAL", tmp_path / "partial")
    (tmp_path / "partial" / "teachers" / "x").mkdir(parents=True)
    (tmp_path / "partial" / "teachers" / "x" / "last.pt").write_text("saved")
    b.records = tmp_path / "records"
    run_dir = root / "teachers" / "x"  # where teachers.py's train_step puts teacher x's run
    b.run_stage([recorder(run_dir / "done.txt", "cont", resume_from=run_dir / "last.pt")])
    assert (run_dir / "last.pt").read_text() == "saved" and (run_dir / "done.txt").read_text() == "cont --resume\n"
    assert [p.name for p in (root / "bench_logs").iterdir()] == ["done.log"]


def test_mean_std_population_and_sample():
    assert mean_std([1.0, 3.0]) == (2.0, 1.0)
    assert mean_std([1.0, 3.0], sample=True) == (2.0, 2.0 ** 0.5)
    assert mean_std([5.0]) == (5.0, 0.0) and mean_std([5.0], sample=True) == (5.0, 0.0)


def test_welch_t_by_hand():
    # means 2 and 0, sample variances 1 and 1, n 3 each: se = sqrt(1/3 + 1/3), t = 2 / se = sqrt(6)
    assert welch_t([1.0, 2.0, 3.0], [-1.0, 0.0, 1.0]) == pytest.approx(6 ** 0.5)
    assert welch_t([1.0], [0.0, 1.0]) is None and welch_t([1.0, 1.0], [1.0, 1.0]) is None


def test_run_budget_counts_the_steps_the_engine_runs(tmp_path, monkeypatch, make_prepared):
    monkeypatch.setattr(common, "REPO", tmp_path)
    make_prepared(splits={"train": 100, "test": 10}, modalities=("rgb",), name="d.h5")
    for max_steps, steps in ((5, 5), (50, 6)):  # 100 // 16 = 6 steps without a cap
        cfg = {"data": {"path": "d.h5"}, "optim": {"epochs": 3, "batch_size": 16},
               "engine": {"max_steps_per_epoch": max_steps}}
        b = run_budget(cfg)
        assert b == {"epochs": 3, "steps_per_epoch": steps, "batch": 16, "images_seen": 3 * steps * 16,
                     "train_size": 100, "passes": round(3 * steps * 16 / 100, 2)}
    assert "3 epochs x 6 steps x 16 images (288 images seen, 2.88 passes over 100)" == common.budget_text(b)


def fake_run(tmp_path: Path, name: str, top1: float, note: str = "") -> Step:
    """A step whose command writes a finished run folder (config.yaml, summary.json) like `crossmodal teach`."""
    run = tmp_path / "runs" / name
    code = ("import json, pathlib, sys, yaml; run = pathlib.Path(sys.argv[1]); run.mkdir(parents=True, exist_ok=True); "
            "(run / 'config.yaml').write_text(yaml.safe_dump({'data': {'path': sys.argv[3]}, 'optim': {'epochs': 2, "
            "'batch_size': 10}, 'engine': {}})); (run / 'summary.json').write_text(json.dumps({'final_test_top1': "
            "float(sys.argv[2])})); (run / 'last.pt').write_text('w'); "
            "log = run.parent / 'calls.txt'; log.write_text((log.read_text() if log.exists() else '') + run.name + '\\n')")
    return Step([sys.executable, "-c", code, str(run), str(top1), str(tmp_path / "d.h5"), note], run / "summary.json",
                record=name)


def test_records_carry_finished_runs_to_a_fresh_checkout(tmp_path, monkeypatch, make_prepared):
    monkeypatch.setattr(common, "REPO", tmp_path)
    make_prepared(splits={"train": 40, "test": 10}, modalities=("rgb",), name="d.h5")
    b = bench_in(tmp_path)
    b.run_stage([fake_run(tmp_path, "a", 61.5)])
    rec = b.record("a")
    assert rec["summary"]["final_test_top1"] == 61.5 and rec["budget"]["passes"] == 2.0  # 2 epochs x 4 steps x 10 / 40 rows
    assert rec["command"] == fake_run(tmp_path, "a", 61.5).text
    import shutil

    shutil.rmtree(tmp_path / "runs")  # a fresh checkout: the run folder is gone, the record is committed
    b2 = bench_in(tmp_path)
    b2.run_stage([fake_run(tmp_path, "a", 61.5)])
    assert not (tmp_path / "runs").exists()  # nothing ran
    assert b2.summary("a")["final_test_top1"] == 61.5


def test_a_record_of_another_command_is_stale_and_the_step_runs_again(tmp_path, monkeypatch, make_prepared):
    monkeypatch.setattr(common, "REPO", tmp_path)
    make_prepared(splits={"train": 40, "test": 10}, modalities=("rgb",), name="d.h5")
    b = bench_in(tmp_path)
    b.run_stage([fake_run(tmp_path, "a", 50.0, note="old budget")])
    b.run_stage([fake_run(tmp_path, "a", 70.0, note="new budget")])  # same run name, another command
    assert b.summary("a")["final_test_top1"] == 70.0
    assert (tmp_path / "runs" / "calls.txt").read_text() == "a\na\n"


def test_a_missing_checkpoint_reruns_the_step_that_writes_it(tmp_path, monkeypatch, make_prepared):
    monkeypatch.setattr(common, "REPO", tmp_path)
    make_prepared(splits={"train": 40, "test": 10}, modalities=("rgb",), name="d.h5")
    b = bench_in(tmp_path)
    producer = fake_run(tmp_path, "student", 55.0)
    b._producers[producer.done.parent] = producer
    b.run_stage([producer])
    (producer.done.parent / "last.pt").unlink()  # the record exists, the checkpoint does not
    consumer = recorder(tmp_path / "probe.txt", "probed")
    consumer.needs = [producer.done.parent / "last.pt"]
    b.run_stage([producer, consumer])
    assert (producer.done.parent / "last.pt").exists()
    assert (tmp_path / "runs" / "calls.txt").read_text() == "student\nstudent\n"
    assert (tmp_path / "probe.txt").read_text() == "probed\n"


def test_write_puts_a_json_beside_the_markdown(tmp_path, monkeypatch, make_prepared):
    import json

    monkeypatch.setattr(common, "REPO", tmp_path)
    make_prepared(splits={"train": 40, "test": 10}, modalities=("rgb",), name="d.h5")
    b = Bench(name="exp", runs=tmp_path / "runs", records=tmp_path / "records")
    b.run_stage([fake_run(tmp_path, "a", 61.5)])
    b.summary("a")
    out = b.write("T", ["body"], results={"methods": {"x": {"per_seed": {"0": 61.5}}}}, argv=[])
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["results"]["methods"]["x"]["per_seed"]["0"] == 61.5
    assert data["runs"]["a"]["budget"]["passes"] == 2.0 and data["runs"]["a"]["command"]
    assert {"commit", "machine", "reproduce"} <= set(data)


def test_write_keeps_a_report_whose_numbers_and_commands_did_not_change(tmp_path, monkeypatch, make_prepared):
    """A rerun over finished records (the suite passes each finished experiment again) leaves the committed .md
    and .json as they were: only the date and commit would change. New numbers rewrite both."""
    import json

    monkeypatch.setattr(common, "REPO", tmp_path)
    make_prepared(splits={"train": 40, "test": 10}, modalities=("rgb",), name="d.h5")
    b = Bench(name="exp", runs=tmp_path / "runs", records=tmp_path / "records")
    b.run_stage([fake_run(tmp_path, "a", 61.5)])
    b.summary("a")
    out = b.write("T", ["body"], results={"x": 61.5}, argv=[])
    data = json.loads(out.with_suffix(".json").read_text())
    data.update(commit="c0ffee0", written="2000-01-01 00:00 UTC")  # as if written at another commit and time
    out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    md = out.read_text().replace("written 20", "written 1999-")
    out.write_text(md)
    b.write("T", ["body"], results={"x": 61.5}, argv=[])
    assert json.loads(out.with_suffix(".json").read_text())["commit"] == "c0ffee0" and out.read_text() == md
    for body, x in ((["other body"], 61.5), (["other body"], 61.6)):  # the text changes, then a number alone
        b.write("T", body, results={"x": x}, argv=[])
        assert json.loads(out.with_suffix(".json").read_text())["commit"] != "c0ffee0", (body, x)
        data = json.loads(out.with_suffix(".json").read_text())
        data["commit"] = "c0ffee0"
        out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")


def test_compression_builds_each_method_with_the_shared_teacher(tmp_path):
    b = Bench(name="t", runs=Path("runs"))
    p = compression.profile("cifar10", "cpu")
    steps = compression.student_steps(b, p, "teachers/cifar10_resnet20.pt", [0, 1], ["--set", "data.path=d.h5"], [])
    assert len(steps) == 2 * len(compression.METHODS)
    names = [s.cmd[s.cmd.index("--name") + 1] for s in steps]
    assert names[:3] == ["cifar10_resnet8_s0", "cifar10_resnet20_resnet8_kd_s0", "cifar10_resnet20_resnet8_fitnet_s0"]
    for step in steps[1:len(compression.METHODS)]:
        assert "teachers.0.checkpoint=teachers/cifar10_resnet20.pt" in step.cmd
        assert (common.REPO / step.cmd[2]).exists(), step.cmd[2]  # every CPU config is shipped


def test_compression_gpu_profile_derives_missing_methods_from_the_kd_config():
    b = Bench(name="t", runs=Path("runs"))
    steps = compression.student_steps(b, compression.profile("cifar100", "gpu"), "runs/cifar100_resnet32x4/last.pt",
                                      [0], [], ["--device", "cuda"])
    fitnet = next(s for s in steps if "resnet32x4_resnet8x4_fitnet_s0" in s.cmd)
    assert fitnet.cmd[2] == "configs/cifar100/resnet32x4_resnet8x4_kd.yaml"
    assert "losses={ce: 1.0, fitnet: 100.0}" in fitnet.cmd and "loss_params={}" in fitnet.cmd
    crd = next(s for s in steps if "resnet32x4_resnet8x4_crd_s0" in s.cmd)
    assert crd.cmd[2] == "configs/cifar100/resnet32x4_resnet8x4_crd.yaml"
    assert crd.needs == [common.REPO / "runs/cifar100_resnet32x4/last.pt"]


def test_every_student_config_of_the_suite_sees_at_least_five_passes():
    """The fidelity budget: no student below 5 passes (CIFAR-size splits are 50,000 images)."""
    for path in sorted((common.REPO / "configs/cpu").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        if path.name.startswith("nyu18"):
            continue  # 10 frames, one step an epoch: its 60 epochs are 60 passes
        assert cfg["optim"]["epochs"] >= 5 and "max_steps_per_epoch" not in (cfg.get("engine") or {}), path.name


def test_committed_teachers_match_their_records():
    """teachers/teachers.json names every committed file with its sha256, and the weights stay under 40 MB."""
    from crossmodal.engine.checkpoint import file_sha256

    records = teachers.load_records()
    for name, rec in records.items():
        assert name in teachers.TEACHERS
        assert file_sha256(common.REPO / rec["file"]) == rec["sha256"], name
        assert rec["size_bytes"] == (common.REPO / rec["file"]).stat().st_size
    assert sum(r["size_bytes"] for r in records.values()) <= teachers.MAX_TOTAL_MIB * 2**20


def test_export_weights_keeps_the_network_and_drops_the_rest(tmp_path):
    import torch

    from crossmodal.engine.checkpoint import FORMAT, export_weights, load_model, save_checkpoint
    from crossmodal.models import build_model

    model = build_model("resnet8", in_chans=3, num_classes=4).eval()
    meta = {"arch": "resnet8", "modality": "rgb", "in_chans": 3, "num_classes": 4, "class_names": list("abcd"),
            "data_path": "d.h5", "stats": {"rgb": {"mean": [0.0] * 3, "std": [1.0] * 3}}}
    save_checkpoint(tmp_path / "full.pt", {"format": FORMAT, "model": model.state_dict(), "meta": meta, "epoch": 3,
                                           "optimizer": {"state": {0: {"momentum": torch.ones(1000)}}},
                                           "task": {"memory": torch.ones(5000, 128)}})
    export_weights(tmp_path / "full.pt", tmp_path / "slim.pt")
    export_weights(tmp_path / "full.pt", tmp_path / "half.pt", half=True)
    slim = torch.load(tmp_path / "slim.pt", weights_only=True)
    assert "optimizer" not in slim and "task" not in slim and slim["epoch"] == 3
    assert (tmp_path / "slim.pt").stat().st_size < (tmp_path / "full.pt").stat().st_size / 5
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = model(x)["logits"]
        assert torch.equal(load_model(tmp_path / "slim.pt")[0](x)["logits"], want)
        half = load_model(tmp_path / "half.pt")[0](x)["logits"]
    assert not torch.equal(half, want) and torch.allclose(half, want, atol=1e-2)


def test_suite_rejects_an_unknown_experiment(capsys):
    with pytest.raises(SystemExit) as err:
        suite.main(["--only", "compresion"])
    assert err.value.code == 2
    assert "compresion" in capsys.readouterr().err


def test_suite_stops_at_once_when_the_cli_cannot_start(monkeypatch, capsys):
    """A checkout whose CLI cannot start (a dependency missing) would fail every step of every experiment: the suite
    says so in one line, naming the command it tried, and runs no experiment. This checkout's CLI starts."""
    assert suite.cli_problem() == ""
    broken = [sys.executable, "-c", "import sys; sys.exit(\"ModuleNotFoundError: No module named 'click'\")"]
    monkeypatch.setattr(suite, "launch_argv", lambda cmd: broken)
    ran, real_run = [], subprocess.run
    monkeypatch.setattr(suite.subprocess, "run", lambda cmd, **kw: ran.append(cmd) or real_run(cmd, **kw))
    assert suite.main(["--only", "compression"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No module named 'click'" in err and "pip install -e ." in err
    assert ran == [broken]


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


def test_an_unfinished_run_saved_in_the_repository_continues_in_a_fresh_checkout(tmp_path, monkeypatch):
    from benchmarks import partial

    runs, saved = tmp_path / "runs", tmp_path / "partial"
    run = runs / "teachers" / "t"
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"weights")
    (run / "metrics.csv").write_text("epoch,top1\n1,10\n2,20\n")
    (run / "events.out").write_text("not needed")
    (runs / "done").mkdir()
    (runs / "done" / "last.pt").write_bytes(b"w")
    (runs / "done" / "summary.json").write_text("{}")
    assert partial.save(runs, saved) == ["saved teachers/t: 2 epochs done, 0.0 MB"]
    assert sorted(p.name for p in (saved / "teachers" / "t").iterdir()) == ["last.pt", "metrics.csv"]
    import shutil

    shutil.rmtree(runs)  # the next session's checkout has no runs/
    assert partial.restore(runs / "teachers" / "t", runs, saved)
    assert (runs / "teachers" / "t" / "last.pt").read_bytes() == b"weights"
    assert not partial.restore(runs / "teachers" / "t", runs, saved)  # never over an existing checkpoint
    (runs / "teachers" / "t" / "summary.json").write_text("{}")  # it finished: the saved copy goes
    assert partial.save(runs, saved) == ["removed teachers/t: finished"]
    assert not (saved / "teachers" / "t").exists()


def test_a_saved_half_continues_only_on_the_kind_of_device_it_ran_on(tmp_path, monkeypatch, capsys):
    """A CPU run's saved copy is restored for a CPU run (or one whose config decides) and not for a `--device cuda`
    run, which starts afresh and says why: a resumed run must be the same seed on the same device."""
    from benchmarks import partial

    root = tmp_path / "runs"
    monkeypatch.setattr(partial, "PARTIAL", tmp_path / "partial")
    saved = tmp_path / "partial" / "x"
    saved.mkdir(parents=True)
    (saved / "last.pt").write_text("saved")
    (saved / "config.yaml").write_text("engine: {device: cpu, precision: fp32}\n")
    run_dir = root / "x"
    assert partial.refusal(run_dir, "cuda", root, tmp_path / "partial") == \
        "its saved half ran on cpu, this run is on cuda"
    assert partial.refusal(run_dir, "cuda:0", root, tmp_path / "partial")
    assert partial.refusal(run_dir, "cpu", root, tmp_path / "partial") is None
    assert partial.refusal(run_dir, None, root, tmp_path / "partial") is None
    assert partial.refusal(tmp_path / "elsewhere" / "x", "cuda", root, tmp_path / "partial") is None

    b = common.bench("t", common.parser("t", "").parse_args(["--runs", str(root)]))
    b.records = tmp_path / "records"
    run_dir.mkdir(parents=True)  # a fresh run folder, without a last.pt
    b.run_stage([recorder(run_dir / "done.txt", "--device", "cuda", resume_from=run_dir / "last.pt")])
    assert not (run_dir / "last.pt").exists() and (run_dir / "done.txt").read_text() == "--device cuda\n"
    assert "not restored" in capsys.readouterr().out
    (run_dir / "done.txt").unlink()
    b.run_stage([recorder(run_dir / "done.txt", "--device=cpu", resume_from=run_dir / "last.pt")])
    assert (run_dir / "last.pt").read_text() == "saved"
    assert (run_dir / "done.txt").read_text() == "--device=cpu --resume\n"
    assert partial.refusal(run_dir, "cuda", root, tmp_path / "partial") is None  # its own last.pt: nothing to restore


def test_crossmodal_commands_run_with_this_interpreter_and_records_read_the_same_everywhere():
    """A `crossmodal` step runs as `python -m cli` (a device machine has no console script) and every other
    command as it is; a record's command names paths inside the repository relative to it."""
    assert common.launch_argv(["crossmodal", "teach", "c.yaml"]) == [sys.executable, "-m", "cli", "teach", "c.yaml"]
    assert common.launch_argv(["python", "-c", "x"]) == ["python", "-c", "x"]
    inside, outside = str(common.REPO / ".gpu_state" / "runs"), "/elsewhere/runs"
    assert common.relative_command(["crossmodal", "teach", "--out-dir", inside, "--x", outside, "a b"]) == \
        "crossmodal teach --out-dir .gpu_state/runs --x /elsewhere/runs 'a b'"
    done = subprocess.run(common.launch_argv(["crossmodal", "--version"]), cwd=common.REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0 and "crossmodal" in done.stdout


def test_teacher_table_shows_short_trainings_in_seconds_and_a_gpu_run_names_its_gpu(monkeypatch):
    assert teachers.duration(12.4) == "12 s" and teachers.duration(89) == "89 s"
    assert teachers.duration(90) == "2 min" and teachers.duration(13380) == "223 min"
    assert common.machine_line("cpu") == common.machine_line() and "cores" in common.machine_line()
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert common.machine_line("cuda") == f"NVIDIA H200 (host: {common.machine_line()})"
    assert common.machine_line("cuda:0").startswith("NVIDIA H200 (host: ")


def test_crd_speed_writes_its_table_and_the_same_numbers_as_json(tmp_path):
    """benchmarks/crd_speed.py on a tiny setting: every variant of the loss-alone table (the CPU's default draw and
    the devices' keys + topk among them) is in the markdown and in the JSON beside it, with the same numbers."""
    import json

    out = tmp_path / "crd.md"
    subprocess.run([sys.executable, "benchmarks/crd_speed.py", "--threads", "1", "--ks", "16", "--num-rows", "200",
                    "--batch-size", "8", "--skip-models", "--steps", "2", "--warmup", "1", "--note", "test",
                    "--out", str(out)], cwd=common.REPO, check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    record = json.loads(out.with_suffix(".json").read_text())
    report = out.read_text()
    assert record["load"] == "test" and record["num_rows"] == 200 and record["training_step"] is None
    variants = [row["variant"] for row in record["loss_alone"]]
    assert variants[0].startswith("reference") and len(variants) == 6
    assert any("keys + topk" in v for v in variants)
    for row in record["loss_alone"]:
        assert f"| 16 | {row['variant']} | {row['ms_per_step']:.1f} |" in report
        assert row["ms_per_step"] > 0 and row["speedup_vs_reference"] > 0


def test_budget_reuses_the_ablation_and_compression_runs_and_reports_the_gap_per_seed(tmp_path, monkeypatch):
    """benchmarks.budget: its 5- and 15-pass runs are the very commands of the ablation and the compression table
    (their records are reused), its own runs are the same configs at 45 passes; the report pairs seeds."""
    import json

    from benchmarks import ablation, budget

    b = Bench(name="budget", runs=Path("runs"))
    teacher = "teachers/cifar10_resnet20.pt"
    steps, names = budget.steps_and_names(b, "d.h5", teacher, [0, 1])
    texts = {s.record: s.text for s in steps}
    assert len(texts) == len(steps) == 12
    assert texts["cifar10_resnet8_5ep_s0"] == ablation.vanilla_step(b, "d.h5").text
    k, t = ablation.K_DEFAULT, ablation.T_DEFAULT
    assert texts[ablation.run_name(k, t)] == ablation.crd_step(b, "d.h5", teacher, k, t,
                                                               f"loss_params.crd.nce_t={t}").text
    mid = compression.student_steps(b, compression.profile("cifar10"), teacher, [1], ["--set", "data.path=d.h5"], [],
                                    ["vanilla", "CRD"])
    assert [texts[s.record] for s in mid] == [s.text for s in mid]
    for seed in (0, 1):
        for method, config in (("vanilla", ablation.VANILLA_CONFIG), ("CRD", ablation.STUDENT_CONFIG)):
            cmd = next(s for s in steps if s.record == budget.long_names(seed)[method]).cmd
            assert cmd[2] == config and cmd[cmd.index("--epochs") + 1] == "45" and cmd[cmd.index("--seed") + 1] == str(seed)
    assert [s.record for s in steps[:2]] == list(budget.long_names(0).values())  # the deciding runs first

    monkeypatch.setattr(common, "REPO", tmp_path)
    monkeypatch.setattr(sys, "argv", ["budget"])
    b = Bench(name="budget", runs=tmp_path / "runs", records=tmp_path / "records")
    (tmp_path / "records").mkdir()
    top1 = {5: ([70.0, 71.0], [72.5, 72.0]), 15: ([79.5, 79.4], [79.1, 80.0]), 45: ([82.0, 82.2], [84.0, 83.0])}
    for passes, (vanilla, crd) in top1.items():
        for method, values in (("vanilla", vanilla), ("CRD", crd)):
            for run, value in zip(names[passes][method], values):
                (tmp_path / "records" / f"{run}.json").write_text(json.dumps(
                    {"summary": {"final_test_top1": value}, "budget": {"passes": float(passes)}, "command": run}))
    budget.report(b, {"path": teacher, "test_top1": 87.9, "passes": 39.94}, [0, 1], names)
    data = json.loads((tmp_path / "benchmarks/results/budget.json").read_text())["results"]["by_passes"]
    assert data["5"]["gap_per_seed"] == {"0": 2.5, "1": 1.0} and data["5"]["gap_mean"] == 1.75
    assert data["15"]["gap_per_seed"]["0"] == pytest.approx(-0.4) and data["45"]["gap_mean"] == 1.4
    assert data["45"]["gap_std"] == pytest.approx(0.72 ** 0.5, abs=1e-3)  # sample std of 2.0 and 0.8
    text = (tmp_path / "benchmarks/results/budget.md").read_text()
    assert "| 45 | 82.00, 82.20 | 82.10 | 84.00, 83.00 | 83.50 | +2.00, +0.80 | +1.40 |" in text
    assert "240" not in data and "240-pass point (benchmarks.gpu.queue, jobs budget_*) has not run yet" in text
    # The GPU queue's 240-pass runs join the table once both are done, with their device named.
    for method, top1, status in (("vanilla", 84.5, "done"), ("crd", 86.0, "partial")):
        (tmp_path / f"benchmarks/results/gpu_budget_cifar10_240ep_{method}_s0.json").write_text(json.dumps(
            {"status": status, "device": "NVIDIA H200", "summary": {"final_test_top1": top1}}))
    budget.report(b, {"path": teacher, "test_top1": 87.9, "passes": 39.94}, [0, 1], names)
    assert "240" not in json.loads((tmp_path / "benchmarks/results/budget.json").read_text())["results"]["by_passes"]
    path = tmp_path / "benchmarks/results/gpu_budget_cifar10_240ep_crd_s0.json"
    path.write_text(path.read_text().replace("partial", "done"))
    budget.report(b, {"path": teacher, "test_top1": 87.9, "passes": 39.94}, [0, 1], names)
    data = json.loads((tmp_path / "benchmarks/results/budget.json").read_text())["results"]["by_passes"]
    assert data["240"]["gap_per_seed"] == {"0": 1.5} and data["240"]["device"] == "NVIDIA H200"
    text = (tmp_path / "benchmarks/results/budget.md").read_text()
    assert "| 240 (GPU, seed 0 only) | 84.50 | 84.50 | 86.00 | 86.00 | +1.50 | +1.50 |" in text
    assert "The 240-pass row ran on NVIDIA H200" in text
    from benchmarks import readme  # the README's table of the same file

    text = readme.block(tmp_path / "benchmarks/results")
    assert "| 45 | 82.10 ± 0.14 (82.00, 82.20) | 83.50 ± 0.71 (84.00, 83.00) | +2.00, +0.80 | +1.40 ± 0.85 |" in text
    assert "| 240 (NVIDIA H200) | 84.50 ± 0.00 (84.50) | 86.00 ± 0.00 (86.00) | +1.50 | +1.50 ± 0.00 |" in text


def test_budget_so_far_shows_finished_runs_unfinished_epochs_and_gaps_only_between_finals(tmp_path, monkeypatch):
    import json

    from benchmarks import budget

    monkeypatch.setattr(common, "REPO", tmp_path)
    b = Bench(name="budget", runs=Path("runs"), records=tmp_path / "records")
    _, names = budget.steps_and_names(b, "d.h5", "t.pt", [0, 1])
    (tmp_path / "records").mkdir()
    for run, top1 in ((names[5]["vanilla"][0], 70.5), (names[5]["CRD"][0], 72.75), (names[45]["vanilla"][0], 81.0)):
        (tmp_path / "records" / f"{run}.json").write_text(json.dumps({"summary": {"final_test_top1": top1}}))
    running = tmp_path / "runs" / names[45]["CRD"][0]
    running.mkdir(parents=True)
    (running / "metrics.csv").write_text("epoch,lr,train_top1,test_top1\n1,0.05,30,40.5\n2,0.05,45,55.25\n")
    lines = budget.so_far(b, names, [0, 1]).splitlines()
    assert "| 5 | 0 | 70.50 | 72.75 | +2.25 |" in lines and "| 5 | 1 | - | - | - |" in lines
    assert "| 45 | 0 | 81.00 | unfinished: 55.25 at epoch 2 of 45 | - |" in lines


def test_quick_mode_lowers_crd_k_only_where_the_config_s_own_k_is_larger():
    """--quick's K 128 fits the mini sets; nyu18's config already asks for K 8 below its 10 frames, which stays."""
    b = Bench(name="t", quick=True, runs=Path("runs/quick"))
    cifar = b.train("distill", "configs/cpu/cifar10_resnet20_resnet8_crd.yaml", "a")
    nyu = b.train("distill", "configs/cpu/nyu18_rgb_to_depth_crd.yaml", "b")
    assert f"loss_params.crd.nce_k={common.QUICK_NCE_K}" in cifar.cmd
    assert not any("nce_k" in word for word in nyu.cmd)
    assert common._config_crd_k("configs/cpu/nyu18_rgb_to_depth_crd.yaml") == 8


def test_compression_so_far_tables_the_finished_students_and_their_claims(tmp_path):
    import json

    b = Bench(name="t", runs=Path("runs"), records=tmp_path)
    p = compression.profile("cifar10")
    done = {("vanilla", 0): 79.5, ("vanilla", 1): 79.3, ("CRD", 0): 80.5, ("CRD", 1): 81.3, ("KD", 0): 81.0}
    for (method, seed), top1 in done.items():
        (tmp_path / f"{compression.run_name(p, method, seed)}.json").write_text(
            json.dumps({"summary": {"final_test_top1": top1}}))
    text = compression.so_far(b, p, [0, 1, 2], ["vanilla", "KD", "CRD"])
    assert "| vanilla | 79.50 | 79.30 | - | 79.40 | 0.14 | 2 |" in text
    assert "| KD | 81.00 | - | - | 81.00 | 0.00 | 1 |" in text
    # CRD - vanilla = 1.5 over seeds 0, 1; Welch t = 1.5 / sqrt(0.02 / 2 + 0.32 / 2) = 3.64
    assert "| CRD > vanilla | 0, 1 | +1.50 | 3.64 |" in text
    assert "| CRD > KD | 0 | -0.50 | - |" in text and "CRD+KD" not in text


def test_crossmodal_seeds_run_each_seed_s_probes_beside_the_next_seed_s_trainings_and_test_the_claims(tmp_path):
    """benchmarks.crossmodal_imagenette: every step of a seed carries that seed; seed k's probes run in the stage of
    seed k+1's trainings (never before their own students); the claims are tested per probe over the seeds."""
    import json

    from benchmarks import crossmodal_imagenette as cm

    b = Bench(name="t", runs=Path("runs"), records=tmp_path)
    stages = cm.stages(b, {"path": "teachers/t.pt"}, "d.h5", [0, 1, 2])
    assert len(stages) == 4
    seeds_of = [sorted({s.cmd[s.cmd.index("--seed") + 1] for s in stage}) for stage in stages]
    assert seeds_of == [["0"], ["0", "1"], ["1", "2"], ["2"]]
    for stage in stages:
        for step in stage:
            assert step.record.endswith(f"_s{step.cmd[step.cmd.index('--seed') + 1]}")
            for needed in step.needs:  # a probe's student is trained in an earlier stage, under the same seed
                producer = next(i for i, st in enumerate(stages) for s in st if s.done.parent == needed.parent)
                assert producer < stages.index(stage) and needed.parent.name.endswith(step.record[-3:])
    assert sum(len(stage) for stage in stages) == 3 * (4 + 5)

    (tmp_path / "probe").mkdir()
    linear = {"CRD": [60.0, 61.0, 62.0], "KD": [55.0, 58.0, 56.0], "random": [59.0, 61.0, 60.0]}
    for seed in (0, 1):  # seed 2 not finished
        rows = {name: [] for name in ("ab_crd_linear", "ab_kd_linear")}
        rows["ab_crd_linear"] += [{"checkpoint": "runs/x/last.pt", "top1": linear["CRD"][seed]},
                                  {"checkpoint": cm.RANDOM, "top1": linear["random"][seed]}]
        rows["ab_kd_linear"].append({"checkpoint": "runs/y/last.pt", "top1": linear["KD"][seed]})
        for name, found in rows.items():
            (tmp_path / "probe" / f"{name}_s{seed}.json").write_text(json.dumps({"results": {"rows": found}}))
    numbers = cm.top1s(b, [0, 1, 2], so_far=True)
    assert numbers["CRD", "linear"] == {0: 60.0, 1: 61.0} and numbers["random", "linear"] == {0: 59.0, 1: 61.0}
    assert numbers["supervised", "linear"] == {} and ("supervised", "finetune") not in numbers
    found = {(c["claim"], c["probe"]): c for c in cm.claims(numbers)}
    assert set(found) == {("CRD > random", "linear"), ("CRD > KD", "linear")}
    # CRD - KD = 60.5 - 56.5 = 4.0 over seeds 0, 1; Welch t = 4 / sqrt(0.5 / 2 + 4.5 / 2) = 2.53
    assert found["CRD > KD", "linear"]["difference"] == 4.0 and found["CRD > KD", "linear"]["welch_t"] == 2.53
    assert found["CRD > KD", "linear"]["holds"] and found["CRD > random", "linear"]["seeds"] == [0, 1]
    assert not found["CRD > random", "linear"]["holds"]  # +0.5, t 0.45
    assert "| ab, CRD student of the L teacher | no (teacher's embedding) | 60.50 ± 0.71 (60.00, 61.00) | - |" in \
        "\n".join(cm.table(numbers))


def test_readme_results_block_is_the_one_the_committed_results_files_give():
    from benchmarks import readme

    assert readme.main(["--check"]) == 0, "README.md's results block is stale: run python -m benchmarks.readme"


def test_readme_block_renders_a_finished_compression_table_and_lists_the_unfinished(tmp_path, monkeypatch):
    """compression.report's results file -> the README's table (per-seed numbers, gains, claims), and an experiment
    without a results file is named with its command; a README without markers is refused, naming them."""
    import json
    from types import SimpleNamespace

    from benchmarks import readme

    monkeypatch.setattr(common, "REPO", tmp_path)
    monkeypatch.setattr(sys, "argv", ["compression"])
    b = Bench(name="compression_cifar10", runs=tmp_path / "runs", records=tmp_path / "records", module="compression")
    (tmp_path / "records").mkdir()
    p = compression.profile("cifar10")
    top1 = {"vanilla": [79.0, 80.0, 79.5], "KD": [81.0, 82.0, 81.5], "CRD": [80.0, 81.0, 80.5],
            "CRD+KD": [82.5, 82.0, 82.0]}
    budget = {"epochs": 15, "steps_per_epoch": 781, "batch": 64, "images_seen": 749760, "train_size": 50000,
              "passes": 15.0}
    for method, values in top1.items():
        for seed, value in enumerate(values):
            (tmp_path / "records" / f"{compression.run_name(p, method, seed)}.json").write_text(json.dumps(
                {"summary": {"final_test_top1": value}, "budget": budget, "command": "x"}))
    teacher = {"path": "teachers/t.pt", "test_top1": 87.9, "passes": 39.94}
    compression.report(b, p, teacher, [0, 1, 2], SimpleNamespace(dataset="cifar10", profile="cpu"), list(top1))
    text = readme.block(tmp_path / "benchmarks/results")
    assert "(`benchmarks/results/compression_cifar10.md`; `python -m benchmarks.compression`;" in text
    assert ("Budget: each student 15 epochs x 781 steps x 64 images (749,760 images seen, 15 passes over 50,000); "
            "teacher `teachers/t.pt` (39.94 passes, test top-1 87.90); seeds 0, 1, 2.") in text
    assert "| labels only (vanilla) | 79.50 ± 0.50 (79.00, 80.00, 79.50) | - |" in text
    assert "| CRD+KD | 82.17 ± 0.29 (82.50, 82.00, 82.00) | +2.67 |" in text
    # CRD - vanilla = 1.0, both stds 0.5: Welch t = 1 / sqrt(0.25 / 3 * 2) = 2.45
    assert "| CRD > vanilla | +1.00 | 2.45 | yes |" in text and "| CRD > KD | -1.00 | -2.45 | no |" in text
    assert "**Compression, Tiny-ImageNet-100: resnet20 -> resnet8**: not finished yet (`python -m " in text
    assert "During training" not in text  # the records carried no curves
    assert readme._during({"vanilla": {"1": 50.0, "2": 60.0, "3": 70.0}, "CRD": {"1": 49.0, "2": 63.5, "3": 70.25}}) \
        == ["", "During training (mean over the seeds): CRD above labels only at 2 of 3 epochs, by up to +3.50 "
                "(epoch 2); +0.25 at the last."]
    assert text.startswith(readme.BEGIN) and text.endswith(readme.END)
    with pytest.raises(SystemExit, match="markers"):
        readme.rewritten("# a README without the block\n", text)
    assert readme.rewritten(f"a\n{readme.BEGIN}\nold\n{readme.END}\nb\n", text) == f"a\n{text}\nb\n"


# ------------------------------------------------------------------------- speed benchmarks: JSON beside the table
def jpeg_archive(path: Path, side: int, counts: dict[str, int]) -> Path:
    """A .tgz of <root>/<split>/c<0|1>/NNNN.jpg: smooth side x side JPEGs, `counts` images per split folder."""
    import io
    import tarfile

    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    with tarfile.open(path, "w:gz") as tar:
        for split, n in counts.items():
            for i in range(n):
                image = np.stack([ramp[None].repeat(side, 0), ramp[:, None].repeat(side, 1),
                                  np.full((side, side), 80.0 * (i % 2))], -1)
                image = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
                data = cv2.imencode(".jpg", image)[1].tobytes()
                info = tarfile.TarInfo(f"tiny/{split}/c{i % 2}/{i:04d}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def stamped_record(out: Path, command: str) -> dict:
    """The JSON beside report `out`, checked for the fields every speed record carries."""
    import json
    import time

    import torch

    record = json.loads(out.with_suffix(".json").read_text())
    assert record["command"] == command
    assert record["machine"] == common.machine_line() and record["commit"] == common.git_commit()
    assert record["torch"].split("+")[0] == torch.__version__.split("+")[0]
    time.strptime(record["written"], "%Y-%m-%d %H:%M UTC")
    return record


def test_loader_throughput_writes_the_numbers_of_its_table_as_json(tmp_path, monkeypatch, make_prepared):
    from benchmarks import loader_throughput

    monkeypatch.setattr(loader_throughput, "BATCH", 8)  # every measurement at its smallest
    reads, train = loader_throughput.row_read_cost, loader_throughput.train_rate
    monkeypatch.setattr(loader_throughput, "row_read_cost", lambda path: reads(path, reads=20, rounds=1))
    monkeypatch.setattr(loader_throughput, "train_rate", lambda threads: train(1, steps=1))
    h5, out = make_prepared(splits={"train": 32}, size=32), tmp_path / "loader.md"
    loader_throughput.main(["--h5", str(h5), "--batches", "1", "--out", str(out)])
    record = stamped_record(out, f"python benchmarks/loader_throughput.py --h5 {h5} --batches 1 --out {out}")
    report = out.read_text()
    assert record["batch"] == 8 and record["data"]["n_train"] == 32 and len(record["loader"]) == 8
    for r in record["loader"]:
        assert (f"| {r['modalities']} | {r['workers']} | {'on' if r['preload'] else 'off'} | "
                f"{r['samples_per_s']:.0f} | {r['first_batch_s']:.2f} |") in report
    assert len(record["row_read_us"]) == 3
    for label, us in record["row_read_us"].items():
        assert f"- {label}: {us:.1f} us" in report
    for t in record["training"]:
        assert f"{t['threads']} thread(s): {t['images_per_s']:.0f} images/s" in report
    target = record["target"]
    assert (f"= {target['samples_per_s']:.0f} samples/s. rgb loader: {target['slowest_rgb_samples_per_s']:.0f} "
            f"(slowest setting) to {target['best_rgb_samples_per_s']:.0f} (best) samples/s, "
            f"{target['slowest_vs_training']:.1f}x to {target['best_vs_training']:.1f}x: {target['verdict']} the "
            "target.") in report


def test_loader_throughput_encoded_writes_the_numbers_of_its_table_as_json(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from benchmarks import loader_throughput
    from cli.main import app

    src, h5, out = jpeg_archive(tmp_path / "src.tgz", 224, {"train": 72, "val": 72}), tmp_path / "enc.h5", \
        tmp_path / "encoded.md"
    result = CliRunner().invoke(app, ["prepare", "imagefolder", str(src), "--out", str(h5), "--encoding", "jpeg",
                                      "-j", "1"])
    assert result.exit_code == 0, result.output
    monkeypatch.setattr(loader_throughput, "BATCH", 8)  # 8 timed batches of 8: more than the workers prefetch
    costs = loader_throughput.encoded_costs
    monkeypatch.setattr(loader_throughput, "encoded_costs", lambda path: costs(path, reads=16))
    loader_throughput.main(["--encoded", "--h5", str(h5), "--batches", "8", "--out", str(out)])
    record = stamped_record(out, f"python benchmarks/loader_throughput.py --encoded --h5 {h5} --batches 8 "
                                 f"--out {out}")
    report = out.read_text()
    assert [(r["modalities"], r["split"], r["workers"]) for r in record["loader"]] == [
        ("rgb", "train", 0), ("rgb", "train", 2), ("rgb", "test", 2), ("L,ab (derived)", "train", 2)]
    for r in record["loader"]:
        assert (f"| {r['modalities']} | {r['transform']} | {r['split']} | {r['workers']} | {r['samples_per_s']:.0f} | "
                f"{r['first_batch_s']:.2f} | {r['cpu_ms_per_sample']:.2f} | {r['idle_samples_per_s']:.0f} "
                f"({r['idle_cores']} core") in report
    assert len(record["per_image_us"]) == 3
    for label, us in record["per_image_us"].items():
        assert f"- {label}: {us:.0f} us" in report
    target = record["target"]
    assert target["measured_samples_per_s"] == record["loader"][1]["samples_per_s"]
    assert (f"Measured here: {target['measured_samples_per_s']:.0f} samples/s with 2 workers: {target['verdict']} "
            f"the target at this load. The loader's processes spent {target['cpu_ms_per_sample']:.2f} CPU ms per "
            f"sample, so two cores of their own would give about {target['two_idle_cores_samples_per_s']:.0f} "
            "samples/s") in report


def test_prepare_throughput_writes_the_numbers_of_its_tables_as_json(tmp_path):
    from benchmarks import prepare_throughput

    src, out = jpeg_archive(tmp_path / "src.tgz", 32, {"train": 8, "test": 4}), tmp_path / "prepare.md"
    prepare_throughput.main(["--src", str(src), "--workers", "1", "--out", str(out)])
    record = stamped_record(out, f"python benchmarks/prepare_throughput.py --src {src} --workers 1 --out {out}")
    report = out.read_text()
    assert record["source"] == str(src) and [r["workers"] for r in record["runs"]] == [1]
    assert record["images"] == 12 and "(CIFAR-10, 12 JPEGs" in report  # counted in the file written, not assumed
    assert record["runs"][0]["images_per_s"] == 12 / record["runs"][0]["wall"]
    for r in record["runs"]:
        assert (f"| {r['workers']} | {r['wall']:.1f} | {r['images_per_s']:,.0f} | {r['cpu']:.1f} | "
                f"{r['cpu_per_wall']:.2f} | {r['images_per_cpu_s']:,.0f} | {r['write_seconds']:.1f} | "
                f"{r['load_before']:.1f} | {r['size_mb']:.0f} |") in report
        assert r["command"] in report and "out" not in r
    assert [r["filter"] for r in record["compression"]] == ["none", "lzf", "gzip level 1"]
    for r in record["compression"]:
        assert (f"| {r['filter']} | {r['write']:.2f} | {r['write_vs_none']:.1f}x | {r['mb']:.0f} | "
                f"{r['mb_change_vs_none']:+.0%} | {r['read_ms']:.3f} |") in report
    assert record["others"] and all(line in report for line in record["others"])


def test_prepare_throughput_encoded_writes_the_numbers_of_its_table_as_json(tmp_path, monkeypatch):
    from benchmarks import prepare_throughput

    src = jpeg_archive(tmp_path / "src.tgz", 64, {"train": 4, "val": 4})
    monkeypatch.setattr(prepare_throughput, "ENCODED_SRC", src)
    out = tmp_path / "encoded.md"
    prepare_throughput.main(["--encoded", "--workers", "1", "--out", str(out)])
    record = stamped_record(out, f"python benchmarks/prepare_throughput.py --encoded --workers 1 --out {out}")
    report = out.read_text()
    assert record["source"] == str(src) and len(record["runs"]) == 3
    assert [r["images"] for r in record["runs"]] == [8, 8, 8]  # rows written: 4 train + 4 val, from the files
    for r in record["runs"]:
        assert (f"| {r['input']} | {r['images']} | {r['write']:.2f} | {r['write_rate']:,.0f} | {r['wall']:.2f} | "
                f"{r['end_to_end_rate']:,.0f} | {r['cpu']:.2f} | {r['per_cpu_s']:,.0f} | {r['load_before']:.1f} | "
                f"{r['mb']:.0f} |") in report


def test_prepare_throughput_refuses_a_run_that_prints_no_write_time():
    from benchmarks import prepare_throughput

    with pytest.raises(SystemExit, match="printed no 'in N s' write time"):
        prepare_throughput.write_seconds("wrote 12 images\n", ["python", "-m", "cli", "prepare"])
    assert prepare_throughput.write_seconds("wrote 12 images in 1.25 s\n", []) == 1.25


def test_teach_throughput_writes_its_table_and_the_numbers_as_json(tmp_path):
    from benchmarks import teach_throughput
    from crossmodal.engine.logging import get_logger

    out, level = tmp_path / "teach.md", get_logger().level
    argv = ["--archs", "resnet8", "--steps", "1", "--repeats", "1", "--threads", "1", "--out", str(out)]
    try:
        teach_throughput.main(argv)
    finally:
        get_logger().setLevel(level)
    record = stamped_record(out, "python benchmarks/teach_throughput.py " + " ".join(argv))
    report = out.read_text()
    assert record["threads"] == 1 and record["data"] == "synthetic" and len(record["results"]) == 1
    r = record["results"][0]
    assert r["arch"] == "resnet8" and len(r["engine_per_repeat"]) == len(r["bare_per_repeat"]) == 1
    assert r["engine_over_bare"] == r["engine_images_per_s"] / r["bare_images_per_s"]
    assert (f"| resnet8 | 1 | {r['engine_images_per_s']:.1f} | {r['bare_images_per_s']:.1f} | "
            f"{r['engine_over_bare']:.3f} |") in report
    assert f"- resnet8: ({r['engine_per_repeat'][0]:.1f}, {r['bare_per_repeat'][0]:.1f})" in report


def test_gpu_check_writes_the_numbers_of_its_report_as_json(tmp_path, monkeypatch):
    """The script's own bookkeeping on a CPU: the commands it would run are stood in for (each run's last epoch is
    made up, different per run; crd_speed writes a small record), the data and CRD checks run for real."""
    import itertools
    import json

    from benchmarks import gpu_check

    speed = {"loss_alone": [{"k": 512, "variant": "ours, shared", "ms_per_step": 1.25}], "training_step": None}

    def sh(cmd, **kwargs):
        if "benchmarks/crd_speed.py" in cmd:
            out = Path(cmd[cmd.index("--out") + 1])
            out.write_text("# CRD speed (cpu)\n\n| K | variant | ms/step |\n|---|---|---|\n| 512 | ours, shared | 1.2 |\n")
            out.with_suffix(".json").write_text(json.dumps(speed))
        return ""

    count = itertools.count(1)
    monkeypatch.setattr(gpu_check, "sh", sh)
    monkeypatch.setattr(gpu_check, "last_epoch", lambda run_dir: (lambda k: {
        "images_per_s": 1000.0 + 137.25 * k, "test_top1": 10.0 + k / 3, "train_loss": 1.0 / k})(next(count)))
    out = tmp_path / "gpu.md"
    argv = ["--device", "cpu", "--quick", "--skip", "ddp", "--work", str(tmp_path / "work"), "--out", str(out)]
    assert gpu_check.main(argv) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    report = out.read_text()
    assert record["command"] == "bash benchmarks/gpu_check.sh " + " ".join(argv)
    assert record["machine"] == common.machine_line() and record["commit"] == common.git_commit()
    assert record["torch"] == __import__("torch").__version__ and record["written"] in report
    assert f"{record['passed']} of {len(record['checks'])} checks passed" in report and record["passed"] == 9
    for c in record["checks"]:
        assert f"| {c['check']} | PASS | {c['seconds']:.0f} | {c['detail']} |" in report
    rows = record["teach"]["rows"]
    assert [r["setting"] for r in rows] == ["fp32", "bf16", "bf16 + channels_last", "bf16 + channels_last + compile"]
    assert rows[0]["vs_fp32"] == 1.0 and rows[3]["vs_fp32"] == rows[3]["images_per_s"] / rows[0]["images_per_s"]
    for r in rows:
        assert (f"| {r['setting']} | {r['images_per_s']:.0f} | {r['vs_fp32']:.2f}x | {r['final_train_loss']:.3f} | "
                f"{r['test_top1']:.2f} | {r['wall_s']:.0f} |") in report
    rows = record["distill"]["rows"]
    assert [r["losses"] for r in rows] == ["+KD", "+KD+CRD"] and record["distill"]["k"] == 512
    for r in rows:
        assert (f"| {r['losses']} | {r['images_per_s']:.0f} | {r['time_vs_kd']:.2f}x time | "
                f"{r['final_train_loss']:.3f} | {r['test_top1']:.2f} |") in report
    assert record["crd_speed"] == speed and "| 512 | ours, shared | 1.2 |" in report


def test_records_carry_each_run_s_curve_and_compression_tables_it_during_training(tmp_path):
    """A finished run's record keeps its per-epoch curve from metrics.csv; the compression report tables the
    seeds' mean at about six epochs and says where CRD's mean leads the labels-only mean."""
    run = tmp_path / "m.csv"
    run.write_text("epoch,lr,train_loss,train_top1,test_top1\n1,0.05,2.0,30.0,40.5\n2,0.01,1.5,50.0,55.25\n")
    assert common.read_curve(run) == {"epoch": [1, 2], "lr": [0.05, 0.01], "train_top1": [30.0, 50.0],
                                      "test_top1": [40.5, 55.25]}
    assert common.read_curve(tmp_path / "absent.csv") is None

    def curve(values):
        return {"epoch": list(range(1, len(values) + 1)), "test_top1": values}

    vanilla = [curve([40.0 + e for e in range(10)]), curve([42.0 + e for e in range(10)])]
    crd = [curve([45.0 + e - (e if e > 6 else 0) for e in range(10)]), curve([45.0 + e for e in range(10)])]
    text = "\n".join(compression.during_training({"vanilla": vanilla, "CRD": crd}))
    assert "| method | epoch 1 | epoch 3 | epoch 5 | epoch 6 | epoch 8 | epoch 10 |" in text
    assert "| vanilla | 41.00 | 43.00 | 45.00 | 46.00 | 48.00 | 50.00 |" in text
    # CRD seed 0 falls to 45 from epoch 8 on: means 48.5 (epoch 8), 49.0 (9, level with vanilla), 49.5 (10)
    assert "| CRD | 45.00 | 47.00 | 49.00 | 50.00 | 48.50 | 49.50 |" in text
    assert "above the labels-only mean at 8 of 10 epochs (widest: +4.00 at epoch 1; at the last epoch -0.50)" in text
    assert compression.mean_curve([curve([1.0, 2.0]), curve([3.0])]) is None  # different epochs: no mean
    assert "not tabled (no per-epoch curve in the records of CRD)" in "\n".join(
        compression.during_training({"vanilla": vanilla, "CRD": [None, crd[1]]}))
