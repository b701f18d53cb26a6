"""PreparedDataset: values, labels and indices, row selection, preload, DataLoader workers, pairing, errors."""
import multiprocessing
import pickle

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import depth_from_rgb, segmentation_from_rgb
from crossmodal.data.dataset import PreparedDataset
from crossmodal.data.transforms import PairedAugment
from crossmodal.errors import ConfigError, DataError

CIFAR_AUGMENT = PairedAugment(crop=16, padding=4, hflip=True)


def _stored(path, split, key):
    with h5py.File(path, "r") as f:
        return f[split][key][:]


def _batches(ds, workers, context=None, epochs=(0, 1)):
    """Every batch of a shuffled loader over `epochs`, with a fixed shuffle generator."""
    out = []
    for epoch in epochs:
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=workers, multiprocessing_context=context,
                            generator=torch.Generator().manual_seed(epoch))
        out.extend(loader)
    return out


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0)


def test_rgb_pixel_is_normalised_with_the_stored_stats(make_prepared):
    path = make_prepared()
    ds = PreparedDataset(path, "train", ["rgb", "L"])
    rgb = _stored(path, "train", "rgb")
    sample = ds[5]
    c, y, x = 2, 3, 11
    expected = (rgb[5, c, y, x] / 255.0 - ds.stats["rgb"]["mean"][c]) / ds.stats["rgb"]["std"][c]
    assert sample["rgb"][c, y, x].item() == pytest.approx(expected, rel=1e-5)
    assert sample["rgb"].dtype == torch.float32 and sample["rgb"].shape == (3, 16, 16)
    assert sample["L"].shape == (1, 16, 16)
    raw = PreparedDataset(path, "train", ["rgb"], normalize=False)[5]["rgb"]
    assert raw[c, y, x].item() == pytest.approx(rgb[5, c, y, x] / 255.0, rel=1e-6)


def test_label_index_and_metadata(make_prepared):
    path = make_prepared(splits={"train": 40, "test": 20}, num_classes=4)
    ds = PreparedDataset(path, "test", ["ab"])
    assert len(ds) == 20 and ds.num_classes == 4 and ds.class_names == ["class0", "class1", "class2", "class3"]
    sample = ds[6]
    assert sample["label"].dtype == torch.int64 and sample["label"].item() == 6 % 4
    assert sample["index"].dtype == torch.int64 and sample["index"].item() == 6
    assert ds[-1]["index"].item() == 19
    np.testing.assert_array_equal(ds.labels, np.arange(20) % 4)
    assert set(ds.stats) == {"ab"}
    with pytest.raises(IndexError):
        ds[20]


def test_labeled_only_keeps_labelled_rows_and_indexes_by_position(make_prepared):
    path = make_prepared(unlabeled=5)
    file_labels = _stored(path, "train", "label")
    ds = PreparedDataset(path, "train", ["rgb"], labeled_only=True, normalize=False)
    assert len(ds) == 35 and (ds.labels >= 0).all()
    np.testing.assert_array_equal(ds.rows, np.flatnonzero(file_labels >= 0))
    rgb = _stored(path, "train", "rgb")
    for i in (0, 17, 34):
        sample = ds[i]
        assert sample["index"].item() == i
        assert sample["label"].item() == file_labels[ds.rows[i]]
        np.testing.assert_allclose(sample["rgb"].numpy() * 255.0, rgb[ds.rows[i]], atol=1e-3)
    assert len(PreparedDataset(path, "train", ["rgb"])) == 40


def test_preload_gives_the_same_samples_as_lazy_reads(make_prepared):
    path = make_prepared(modalities=("rgb", "depth"), with_segmentation=True, unlabeled=3)
    kwargs = dict(modalities=["rgb", "depth"], augment=CIFAR_AUGMENT, labeled_only=True, with_segmentation=True)
    lazy = PreparedDataset(path, "train", **kwargs)
    preloaded = PreparedDataset(path, "train", preload=True, **kwargs)
    for epoch in (0, 3):
        lazy.set_epoch(epoch)
        preloaded.set_epoch(epoch)
        _assert_same_batches([lazy[i] for i in range(len(lazy))], [preloaded[i] for i in range(len(lazy))])


@pytest.mark.parametrize("preload", [False, True])
def test_two_forked_workers_give_the_batches_of_zero_workers(make_prepared, preload):
    path = make_prepared()
    ds = PreparedDataset(path, "train", ["rgb", "ab"], augment=CIFAR_AUGMENT, preload=preload, seed=3)
    in_process = _batches(ds, workers=0)  # leaves this process's h5py handle open across the fork below
    _assert_same_batches(in_process, _batches(ds, workers=2, context="fork"))


def test_spawned_worker_and_pickle_carry_no_open_file(make_prepared):
    path = make_prepared()
    ds = PreparedDataset(path, "train", ["rgb"], augment=CIFAR_AUGMENT, preload=True)
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._file is None and clone._arrays is None
    _assert_same_batches([ds[3]], [clone[3]])
    if "spawn" in multiprocessing.get_all_start_methods():
        _assert_same_batches(_batches(ds, 0, epochs=(2,)), _batches(ds, 1, context="spawn", epochs=(2,)))


def test_crop_and_flip_keep_rgb_depth_and_segmentation_aligned(make_prepared):
    path = make_prepared(modalities=("rgb", "depth"), with_segmentation=True)
    ds = PreparedDataset(path, "train", ["rgb", "depth"], augment=CIFAR_AUGMENT, normalize=False,
                         with_segmentation=True)
    for i in range(len(ds)):
        sample = ds[i]
        rgb = np.rint(sample["rgb"].numpy() * 255.0).astype(np.uint8)  # zero padding stays 0
        np.testing.assert_allclose(sample["depth"].numpy(), depth_from_rgb(rgb), rtol=1e-6)
        np.testing.assert_array_equal(sample["segmentation"].numpy(), segmentation_from_rgb(rgb))


def test_random_resized_crop_keeps_modalities_aligned(make_prepared):
    path = make_prepared(modalities=("rgb", "depth"), size=32)
    ds = PreparedDataset(path, "train", ["rgb", "depth"], normalize=False,
                         augment=PairedAugment(random_resized_crop=24, scale=(0.3, 1.0), hflip=True))
    aligned, mirrored = [], []
    for i in range(len(ds)):
        sample = ds[i]
        red, depth = sample["rgb"][0].numpy(), sample["depth"][0].numpy()
        valid = depth > 0  # depth = 0.5 + 4 * red where measured (conftest.depth_from_rgb)
        aligned.append(np.abs(depth - (0.5 + 4.0 * red))[valid].mean())
        mirrored.append(np.abs(depth - (0.5 + 4.0 * red[:, ::-1]))[valid].mean())
    # Bilinear rgb vs nearest depth differ a little; a misalignment by a mirror differs a lot.
    assert np.mean(aligned) < 0.25 * np.mean(mirrored)


def test_augmentation_is_a_function_of_seed_epoch_and_index(make_prepared):
    path = make_prepared()
    make = lambda seed: PreparedDataset(path, "train", ["rgb"], augment=CIFAR_AUGMENT, seed=seed)
    a, b, other_seed = make(0), make(0), make(1)
    b.set_epoch(1)
    b.set_epoch(0)  # back to epoch 0: same draws as a fresh dataset (a resumed run)
    same = [torch.equal(a[i]["rgb"], b[i]["rgb"]) for i in range(10)]
    assert all(same)
    assert sum(torch.equal(a[i]["rgb"], other_seed[i]["rgb"]) for i in range(10)) <= 2
    b.set_epoch(1)
    assert sum(torch.equal(a[i]["rgb"], b[i]["rgb"]) for i in range(10)) <= 2


def test_missing_depth_is_the_mean_after_normalisation(make_prepared):
    path = make_prepared(modalities=("rgb", "depth"))
    ds = PreparedDataset(path, "train", ["depth"], augment=CIFAR_AUGMENT)
    stored = _stored(path, "train", "depth")
    mean, std = ds.stats["depth"]["mean"][0], ds.stats["depth"]["std"][0]
    plain = PreparedDataset(path, "train", ["depth"])[0]["depth"].numpy()
    missing = stored[0] == 0
    assert missing.any() and (plain[missing] == 0).all()
    np.testing.assert_allclose(plain[~missing], (stored[0][~missing] - mean) / std, rtol=1e-5)
    padded = [ds[i]["depth"].numpy() for i in range(len(ds))]
    assert all(np.isfinite(d).all() for d in padded)


def test_bad_split_modality_or_request_names_the_file_and_what_exists(make_prepared, tmp_path):
    path = make_prepared(modalities=("rgb", "L"))
    with pytest.raises(DataError, match=r"prepared\.h5: no split 'val' \(available: test, train\)"):
        PreparedDataset(path, "val", ["rgb"])
    with pytest.raises(DataError, match=r"prepared\.h5: split 'train' has no modality 'depth' \(available: L, rgb\)"):
        PreparedDataset(path, "train", ["rgb", "depth"])
    with pytest.raises(DataError, match="has no segmentation"):
        PreparedDataset(path, "train", ["rgb"], with_segmentation=True)
    with pytest.raises(DataError, match="missing.h5: no such file"):
        PreparedDataset(tmp_path / "missing.h5", "train", ["rgb"])
    with pytest.raises(ConfigError, match="no modality requested"):
        PreparedDataset(path, "train", [])
    no_labels = make_prepared(splits={"train": 4, "unlabeled": 6})
    with pytest.raises(DataError, match="split 'unlabeled' has no labelled rows"):
        PreparedDataset(no_labels, "unlabeled", ["rgb"], labeled_only=True)
    assert len(PreparedDataset(no_labels, "unlabeled", ["rgb"])) == 6
    with pytest.raises(ConfigError, match="crop 24 with padding 0 does not fit"):
        PreparedDataset(path, "train", ["rgb"], augment=PairedAugment(crop=24))
