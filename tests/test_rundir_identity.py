"""A run's data identity (the resume fingerprint's `data.file`) follows what a prepared file holds, not when
or where it was written: the same source prepared again resumes, other data is refused."""
from __future__ import annotations

import json

import h5py

from crossmodal.engine.rundir import data_identity


def test_the_same_data_prepared_again_keeps_its_identity_and_other_data_does_not(tmp_path, make_prepared):
    first = make_prepared(splits={"train": 12, "test": 4}, modalities=("rgb",), name="a.h5")
    again = make_prepared(splits={"train": 12, "test": 4}, modalities=("rgb",), name="b.h5")
    with h5py.File(again, "a") as f:  # written later, elsewhere, at another speed
        prov = json.loads(f.attrs["provenance"]) if "provenance" in f.attrs else {}
        f.attrs["provenance"] = json.dumps({**prov, "created": "2030-01-01T00:00:00+00:00", "seconds": 99.0,
                                            "src_resolved": "/elsewhere/cifar10.tar.gz"})
    assert data_identity(first) == data_identity(again) is not None
    other = make_prepared(splits={"train": 12, "test": 4}, modalities=("rgb",), num_classes=3, name="c.h5")
    assert data_identity(other) != data_identity(first)  # other labels -> other class names
    bigger = make_prepared(splits={"train": 13, "test": 4}, modalities=("rgb",), name="d.h5")
    assert data_identity(bigger) != data_identity(first)  # other shapes
    with h5py.File(again, "a") as f:
        stats = json.loads(f.attrs["stats"])
        stats["rgb"]["mean"][0] += 0.01
        f.attrs["stats"] = json.dumps(stats)
    assert data_identity(again) != data_identity(first)  # other pixels -> other stats
