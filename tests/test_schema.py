"""The prepared-file schema: a valid file passes, and every check of `validate` refuses what it exists for."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from conftest import make_prepared
from crossmodal.data.dataset import PreparedDataset
from crossmodal.data import schema
from crossmodal.data.schema import is_encoded, open_prepared
from crossmodal.errors import DataError
from crossmodal.modalities import MODALITIES, Modality


def set_attr(key, value):
    return lambda f: f.attrs.__setitem__(key, value)


def replace_dataset(name, data):
    """Replace train/<name> with `data`."""
    def edit(f):
        del f["train"][name]
        f["train"].create_dataset(name, data=data)
    return edit


def drop_stats(modality):
    def edit(f):
        stats = json.loads(f.attrs["stats"])
        del stats[modality]
        f.attrs["stats"] = json.dumps(stats)
    return edit


def remove_all_splits(f):
    for split in list(f):
        del f[split]


def only_label(f):
    for name in [n for n in f["test"] if n != "label"]:
        del f["test"][name]


def set_json(key, value):
    return set_attr(key, json.dumps(value))


# Each case edits a valid file (train 40 rows, test 20; rgb uint8, L and ab float16, 16x16; 4 classes) so that exactly
# one check fails, and gives the whole message after "<path>: ", written out by hand.
KNOWN = "rgb, L, ab, depth, hha"  # crossmodal.modalities, in its order
BROKEN = {
    "attribute missing": (lambda f: f.attrs.__delitem__("stats"),
                          "not a crossmodal prepared file (attribute 'stats' missing); run `crossmodal prepare`"),
    "schema version": (set_attr("schema_version", 3),
                       "schema_version 3, this crossmodal reads 2 and older; re-run `crossmodal prepare`"),
    "schema version 0": (set_attr("schema_version", 0),
                         "schema_version 0, this crossmodal reads 2 and older; re-run `crossmodal prepare`"),
    "schema version not a number": (set_attr("schema_version", "abc"), "damaged or not a prepared file "
                                    "(ValueError: invalid literal for int() with base 10: 'abc')"),
    "invalid JSON": (set_attr("class_names", "[class0, "), "attribute 'class_names' is not valid JSON"),
    "invalid JSON provenance": (set_attr("provenance", "{"), "attribute 'provenance' is not valid JSON"),
    "invalid JSON stats": (set_attr("stats", "{'rgb': 1}"), "attribute 'stats' is not valid JSON"),
    "invalid JSON encoding": (set_attr("encoding", "{rgb: jpeg}"), "attribute 'encoding' is not valid JSON"),
    "class names not a list": (set_json("class_names", {"a": "b"}),
                               "attribute 'class_names' must be a JSON list of strings"),
    "class names not strings": (set_json("class_names", ["a", 2, "c", "d"]),
                                "attribute 'class_names' must be a JSON list of strings"),
    "stats not a mapping": (set_json("stats", [1, 2]),
                            "attribute 'stats' must be a JSON mapping of modality to mean/std"),
    "encoding a list": (set_json("encoding", ["rgb"]),
                        "attribute 'encoding' must be a JSON mapping of modality names to strings"),
    "encoding codec not a string": (set_json("encoding", {"rgb": 1}),
                                    "attribute 'encoding' must be a JSON mapping of modality names to strings"),
    "derived source not a string": (set_json("derived", {"L": 2}),
                                    "attribute 'derived' must be a JSON mapping of modality names to strings"),
    "encoding a float modality": (set_json("encoding", {"L": "png"}),
                                  "attribute 'encoding' names 'L', not an 8-bit 3-channel modality"),
    "encoding an unknown modality": (set_json("encoding", {"thermal": "png"}),
                                     "attribute 'encoding' names 'thermal', not an 8-bit 3-channel modality"),
    "derived without encoding": (set_json("derived", {"L": "rgb"}), "attribute 'derived' maps 'L' to 'rgb'; "
                                 "expected a modality derived from an encoded one (none is encoded)"),
    "label out of range": (replace_dataset("label", np.array([0, 1, 2, 4] * 10)),
                           "train/label: label 4 is outside -1..3 (the file names 4 classes); "
                           "re-run `crossmodal prepare`"),
    "label below -1": (replace_dataset("label", np.array([0, -2, 2, 3] * 10)),
                       "train/label: label -2 is outside -1..3 (the file names 4 classes); "
                       "re-run `crossmodal prepare`"),
    "label wrong only in row 0": (replace_dataset("label", np.array([9] + [0] * 39)),
                                  "train/label: label 9 is outside -1..3 (the file names 4 classes); "
                                  "re-run `crossmodal prepare`"),
    "first of two wrong labels, after a -1": (replace_dataset("label", np.array([-1, 0, 7, -5] * 10)),
                                              "train/label: label 7 is outside -1..3 (the file names 4 classes); "
                                              "re-run `crossmodal prepare`"),
    "label not integer": (replace_dataset("label", np.zeros(40, np.float32)),
                          "train/label: must be a 1-D integer dataset, got float32"),
    "label not 1-D": (replace_dataset("label", np.zeros((40, 1), np.int64)),
                      "train/label: must be a 1-D integer dataset, got int64"),
    "not a group": (lambda f: f.create_dataset("extra", data=np.zeros(3)), "top-level 'extra' is not a split group"),
    "no label": (lambda f: f["test"].__delitem__("label"), "split 'test' has no 'label' dataset"),
    "extra rows": (lambda f: f["train"].create_dataset("segmentation", data=np.zeros((39, 16, 16), np.int16)),
                   "train/segmentation has 39 rows, label has 40"),
    "unknown modality": (lambda f: f["train"].create_dataset("thermal", data=np.zeros((40, 1, 16, 16), np.uint8)),
                         f"train/thermal is not a known modality ({KNOWN})"),
    "sizes without encoding": (lambda f: f["train"].create_dataset("rgb_size", data=np.ones((40, 2), np.int32)),
                               f"train/rgb_size is not a known modality ({KNOWN})"),
    "shape ndim": (replace_dataset("L", np.zeros((40, 16, 16), np.float16)),
                   "train/L has shape (40, 16, 16), expected (N, 1, H, W)"),
    "shape ndim, channels right": (replace_dataset("L", np.zeros((40, 1, 16), np.float16)),
                                   "train/L has shape (40, 1, 16), expected (N, 1, H, W)"),
    "shape channels": (replace_dataset("rgb", np.zeros((40, 1, 16, 16), np.uint8)),
                       "train/rgb has shape (40, 1, 16, 16), expected (N, 3, H, W)"),
    "row count": (replace_dataset("rgb", np.zeros((41, 3, 16, 16), np.uint8)), "train/rgb has 41 rows, label has 40"),
    "dtype": (replace_dataset("L", np.zeros((40, 1, 16, 16), np.float32)),
              "train/L has dtype float32, expected float16"),
    "missing stats": (drop_stats("L"), "attribute 'stats' has no entry for modality 'L'"),
    "split without modality": (only_label, "split 'test' holds no modality"),
    "no split": (remove_all_splits, "file holds no split"),
}


def assert_edit_refused(path, edit, message: str) -> None:
    """`path` opens; after `edit` (of the h5py.File) open_prepared refuses it with exactly '<path>: <message>'."""
    open_prepared(path)[0].close()  # valid before the edit
    with h5py.File(path, "r+") as f:
        edit(f)
    with pytest.raises(DataError) as error:
        open_prepared(path)
    assert str(error.value) == f"{path}: {message}"


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_every_schema_check_refuses_its_defect_with_a_message_naming_it(tmp_path, case):
    assert_edit_refused(make_prepared(tmp_path), *BROKEN[case])


def test_valid_file_summary_lists_splits_shapes_and_attributes(tmp_path):
    path = make_prepared(tmp_path, splits={"train": 12, "test": 6}, modalities=("rgb", "L"), size=8,
                         with_segmentation=True)
    f, summary = open_prepared(path)
    f.close()
    assert summary["splits"] == {
        "train": {"n": 12, "modalities": {"rgb": (3, 8, 8), "L": (1, 8, 8)}, "has_segmentation": True},
        "test": {"n": 6, "modalities": {"rgb": (3, 8, 8), "L": (1, 8, 8)}, "has_segmentation": True}}
    assert summary["class_names"] == ["class0", "class1", "class2", "class3"]
    assert set(summary["stats"]) == {"rgb", "L"} and summary["source"] == "tests"
    assert summary["provenance"]["reader"] == "tests/conftest.py"


def test_json_attributes_stored_as_bytes_are_decoded(tmp_path):
    """Writers that store attributes as fixed-length byte strings (h5py returns bytes) are read the same."""
    path = make_prepared(tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["class_names"] = np.bytes_(json.dumps(["a", "b", "c", "d"]))
    f, summary = open_prepared(path)
    f.close()
    assert summary["class_names"] == ["a", "b", "c", "d"]


def test_missing_file_and_non_hdf5_file_are_data_errors(tmp_path):
    with pytest.raises(DataError) as error:
        open_prepared(tmp_path / "absent.h5")
    assert str(error.value) == f"{tmp_path / 'absent.h5'}: no such file"
    with pytest.raises(DataError) as error:
        open_prepared(tmp_path)  # a folder
    assert str(error.value) == f"{tmp_path}: not a regular file; expected a prepared .h5 file"
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(DataError, match="notes.h5: not a readable HDF5 file"):
        open_prepared(text)


def test_asking_for_a_missing_split_names_the_available_ones(tmp_path):
    path = make_prepared(tmp_path)
    with pytest.raises(DataError, match=r"no split 'val' \(available: (test, train|train, test)\)"):
        PreparedDataset(path, "val", ["rgb"])


def test_unlabelled_rows_an_empty_split_and_schema_1_are_valid(tmp_path):
    path = make_prepared(tmp_path, unlabeled=3)  # three rows labelled -1
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 1
        empty = f.create_group("none")
        empty.create_dataset("label", data=np.zeros(0, np.int64))
        empty.create_dataset("rgb", data=np.zeros((0, 3, 16, 16), np.uint8))
    f, summary = open_prepared(path)
    f.close()
    assert summary["splits"]["none"] == {"n": 0, "modalities": {"rgb": (3, 16, 16)}, "has_segmentation": False}
    assert summary["splits"]["train"]["n"] == 40


@pytest.mark.parametrize("rows, wrong, first", [
    (40, {37: 4}, 4),  # the last of five full blocks of 8
    (42, {41: -3}, -3),  # the partial sixth block (rows 40 and 41)
    (42, {3: 6, 30: 9, 41: -2}, 6),  # the first wrong label is named, from the first block holding one
    (42, {}, None),  # all labels in -1..3, -1 included
])
def test_labels_are_checked_block_by_block_to_the_last_row(tmp_path, monkeypatch, rows, wrong, first):
    monkeypatch.setattr(schema, "LABEL_BLOCK", 8)
    path = make_prepared(tmp_path, splits={"train": rows}, modalities=("L",), unlabeled=5)
    labels = np.arange(rows) % 4
    labels[[0, 10, 20]] = -1
    for row, value in wrong.items():
        labels[row] = value
    with h5py.File(path, "r+") as f:
        replace_dataset("label", labels)(f)
    if first is None:
        open_prepared(path)[0].close()
        return
    with pytest.raises(DataError) as error:
        open_prepared(path)
    assert str(error.value) == (f"{path}: train/label: label {first} is outside -1..3 (the file names 4 classes); "
                                f"re-run `crossmodal prepare`")


def test_a_group_where_a_dataset_belongs_is_a_data_error(tmp_path):
    """A group named like a dataset once escaped open_prepared as an AttributeError ('Group' has no shape)."""
    path = make_prepared(tmp_path)
    for name, message in [
            ("label", "train/label: must be a 1-D integer dataset, got Group"),
            ("rgb", "damaged or not a prepared file (AttributeError: 'Group' object has no attribute 'ndim')")]:
        copy = tmp_path / f"group-{name}.h5"
        copy.write_bytes(path.read_bytes())
        with h5py.File(copy, "r+") as f:
            del f["train"][name]
            f["train"].create_group(name)
        with pytest.raises(DataError) as error:
            open_prepared(copy)
        assert str(error.value) == f"{copy}: {message}"


def test_only_8_bit_3_channel_modalities_may_be_encoded(tmp_path, monkeypatch):
    monkeypatch.setitem(MODALITIES, "gray8", Modality("gray8", 1, "uint8", 1 / 255))
    monkeypatch.setitem(MODALITIES, "xyz", Modality("xyz", 3, "float32", 1.0))
    path = make_prepared(tmp_path)
    for name in ("gray8", "xyz"):
        with h5py.File(path, "r+") as f:
            f.attrs["encoding"] = json.dumps({name: "png"})
        with pytest.raises(DataError) as error:
            open_prepared(path)
        assert str(error.value) == f"{path}: attribute 'encoding' names {name!r}, not an 8-bit 3-channel modality"


VLEN_UINT8 = h5py.vlen_dtype(np.uint8)
SIZES = {"train": [(12, 20)] * 5, "test": [(12, 20), (1, 7), (30, 1)], "one": [(9, 4)], "empty": []}


def put_encoded(group, name, rows, dtype=VLEN_UINT8):
    if name in group:
        del group[name]
    ds = group.create_dataset(name, (len(rows),), dtype=dtype)
    for i, row in enumerate(rows):
        ds[i] = row


def make_encoded(tmp_path):
    """A schema-2 file as `prepare --encoding jpeg` writes it (the rows are a few bytes, never decoded here): rgb
    encoded with its sizes, L and ab derived from rgb; splits of the sizes in SIZES (one of them empty)."""
    path = make_prepared(tmp_path, splits={s: max(len(v), 1) for s, v in SIZES.items()}, modalities=("rgb",))
    with h5py.File(path, "r+") as f:
        for split, sizes in SIZES.items():
            group = f[split]
            if not sizes:
                del group["label"]
                group.create_dataset("label", data=np.zeros(0, np.int64))
            put_encoded(group, "rgb", [np.arange(3 + i, dtype=np.uint8) for i in range(len(sizes))])
            group.create_dataset("rgb_size", data=np.array(sizes, np.int32).reshape(len(sizes), 2))
        f.attrs["encoding"] = json.dumps({"rgb": "jpeg"})
        f.attrs["derived"] = json.dumps({"L": "rgb", "ab": "rgb"})
        stats = json.loads(f.attrs["stats"])
        stats.update(L={"mean": [50.0], "std": [20.0]}, ab={"mean": [0.0, 0.0], "std": [10.0, 10.0]})
        f.attrs["stats"] = json.dumps(stats)
    return path


def test_encoded_file_summary_has_each_splits_sizes_codecs_and_derived_modalities(tmp_path):
    f, summary = open_prepared(make_encoded(tmp_path))
    f.close()
    codecs = {"encoding": {"rgb": "jpeg"}, "derived": {"L": "rgb", "ab": "rgb"}, "has_segmentation": False}
    assert summary["splits"] == {
        "train": {"n": 5, "modalities": {"rgb": (3, 12, 20), "L": (1, 12, 20), "ab": (2, 12, 20)}, **codecs},
        "test": {"n": 3, "modalities": {"rgb": (3, None, None), "L": (1, None, None), "ab": (2, None, None)},
                 **codecs},  # images of different sizes, one of them 1 pixel high, one 1 pixel wide
        "one": {"n": 1, "modalities": {"rgb": (3, 9, 4), "L": (1, 9, 4), "ab": (2, 9, 4)}, **codecs},
        "empty": {"n": 0, "modalities": {"rgb": (3, None, None), "L": (1, None, None), "ab": (2, None, None)},
                  **codecs}}
    assert summary["class_names"] == ["class0", "class1", "class2", "class3"] and set(summary["stats"]) == {
        "rgb", "L", "ab"}
    for split in SIZES:
        assert all(is_encoded(summary, split, m) for m in ("rgb", "L", "ab"))
    assert not is_encoded({"splits": {"t": {"encoding": {"rgb": "png"}}}}, "t", "L")
    assert is_encoded({"splits": {"t": {"derived": {"L": "rgb"}}}}, "t", "L")
    f, raw = open_prepared(make_prepared(tmp_path))
    f.close()
    assert not any(is_encoded(raw, split, m) for split in ("train", "test") for m in ("rgb", "L", "ab"))


def put_raw(split, name, data):
    def edit(f):
        if name in f[split]:
            del f[split][name]
        f[split].create_dataset(name, data=data)
    return edit


def put_vlen(name, rows, dtype=VLEN_UINT8):
    return lambda f: put_encoded(f["train"], name, rows, dtype)


def put_group(name):
    def edit(f):
        del f["train"][name]
        f["train"].create_group(name)
    return edit


def put_2d_rgb(f):
    del f["train"]["rgb"]
    f["train"].create_dataset("rgb", (5, 1), dtype=VLEN_UINT8)


def store_test_split_raw(f):
    """The test split holds hha stored raw, and not the rgb that L and ab are derived from."""
    del f["test"]["rgb"], f["test"]["rgb_size"]
    f["test"].create_dataset("hha", data=np.zeros((3, 3, 16, 16), np.uint8))
    stats = json.loads(f.attrs["stats"])
    stats["hha"] = stats["rgb"]
    f.attrs["stats"] = json.dumps(stats)


NEEDS = "an encoded modality must be a 1-D variable-length uint8 dataset, got"
EXPECTED_SIZES = "train/rgb_size: expected (N, 2) integer (H, W) sizes with N = 5, got"
ENCODED_BROKEN = {
    "unknown codec": (set_json("encoding", {"rgb": "webp"}),
                      "attribute 'encoding' gives 'rgb' codec 'webp' (known: jpeg, png)"),
    "derived from a derived one": (set_json("derived", {"L": "rgb", "ab": "L"}), "attribute 'derived' maps 'ab' to "
                                   "'L'; expected a modality derived from an encoded one (rgb)"),
    "derived unknown modality": (set_json("derived", {"gray": "rgb"}), "attribute 'derived' maps 'gray' to 'rgb'; "
                                 "expected a modality derived from an encoded one (rgb)"),
    "derived from a modality not encoded, two encoded": (
        lambda f: (set_json("encoding", {"rgb": "jpeg", "hha": "png"})(f), set_json("derived", {"L": "depth"})(f)),
        "attribute 'derived' maps 'L' to 'depth'; expected a modality derived from an encoded one (rgb, hha)"),
    "encoded without stats": (drop_stats("rgb"), "attribute 'stats' has no entry for modality 'rgb'"),
    "derived without stats": (drop_stats("ab"), "attribute 'stats' has no entry for modality 'ab'"),
    "stored raw": (put_raw("train", "rgb", np.zeros((5, 3, 12, 20), np.uint8)),
                   f"train/rgb: {NEEDS} (5, 3, 12, 20) uint8"),
    "a group": (put_group("rgb"), f"train/rgb: {NEEDS} None Group"),
    "variable-length int16": (put_vlen("rgb", [np.arange(3, dtype=np.int16)] * 5, h5py.vlen_dtype(np.int16)),
                              f"train/rgb: {NEEDS} (5,) object"),
    "2-D": (put_2d_rgb, f"train/rgb: {NEEDS} (5, 1) object"),
    "rows": (put_vlen("rgb", [np.arange(3, dtype=np.uint8)] * 4), "train/rgb: 4 rows, label has 5"),
    "sizes missing": (lambda f: f["train"].__delitem__("rgb_size"), f"{EXPECTED_SIZES} nothing"),
    "sizes of 3": (put_raw("train", "rgb_size", np.ones((5, 3), np.int32)), f"{EXPECTED_SIZES} (5, 3)"),
    "sizes rows": (put_raw("train", "rgb_size", np.ones((4, 2), np.int32)), f"{EXPECTED_SIZES} (4, 2)"),
    "sizes float": (put_raw("train", "rgb_size", np.ones((5, 2), np.float32)), f"{EXPECTED_SIZES} (5, 2)"),
    "size 0": (put_raw("train", "rgb_size", np.array([[12, 20]] * 4 + [[12, 0]], np.int32)),
               "train/rgb_size: sizes must be positive, found 0"),
    "size -3": (put_raw("train", "rgb_size", np.array([[12, 20], [0, 5], [7, -3], [1, 1], [2, 2]], np.int64)),
                "train/rgb_size: sizes must be positive, found -3"),
    "segmentation rows, after the sizes": (put_raw("train", "segmentation", np.zeros((4, 12, 20), np.int16)),
                                           "train/segmentation has 4 rows, label has 5"),
    "a split without the source": (store_test_split_raw,
                                   "'L' is derived from 'rgb', which split 'test' does not store encoded"),
}


@pytest.mark.parametrize("case", sorted(ENCODED_BROKEN))
def test_every_encoded_check_refuses_its_defect_with_the_whole_message(tmp_path, case):
    assert_edit_refused(make_encoded(tmp_path), *ENCODED_BROKEN[case])
