"""read_rgbd: the real nyu18 folder (splits, metres, segmentation) and one clear error per bad input."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from crossmodal.errors import DataError
from data_prep.rgbd import read_class_names, read_rgbd

H, W = 12, 16


def _write_frame(root: Path, name: str, size=(H, W), depth_dtype=np.uint16, label=None) -> None:
    """rgb/<name>.png (uint8) and depth/<name>.png (millimetres); optional label13/<name>.png."""
    h, w = size
    rng = np.random.default_rng(int(name))
    (root / "rgb").mkdir(parents=True, exist_ok=True)
    (root / "depth").mkdir(exist_ok=True)
    assert cv2.imwrite(str(root / "rgb" / f"{name}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    depth = rng.integers(0, 5000, (h, w)).astype(depth_dtype)
    assert cv2.imwrite(str(root / "depth" / f"{name}.png"), depth)
    if label is not None:
        (root / "label13").mkdir(exist_ok=True)
        assert cv2.imwrite(str(root / "label13" / f"{name}.png"), np.full((h, w), label, np.uint8))


def _decode_all(source) -> dict[str, list[dict]]:
    return {s.name: [s.decode(item) for item in s.items] for s in source.splits}


# ---- the real folder ------------------------------------------------------------------------

@pytest.fixture
def nyu18(shared_data) -> Path:
    return shared_data / "nyu18"


def test_nyu18_splits_classes_and_modalities(nyu18):
    source = read_rgbd(nyu18)
    assert {s.name: s.count for s in source.splits} == {"train": 10, "test": 8}
    assert sum(s.count for s in source.splits) == 18
    test_frames = [frame.name for frame in next(s for s in source.splits if s.name == "test").items]
    assert test_frames == ["0001", "0002", "0009", "0014", "0015", "0016", "0017", "0018"]
    assert source.raw_modalities == {"rgb", "depth", "hha", "segmentation"}
    assert source.class_names[:3] == ["unlabeled", "bed", "books"] and len(source.class_names) == 14
    assert source.provenance["labeled_frames"] == {"train": 0, "test": 8}


def test_nyu18_records_match_the_pngs(nyu18):
    source = read_rgbd(nyu18)
    by_split = {s.name: s for s in source.splits}
    test_split, train_split = by_split["test"], by_split["train"]

    record = test_split.decode(test_split.items[0])  # frame 0001, labeled
    depth_mm = cv2.imread(str(nyu18 / "depth" / "0001.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(record["depth"], depth_mm.astype(np.float32) / np.float32(1000))
    assert record["depth"].dtype == np.float32 and 0.5 < record["depth"].mean() < 10  # metres, not mm
    rgb_bgr = cv2.imread(str(nyu18 / "rgb" / "0001.png"))
    np.testing.assert_array_equal(record["rgb"], rgb_bgr[:, :, ::-1])
    label = cv2.imread(str(nyu18 / "label13" / "0001.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(record["segmentation"], label.astype(np.int16))
    assert record["segmentation"].dtype == np.int16 and record["segmentation"].max() > 0
    assert record["hha"].shape == (480, 640, 3) and record["label"] == -1

    unlabeled = train_split.decode(train_split.items[0])  # frame 0003, no label PNG
    assert unlabeled["segmentation"].shape == (480, 640) and not unlabeled["segmentation"].any()


# ---- layout choices on small folders ------------------------------------------------------

def test_without_split_file_every_frame_is_train_and_no_segmentation(tmp_path):
    for name in ("0001", "0002", "0003"):
        _write_frame(tmp_path, name)
    source = read_rgbd(tmp_path)
    assert [(s.name, s.count) for s in source.splits] == [("train", 3)]
    assert source.raw_modalities == {"rgb", "depth"} and source.class_names == []
    assert "segmentation" not in source.splits[0].decode(source.splits[0].items[0])


def test_depth_zero_stays_missing_and_is_metres(tmp_path):
    _write_frame(tmp_path, "0001")
    depth = np.zeros((H, W), np.uint16)
    depth[0, 0], depth[1, 1] = 1234, 65535
    cv2.imwrite(str(tmp_path / "depth" / "0001.png"), depth)
    split = read_rgbd(tmp_path).splits[0]
    record = split.decode(split.items[0])
    assert record["depth"][0, 0] == np.float32(1.234) and record["depth"][1, 1] == np.float32(65.535)
    assert (record["depth"] == 0).sum() == H * W - 2


def test_explicit_split_file_and_partial_labels(tmp_path):
    _write_frame(tmp_path, "0001", label=3)
    _write_frame(tmp_path, "0002")  # same split as a labeled frame, but no label PNG
    _write_frame(tmp_path, "0003")
    (tmp_path / "classes13.txt").write_text("1 bed\n2 books\n3 ceiling\n")
    splits = tmp_path / "my_split.txt"
    splits.write_text("# frame split\n0001 val\n0002 val\n\n0003 train\n")
    source = read_rgbd(tmp_path, split_file=splits)
    assert [(s.name, s.count) for s in source.splits] == [("train", 1), ("val", 2)]
    assert source.class_names == ["unlabeled", "bed", "books", "ceiling"]
    records = _decode_all(source)
    assert (records["val"][0]["segmentation"] == 3).all()
    assert not records["val"][1]["segmentation"].any()  # no label PNG -> every pixel unlabeled
    assert source.provenance["labeled_frames"] == {"train": 0, "val": 1}


def test_class_names_file_must_be_numbered_in_order(tmp_path):
    bad = tmp_path / "classes.txt"
    bad.write_text("0 unlabeled\n2 books\n")
    with pytest.raises(DataError, match=r"classes.txt:2: value 2 out of order"):
        read_class_names(bad)


# ---- errors: one line naming the file -------------------------------------------------------

@pytest.mark.parametrize("missing", ["rgb", "depth"])
def test_missing_folder(tmp_path, missing):
    _write_frame(tmp_path, "0001")
    for path in (tmp_path / missing).iterdir():
        path.unlink()
    (tmp_path / missing).rmdir()
    with pytest.raises(DataError, match=f"no {missing}/ folder"):
        read_rgbd(tmp_path)


def test_count_mismatch_names_the_missing_frames(tmp_path):
    for name in ("0001", "0002", "0003"):
        _write_frame(tmp_path, name)
    (tmp_path / "depth" / "0002.png").unlink()
    with pytest.raises(DataError, match=r"rgb/ has 3 frames, depth/ has 2; missing in depth/: 0002$"):
        read_rgbd(tmp_path)


def test_size_mismatch_names_the_depth_file(tmp_path):
    _write_frame(tmp_path, "0001")
    cv2.imwrite(str(tmp_path / "depth" / "0001.png"), np.ones((H // 2, W // 2), np.uint16))
    source = read_rgbd(tmp_path)
    with pytest.raises(DataError, match=r"depth/0001.png: 8x6 but 0001.png in rgb/ is 16x12"):
        source.splits[0].decode(source.splits[0].items[0])


def test_8bit_depth_png_is_refused_by_name(tmp_path):
    _write_frame(tmp_path, "0001", depth_dtype=np.uint8)
    source = read_rgbd(tmp_path)
    with pytest.raises(DataError, match=r"depth/0001.png: depth PNG is uint8; expected one 16-bit channel"):
        source.splits[0].decode(source.splits[0].items[0])


def test_unreadable_png_is_named(tmp_path):
    _write_frame(tmp_path, "0001")
    (tmp_path / "rgb" / "0001.png").write_bytes(b"not a png at all")
    source = read_rgbd(tmp_path)
    with pytest.raises(DataError, match=r"rgb/0001.png: unreadable image file"):
        source.splits[0].decode(source.splits[0].items[0])


def test_split_file_must_list_every_frame(tmp_path):
    _write_frame(tmp_path, "0001")
    _write_frame(tmp_path, "0002")
    (tmp_path / "split.txt").write_text("0001 train\n")
    with pytest.raises(DataError, match=r"split.txt: frames in rgb/ but not in the split file: 0002"):
        read_rgbd(tmp_path)
    (tmp_path / "split.txt").write_text("0001 train\n0002 test\n0007 test\n")
    with pytest.raises(DataError, match=r"split.txt: frames not in rgb/: 0007"):
        read_rgbd(tmp_path)


def test_two_label_folders_need_a_choice(tmp_path):
    _write_frame(tmp_path, "0001", label=1)
    (tmp_path / "label40").mkdir()
    with pytest.raises(DataError, match=r"several label folders \(label13, label40\); choose one with --labels"):
        read_rgbd(tmp_path)
    source = read_rgbd(tmp_path, label_dir="label13")
    assert (source.splits[0].decode(source.splits[0].items[0])["segmentation"] == 1).all()
    with pytest.raises(DataError, match=r"nope: label folder not found"):
        read_rgbd(tmp_path, label_dir="nope")
