"""read_nyu_mat on a small .mat written in the official v7.3 layout: transposes, splits, mapping, errors."""
from pathlib import Path

import h5py
import numpy as np
import pytest

from crossmodal.errors import DataError
from data_prep.nyu import read_nyu_mat

N, W, H = 4, 16, 12  # the real file: 1449 frames of 640 x 480
RAW_NAMES = ["book", "chair", "floor", "wall", "sofa"]


def _strings(f: h5py.File, key: str, names: list[str]) -> None:
    """Store `names` as MATLAB v7.3 does a cell array of strings: (1, C) references to uint16 columns."""
    refs = []
    for k, name in enumerate(names):
        chars = f.create_dataset(f"#refs#/{key}{k}", data=np.array([[ord(c)] for c in name], np.uint16))
        refs.append(chars.ref)
    f.create_dataset(key, data=np.array([refs], dtype=h5py.ref_dtype))


def _write_mat(path: Path, drop: str | None = None, depth_shape=(N, W, H)) -> dict:
    """A labeled-set .mat in the h5py view of MATLAB's column-major layout; returns the arrays written."""
    x = np.arange(W)[:, None]
    y = np.arange(H)[None, :]
    arrays = {  # every value depends on (frame, channel, x, y) differently, so a wrong transpose shows
        "images": np.stack([np.stack([(7 * x + 3 * y + 40 * c + i) % 256 for c in range(3)]) for i in range(N)]).astype(np.uint8),
        "depths": np.stack([0.5 + 0.1 * x + 0.01 * y + i for i in range(N)]).astype(np.float32)[:, : depth_shape[1], : depth_shape[2]],
        "labels": np.stack([(x + 2 * y + i) % (len(RAW_NAMES) + 1) for i in range(N)]).astype(np.uint16),
    }
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            if key != drop:
                f.create_dataset(key, data=value)
        _strings(f, "names", RAW_NAMES)
    return arrays


def _write_splits_v73(path: Path, train, test) -> Path:
    with h5py.File(path, "w") as f:
        f["trainNdxs"] = np.array([train], np.float64)  # MATLAB saves indices as (1, n) doubles
        f["testNdxs"] = np.array([test], np.float64)
    return path


@pytest.fixture
def mat(tmp_path) -> tuple[Path, dict]:
    path = tmp_path / "nyu_depth_v2_labeled.mat"
    return path, _write_mat(path)


def test_frames_are_transposed_to_h_w(mat):
    path, arrays = mat
    source = read_nyu_mat(path)
    (split,) = source.splits
    assert split.name == "train" and split.count == N and source.provenance["splits_file"] is None
    record = split.decode(split.items[2])
    assert record["rgb"].shape == (H, W, 3) and record["rgb"].dtype == np.uint8
    assert record["rgb"][5, 9, 1] == arrays["images"][2, 1, 9, 5]  # (y, x, c) <- (c, x, y)
    np.testing.assert_array_equal(record["rgb"], arrays["images"][2].transpose(2, 1, 0))
    np.testing.assert_array_equal(record["depth"], arrays["depths"][2].T)
    np.testing.assert_array_equal(record["segmentation"], arrays["labels"][2].T.astype(np.int16))
    assert record["segmentation"].dtype == np.int16 and record["label"] == -1


def test_raw_labels_keep_the_file_class_names(mat):
    source = read_nyu_mat(mat[0])
    assert source.class_names == ["unlabeled"] + RAW_NAMES
    assert source.raw_modalities == {"rgb", "depth", "segmentation"}
    assert "no class mapping given" in source.provenance["labels"]


def test_v73_splits_are_one_based(mat, tmp_path):
    splits = _write_splits_v73(tmp_path / "other.mat", train=[1, 3], test=[4])
    source = read_nyu_mat(mat[0], splits)
    assert {s.name: list(s.items) for s in source.splits} == {"train": [0, 2], "test": [3]}
    assert source.provenance["frames_in_no_split"] == 1


def test_splits_mat_beside_the_file_is_used(mat, tmp_path):
    _write_splits_v73(tmp_path / "splits.mat", train=[2, 3], test=[1, 4])
    source = read_nyu_mat(mat[0])
    assert {s.name: list(s.items) for s in source.splits} == {"train": [1, 2], "test": [0, 3]}


def test_v5_splits_via_scipy(mat, tmp_path):
    import scipy.io  # optional for data_prep.nyu, but always installed: scikit-image (declared) requires it

    scipy.io.savemat(tmp_path / "splits_v5.mat", {"trainNdxs": np.array([[1], [2]]), "testNdxs": np.array([[3], [4]])})
    source = read_nyu_mat(mat[0], tmp_path / "splits_v5.mat")
    assert {s.name: list(s.items) for s in source.splits} == {"train": [0, 1], "test": [2, 3]}


def test_text_split_file(mat, tmp_path):
    (tmp_path / "split.txt").write_text("0001 test\n0002 train\n0003 train\n0004 test\n")
    source = read_nyu_mat(mat[0], tmp_path / "split.txt")
    assert {s.name: list(s.items) for s in source.splits} == {"train": [1, 2], "test": [0, 3]}


def test_class_mapping_relabels_segmentation(mat, tmp_path):
    path, arrays = mat
    mapping = tmp_path / "classMapping2.mat"
    with h5py.File(mapping, "w") as f:
        f["mapClass"] = np.array([[2, 1, 1, 2, 0]], np.float64)  # raw 1..5 -> 2, 1, 1, 2, 0
        _strings(f, "className", ["ground", "stuff"])
    source = read_nyu_mat(path, class_mapping=mapping)
    assert source.class_names == ["unlabeled", "ground", "stuff"]
    record = source.splits[0].decode(0)
    expected = np.array([0, 2, 1, 1, 2, 0])[arrays["labels"][0].T]
    np.testing.assert_array_equal(record["segmentation"], expected)
    assert "mapped to 2" in source.provenance["labels"]


# ---- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["images", "depths", "labels"])
def test_missing_key_names_file_and_key(tmp_path, key):
    path = tmp_path / "nyu.mat"
    _write_mat(path, drop=key)
    with pytest.raises(DataError, match=rf"nyu.mat: key '{key}' missing"):
        read_nyu_mat(path)


def test_shape_mismatch_is_refused(tmp_path):
    path = tmp_path / "nyu.mat"
    _write_mat(path, depth_shape=(N, W, H - 2))
    with pytest.raises(DataError, match=r"'depths' has shape \(4, 16, 10\), expected \(4, 16, 12\)"):
        read_nyu_mat(path)


def test_not_hdf5_is_refused(tmp_path):
    path = tmp_path / "nyu.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    with pytest.raises(DataError, match=r"nyu.mat: not a MATLAB v7.3 \(HDF5\) file"):
        read_nyu_mat(path)


def test_bad_splits_are_refused(mat, tmp_path):
    with pytest.raises(DataError, match=r"outside 1..4"):
        read_nyu_mat(mat[0], _write_splits_v73(tmp_path / "a.mat", train=[1, 5], test=[2]))
    with pytest.raises(DataError, match=r"frame 2 is in both trainNdxs and testNdxs"):
        read_nyu_mat(mat[0], _write_splits_v73(tmp_path / "b.mat", train=[1, 2], test=[2]))
    with h5py.File(tmp_path / "c.mat", "w") as f:
        f["trainNdxs"] = np.array([[1.0]])
    with pytest.raises(DataError, match=r"c.mat: key 'testNdxs' missing"):
        read_nyu_mat(mat[0], tmp_path / "c.mat")


def test_mapping_without_mapclass_is_refused(mat, tmp_path):
    with h5py.File(tmp_path / "map.mat", "w") as f:
        f["classMapping13"] = np.zeros((1, 40))
    with pytest.raises(DataError, match=r"map.mat: key 'mapClass' missing"):
        read_nyu_mat(mat[0], class_mapping=tmp_path / "map.mat")
