"""The prepared-file schema: a valid file passes, and every check of `validate` refuses what it exists for."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from conftest import make_prepared
from crossmodal.data.dataset import PreparedDataset
from crossmodal.data.schema import SCHEMA_VERSION, open_prepared
from crossmodal.errors import DataError
from crossmodal.modalities import MODALITIES


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


# Each case edits a valid file (train 40 rows, test 20; rgb uint8, L and ab float16, 16x16) so that exactly one
# check fails, and gives the words the error must contain.
BROKEN = {
    "attribute missing": (lambda f: f.attrs.__delitem__("stats"), "attribute 'stats' missing"),
    "schema version": (set_attr("schema_version", SCHEMA_VERSION + 1),
                       f"schema_version {SCHEMA_VERSION + 1}, this crossmodal reads {SCHEMA_VERSION}"),
    "invalid JSON": (set_attr("class_names", "[class0, "), "attribute 'class_names' is not valid JSON"),
    "invalid JSON provenance": (set_attr("provenance", "{"), "attribute 'provenance' is not valid JSON"),
    "invalid JSON stats": (set_attr("stats", "{'rgb': 1}"), "attribute 'stats' is not valid JSON"),
    "class names not a list": (set_attr("class_names", json.dumps({"a": "b"})),
                               "attribute 'class_names' must be a JSON list of strings"),
    "class names not strings": (set_attr("class_names", json.dumps(["a", 2, "c", "d"])),
                                "attribute 'class_names' must be a JSON list of strings"),
    "stats not a mapping": (set_attr("stats", json.dumps([1, 2])), "attribute 'stats' must be a JSON mapping"),
    "label out of range": (replace_dataset("label", np.array([0, 1, 2, 4] * 10)),
                           "train/label: label 4 is outside -1..3"),
    "label below -1": (replace_dataset("label", np.array([0, -2, 2, 3] * 10)),
                       "train/label: label -2 is outside -1..3"),
    "label not integer": (replace_dataset("label", np.zeros(40, np.float32)),
                          "train/label: must be a 1-D integer dataset, got float32"),
    "label not 1-D": (replace_dataset("label", np.zeros((40, 1), np.int64)),
                      "train/label: must be a 1-D integer dataset, got int64"),
    "not a group": (lambda f: f.create_dataset("extra", data=np.zeros(3)), "top-level 'extra' is not a split group"),
    "no label": (lambda f: f["test"].__delitem__("label"), "split 'test' has no 'label' dataset"),
    "extra rows": (lambda f: f["train"].create_dataset("segmentation", data=np.zeros((39, 16, 16), np.int16)),
                   "train/segmentation has 39 rows, label has 40"),
    "unknown modality": (lambda f: f["train"].create_dataset("thermal", data=np.zeros((40, 1, 16, 16), np.uint8)),
                         f"train/thermal is not a known modality ({', '.join(MODALITIES)})"),
    "shape ndim": (replace_dataset("L", np.zeros((40, 16, 16), np.float16)),
                   "train/L has shape (40, 16, 16), expected (N, 1, H, W)"),
    "shape channels": (replace_dataset("rgb", np.zeros((40, 1, 16, 16), np.uint8)),
                       "train/rgb has shape (40, 1, 16, 16), expected (N, 3, H, W)"),
    "row count": (replace_dataset("rgb", np.zeros((41, 3, 16, 16), np.uint8)), "train/rgb has 41 rows, label has 40"),
    "dtype": (replace_dataset("L", np.zeros((40, 1, 16, 16), np.float32)),
              "train/L has dtype float32, expected float16"),
    "missing stats": (drop_stats("L"), "attribute 'stats' has no entry for modality 'L'"),
    "split without modality": (only_label, "split 'test' holds no modality"),
    "no split": (remove_all_splits, "file holds no split"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_every_schema_check_refuses_its_defect_with_a_message_naming_it(tmp_path, case):
    path = make_prepared(tmp_path)
    open_prepared(path)[0].close()  # valid before the edit
    edit, words = BROKEN[case]
    with h5py.File(path, "r+") as f:
        edit(f)
    with pytest.raises(DataError) as error:
        open_prepared(path)
    assert str(error.value).startswith(f"{path}: ") and words in str(error.value)


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
    with pytest.raises(DataError, match="no such file"):
        open_prepared(tmp_path / "absent.h5")
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(DataError, match="notes.h5: not a readable HDF5 file"):
        open_prepared(text)


def test_asking_for_a_missing_split_names_the_available_ones(tmp_path):
    path = make_prepared(tmp_path)
    with pytest.raises(DataError, match=r"no split 'val' \(available: (test, train|train, test)\)"):
        PreparedDataset(path, "val", ["rgb"])
