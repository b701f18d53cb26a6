"""Bad input to `crossmodal prepare`: one-line error naming the file, exit status 2, nothing left on disk."""
from __future__ import annotations

import logging
import shutil
import tarfile
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import data_prep.images
from cli.main import app
from crossmodal.data.schema import open_prepared
from crossmodal.errors import ConfigError, DataError
from data_prep.images import read_imagefolder
from data_prep.writer import write_prepared


def prepare(*args):
    """Run `crossmodal prepare ARGS` in-process."""
    return CliRunner().invoke(app, ["prepare", *map(str, args)])


def make_folder(root: Path, per_class: int = 3, splits=("train", "test"), classes=("cat", "dog"), side=8) -> Path:
    """A small <root>/<split>/<class>/<n>.png tree (error handling does not depend on image content)."""
    rng = np.random.default_rng(0)
    for split in splits:
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                image = rng.integers(0, 256, (side, side, 3), np.uint8)
                (root / split / cls / f"{i}.png").write_bytes(cv2.imencode(".png", image)[1].tobytes())
    return root


def assert_failed_cleanly(result, *fragments: str, out_dir: Path) -> None:
    """Exit status 2, one `error:` line holding every fragment, and an empty output folder (no temp file)."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0]
    assert list(out_dir.iterdir()) == []


@pytest.fixture
def out_dir(tmp_path) -> Path:
    """An empty folder for the output, so a leftover temp file would show."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def test_missing_root(tmp_path, out_dir):
    result = prepare("imagefolder", tmp_path / "nowhere", "--out", out_dir / "x.h5")
    assert_failed_cleanly(result, str(tmp_path / "nowhere"), "no such file or directory", out_dir=out_dir)


def test_empty_root(tmp_path, out_dir):
    (tmp_path / "empty").mkdir()
    result = prepare("imagefolder", tmp_path / "empty", "--out", out_dir / "x.h5")
    assert_failed_cleanly(result, str(tmp_path / "empty"), "no images laid out as <split>/<class>/<image>",
                          out_dir=out_dir)


def test_missing_cifar_folder_suggests_download(tmp_path, out_dir):
    result = prepare("cifar10", tmp_path, "--out", out_dir / "x.h5")
    assert_failed_cleanly(result, "no cifar-10-batches-py folder", "--download", out_dir=out_dir)


@pytest.mark.parametrize("kind", ["gztar", "tar", "zip"])
def test_truncated_archive(tmp_path, out_dir, kind):
    archive = Path(shutil.make_archive(str(tmp_path / "data"), kind, make_folder(tmp_path / "data")))
    cut = tmp_path / f"cut-{archive.name}"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size * 2 // 3])
    result = prepare("imagefolder", cut, "--out", out_dir / "x.h5")
    assert_failed_cleanly(result, str(cut), "truncated", out_dir=out_dir)


@pytest.mark.parametrize("kind", ["gztar", "tar"])
def test_corrupt_archive(tmp_path, out_dir, kind):
    archive = Path(shutil.make_archive(str(tmp_path / "data"), kind, make_folder(tmp_path / "data")))
    data = bytearray(archive.read_bytes())
    if kind == "gztar":  # damage the compressed stream
        start = len(data) // 2
    else:  # damage only the name in a member's header: the parse succeeds, the header checksum does not
        with tarfile.open(archive) as listing:
            start = [m for m in listing.getmembers() if m.isfile()][2].offset + 5
    data[start:start + 20] = bytes(b ^ 0x5A for b in data[start:start + 20])
    archive.write_bytes(bytes(data))
    result = prepare("imagefolder", archive, "--out", out_dir / "x.h5")
    assert_failed_cleanly(result, str(archive), "corrupt", out_dir=out_dir)


def test_split_with_no_images(tmp_path, out_dir):
    root = make_folder(tmp_path / "data", splits=("train",))
    (root / "test" / "cat").mkdir(parents=True)
    (root / "test" / "cat" / "notes.txt").write_text("no images here")
    result = prepare("imagefolder", root, "--out", out_dir / "x.h5")
    assert_failed_cleanly(result, str(root / "test"), "split folder has no images", out_dir=out_dir)


def test_unreadable_image_is_skipped_warned_and_counted(tmp_path, out_dir, caplog):
    root = make_folder(tmp_path / "data")
    bad = root / "train" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    out = out_dir / "x.h5"
    with caplog.at_level(logging.WARNING):
        summary = write_prepared(read_imagefolder(root), out, ["rgb"], workers=2)
    assert any(str(bad) in message and "not a readable image" in message for message in caplog.messages)
    assert summary["splits"]["train"]["n"] == 6
    assert summary["provenance"]["skipped"] == {"train": 1, "test": 0}
    assert summary["provenance"]["skipped_files"] == {"train": [str(bad)]}
    with h5py.File(out, "r") as f:  # rows were trimmed, no empty row where the bad file would have been
        assert f["train/rgb"].shape == (6, 3, 8, 8) and f["train/rgb"][:].reshape(6, -1).max(axis=1).min() > 0
        assert f["train/label"][:].tolist() == [0, 0, 0, 1, 1, 1]


def test_unreadable_image_fails_under_strict(tmp_path, out_dir):
    root = make_folder(tmp_path / "data")
    (root / "test" / "cat" / "zero.jpg").write_bytes(b"")
    result = prepare("imagefolder", root, "--out", out_dir / "x.h5", "--strict")
    assert_failed_cleanly(result, str(root / "test" / "cat" / "zero.jpg"), "not a readable image", out_dir=out_dir)


def test_output_folder_must_exist(tmp_path):
    root = make_folder(tmp_path / "data")
    result = prepare("imagefolder", root, "--out", tmp_path / "missing" / "x.h5")
    assert result.exit_code == 2
    assert f"output folder {tmp_path / 'missing'} does not exist" in result.output
    assert not (tmp_path / "missing").exists()


def test_write_failing_part_way_leaves_nothing(tmp_path, out_dir, monkeypatch):
    root = make_folder(tmp_path / "data", per_class=300)  # 600 train images: several blocks
    real_setitem, calls = h5py.Dataset.__setitem__, []

    def failing_setitem(self, key, value):
        calls.append(key)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_setitem(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", failing_setitem)
    result = prepare("imagefolder", root, "--out", out_dir / "x.h5", "-m", "rgb", "-j", 2)
    assert_failed_cleanly(result, str(out_dir / "x.h5"), "writing failed", "No space left on device", out_dir=out_dir)
    assert len(calls) == 3


def test_failed_rewrite_keeps_the_old_file(tmp_path, out_dir):
    root = make_folder(tmp_path / "data")
    out = out_dir / "x.h5"
    write_prepared(read_imagefolder(root), out, ["rgb"], workers=1)
    before = out.read_bytes()
    (root / "train" / "cat" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="bad.png"):
        write_prepared(read_imagefolder(root), out, ["rgb"], force=True, strict=True)
    assert out.read_bytes() == before and [p.name for p in out_dir.iterdir()] == ["x.h5"]


def test_ctrl_c_removes_the_temporary_file(tmp_path, out_dir, monkeypatch):
    root = make_folder(tmp_path / "data", per_class=300)
    real_decode, calls = data_prep.images.decode_image, []

    def interrupted_decode(data):
        calls.append(1)
        if len(calls) == 400:  # mid-way through train, after the first blocks were written
            raise KeyboardInterrupt
        return real_decode(data)

    monkeypatch.setattr(data_prep.images, "decode_image", interrupted_decode)
    with pytest.raises(KeyboardInterrupt):
        write_prepared(read_imagefolder(root), out_dir / "x.h5", ["rgb"], workers=2)
    assert list(out_dir.iterdir()) == []
    calls.clear()
    result = prepare("imagefolder", root, "--out", out_dir / "x.h5", "-m", "rgb")
    assert result.exit_code == 130 and "interrupted" in result.output
    assert list(out_dir.iterdir()) == []


def test_images_of_different_sizes_need_size(tmp_path, out_dir):
    root = make_folder(tmp_path / "data")
    odd = root / "train" / "cat" / "wide.png"
    odd.write_bytes(cv2.imencode(".png", np.full((8, 12, 3), 128, np.uint8))[1].tobytes())
    result = prepare("imagefolder", root, "--out", out_dir / "x.h5")
    assert_failed_cleanly(result, str(odd), "12x8", "--size", out_dir=out_dir)
    assert prepare("imagefolder", root, "--out", out_dir / "x.h5", "--size", 8).exit_code == 0
    assert open_prepared(out_dir / "x.h5")[1]["splits"]["train"]["modalities"]["rgb"] == (3, 8, 8)


@pytest.mark.parametrize("modalities, message", [
    ("rgb,xyz", "unknown modality 'xyz'"),
    ("rgb,depth", "modality 'depth' is not available from imagefolder (it gives: rgb, L, ab)"),
])
def test_modality_the_source_cannot_give(tmp_path, out_dir, modalities, message):
    root = make_folder(tmp_path / "data")
    result = prepare("imagefolder", root, "--out", out_dir / "x.h5", "--modalities", modalities)
    assert_failed_cleanly(result, message, out_dir=out_dir)


def test_library_errors_are_crossmodal_errors(tmp_path, out_dir):
    root = make_folder(tmp_path / "data")
    with pytest.raises(ConfigError, match="hha"):
        write_prepared(read_imagefolder(root), out_dir / "x.h5", ["hha"])
    with pytest.raises(DataError, match="not a folder, tar"):
        read_imagefolder(root / "train" / "cat" / "0.png")


def test_class_folder_missing_from_train(tmp_path, out_dir):
    root = make_folder(tmp_path / "data")
    make_folder(root / "extra", splits=("test",), classes=("horse",))  # builds data/extra/test/horse
    shutil.move(root / "extra" / "test" / "horse", root / "test" / "horse")
    shutil.rmtree(root / "extra")
    result = prepare("imagefolder", root, "--out", out_dir / "x.h5")
    assert_failed_cleanly(result, str(root / "test" / "horse"), "not in train's classes", out_dir=out_dir)


def test_tar_with_a_single_gzip_member_that_is_not_a_tar(tmp_path, out_dir):
    import gzip

    fake = tmp_path / "images.tgz"
    fake.write_bytes(gzip.compress(b"just some text, not a tar archive" * 40))
    result = prepare("imagefolder", fake, "--out", out_dir / "x.h5")
    assert_failed_cleanly(result, str(fake), "not a tar archive", out_dir=out_dir)
    assert tarfile.is_tarfile(fake) is False


def test_only_splits_names_an_existing_split(tmp_path, out_dir):
    root = make_folder(tmp_path / "data")
    result = prepare("imagefolder", root, "--out", out_dir / "x.h5", "--only-splits", "train,unlabeled")
    assert_failed_cleanly(result, "--only-splits", "no split 'unlabeled'", "train, test", out_dir=out_dir)
