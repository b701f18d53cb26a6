"""`quickstart`: the sample-photo reader's honest split, and the whole demo on a tiny budget (the full one is slow)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import app
from crossmodal.errors import ConfigError
from cli.quickstart import REAL_DATASET_COMMANDS, run_quickstart
from data_prep.samples import PHOTOS, load_photo, read_sample_photos, resize_short_side, split_cells

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
NETWORKS = ["teacher", "CRD student", "random-init student"]


@pytest.fixture(scope="module")
def source():
    return read_sample_photos(train_per_class=20, test_per_class=6, seed=3)


def overlaps(a, b) -> bool:
    """Whether two crops share a pixel."""
    return (a.top < b.top + b.size and b.top < a.top + a.size and a.left < b.left + b.size and b.left < a.left + a.size)


def test_photos_load_with_the_network_blocked(monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for name in PHOTOS:
        image = load_photo(name)
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8 and min(image.shape[:2]) >= 192


def test_split_cells_puts_diagonal_stripes_in_test():
    cells = split_cells(192, 200, 48)  # 4 x 4 whole cells; the 8 px strip on the right is unused
    assert cells["test"] == [(0, 48), (48, 0), (96, 144), (144, 96)]
    assert len(cells["train"]) == 12


def test_sample_photos_counts_and_classes(source):
    assert source.class_names == list(PHOTOS) and len(PHOTOS) == 8
    counts = {s.name: s.count for s in source.splits}
    assert counts == {"train": 8 * 20, "test": 8 * 6}
    for split in source.splits:
        assert len(split.items) == split.count
        assert np.bincount([c.label for c in split.items], minlength=8).tolist() == [split.count // 8] * 8


def test_train_and_test_crops_never_share_a_pixel(source):
    train, test = (s.items for s in source.splits)
    for photo in PHOTOS:
        train_crops = [c for c in train if c.photo == photo]
        test_crops = [c for c in test if c.photo == photo]
        assert not any(overlaps(a, b) for a in train_crops for b in test_crops), photo
        # ... because each crop lies inside one cell of its own split.
        height, width = resize_short_side(load_photo(photo), 192).shape[:2]
        cells = split_cells(height, width, 48)
        for split, crops in (("train", train_crops), ("test", test_crops)):
            for c in crops:
                cell = (c.top // 48 * 48, c.left // 48 * 48)
                assert cell in cells[split] and c.top + c.size <= cell[0] + 48 and c.left + c.size <= cell[1] + 48


def test_decode_returns_the_crop_pixels_and_label(source):
    test = source.splits[1]
    crop = test.items[-1]
    record = test.decode(crop)
    image = resize_short_side(load_photo(crop.photo), 192)
    assert record["rgb"].shape == (32, 32, 3) and record["rgb"].dtype == np.uint8
    assert np.array_equal(record["rgb"], image[crop.top:crop.top + 32, crop.left:crop.left + 32])
    assert record["label"] == list(PHOTOS).index(crop.photo)


def test_crops_follow_the_seed(source):
    again = read_sample_photos(train_per_class=20, test_per_class=6, seed=3)
    other = read_sample_photos(train_per_class=20, test_per_class=6, seed=4)
    assert again.splits[0].items == source.splits[0].items
    assert other.splits[0].items != source.splits[0].items


def test_bad_reader_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="crop <= cell"):
        read_sample_photos(crop=64, cell=48)
    with pytest.raises(ConfigError, match="at least 1"):
        read_sample_photos(test_per_class=0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs") / "quickstart"
    lines: list[str] = []
    results = run_quickstart(out, budget="tiny", device="cpu", echo=lines.append)
    return out, results, "\n".join(lines)


def test_tiny_quickstart_prints_stages_table_and_real_commands(tiny_run):
    out, results, printed = tiny_run
    for stage in ("[1/4] prepare", "[2/4] teach", "[3/4] distill", "[4/4] probe"):
        assert stage in printed
    assert [r["network"] for r in results["rows"]] == NETWORKS
    assert [r["modality"] for r in results["rows"]] == ["L", "ab", "ab"]
    assert all(r["arch"] == "resnet8" for r in results["rows"])
    # Every row's scores are those its probe run stored (a top-1 hit is also a top-5 hit).
    stored = [(row["top1"], row["top5"]) for path in sorted((out / "probe").glob("*/results.json"))
              for row in json.loads(path.read_text())["rows"]]
    for r in results["rows"]:
        assert (r["top1"], r["top5"]) in stored and r["top1"] <= r["top5"]
    table_lines = [line for line in printed.splitlines() if re.match(f"({'|'.join(NETWORKS)})  ", line)]
    assert len(table_lines) == 3
    for line, row in zip(table_lines, results["rows"]):
        assert f"{row['top1']:.1f}%" in line
    assert "crossmodal distill configs/stl10/L_to_ab_crd.yaml" in printed


def test_tiny_quickstart_writes_its_files(tiny_run):
    out, results, _ = tiny_run
    for path in ("quickstart.json", "data/samples.h5", "runs/teacher_L/last.pt", "runs/student_ab_crd/last.pt",
                 "runs/student_ab_crd/summary.json", "probe/student_ab/results.json", "results.md"):
        assert (out / path).is_file(), path
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == results["rows"] and saved["seed"] == 0 and saved["budget"]["train_per_class"] == 8
    assert saved["rows"][1]["checkpoint"].endswith("student_ab_crd/last.pt")
    from crossmodal.engine import load_checkpoint

    ckpt = load_checkpoint(out / "runs" / "student_ab_crd" / "last.pt")
    assert ckpt["meta"]["modality"] == "ab" and ckpt["task_meta"]["losses"] == {"crd": 1.0}


def test_rerun_reuses_finished_stages_and_resumes_an_unfinished_one(tiny_run):
    out, results, _ = tiny_run
    teacher = out / "runs" / "teacher_L" / "last.pt"
    stamp = teacher.stat().st_mtime_ns
    # An interruption after the distill run's last checkpoint but before its summary and the probes.
    (out / "runs" / "student_ab_crd" / "summary.json").unlink()
    (out / "probe" / "student_ab" / "results.json").unlink()
    lines: list[str] = []
    again = run_quickstart(out, budget="tiny", device="cpu", echo=lines.append)
    printed = "\n".join(lines)
    assert printed.count("reused") == 2 and "resumed" in printed  # prepare and teach reused, distill resumed
    assert teacher.stat().st_mtime_ns == stamp
    assert again["rows"] == results["rows"]  # same checkpoints, same cached features, same seeded probe


def test_other_seed_in_same_folder_needs_force(tiny_run):
    out, _, _ = tiny_run
    with pytest.raises(ConfigError, match="--force"):
        run_quickstart(out, seed=1, budget="tiny", device="cpu", echo=lambda line: None)


def test_cli_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, ["quickstart", "--out-dir", str(tmp_path), "--tiny", "--force"])
    assert result.exit_code == 2 and "no quickstart.json" in result.output
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_cli_force_starts_over(tmp_path):
    out = tmp_path / "qs"
    runner = CliRunner()
    first = runner.invoke(app, ["quickstart", "--out-dir", str(out), "--tiny", "--device", "cpu"])
    assert first.exit_code == 0, first.output
    stamp = (out / "runs" / "teacher_L" / "last.pt").stat().st_mtime_ns
    second = runner.invoke(app, ["quickstart", "--out-dir", str(out), "--tiny", "--device", "cpu", "--seed", "1",
                                 "--force"])
    assert second.exit_code == 0, second.output
    assert "reused" not in second.output
    assert json.loads((out / "quickstart.json").read_text())["seed"] == 1
    assert (out / "runs" / "teacher_L" / "last.pt").stat().st_mtime_ns != stamp


def test_printed_real_dataset_configs_exist():
    configs = re.findall(r"configs/\S+\.yaml", REAL_DATASET_COMMANDS)
    assert len(configs) >= 6
    for config in configs:
        assert (REPO / config).is_file(), config


@pytest.mark.slow
def test_full_quickstart_crd_student_beats_random_init(tmp_path):
    results = run_quickstart(tmp_path / "quickstart", device="cpu", echo=lambda line: None)
    teacher, student, random_init = (r["top1"] for r in results["rows"])
    assert student > random_init + 5.0, results["rows"]
    assert teacher > 100 / 8 + 30.0, results["rows"]
