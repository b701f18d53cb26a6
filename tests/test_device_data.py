"""Device-resident data (data.device_resident): the loader's samples, made on the device in batches.

Run here on the CPU device, which is the same code a GPU runs.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import make_prepared  # noqa: E402
from test_engine import (FailAtEpoch, make_cfg, make_trainer, max_weight_diff, model_weights,  # noqa: E402
                         tiny_models)

from crossmodal.config import load_config  # noqa: E402
from crossmodal.data.dataset import PreparedDataset  # noqa: E402
from crossmodal.tasks.teach import TeachConfig  # noqa: E402
from crossmodal.data.device_data import (DeviceSplit, SampleRandomBatch, stored_bytes,  # noqa: E402
                                         use_device_resident)
from crossmodal.data.transforms import PairedAugment, SampleRandom  # noqa: E402
from crossmodal.engine import load_checkpoint  # noqa: E402
from crossmodal.errors import ConfigError  # noqa: E402

torch.set_num_threads(1)
CPU = torch.device("cpu")
__all__ = ["tiny_models"]  # test_engine's autouse fixture registers the tiny models here too


def test_counter_stream_matches_sample_random_bit_for_bit():
    index = torch.tensor([0, 1, 7, 12345, 2**40 + 3])
    batch = SampleRandomBatch((5, 11), index)
    draws = [batch.uniform(), batch.integer(0, 9), batch.integer(-3, 4)]
    for b, i in enumerate(index.tolist()):
        rng = SampleRandom(5, 11, i)
        assert draws[0][b].item() == rng.uniform()
        assert draws[1][b].item() == rng.integer(0, 9)
        assert draws[2][b].item() == rng.integer(-3, 4)


@pytest.mark.parametrize("augment", [PairedAugment(crop=14, padding=3, hflip=True), PairedAugment(crop=16, padding=4),
                                     PairedAugment(hflip=True), None])
def test_device_batches_are_the_loader_samples_bit_for_bit(tmp_path, augment):
    """Every modality (depth's missing-value rule included), crop with zero fill, flip, normalisation."""
    path = make_prepared(tmp_path, modalities=("rgb", "L", "ab", "depth"), size=16)
    modalities = ["rgb", "L", "ab", "depth"]
    dataset = PreparedDataset(path, "train", modalities, augment=augment, seed=7)
    split = DeviceSplit(dataset, CPU)
    index = torch.tensor([3, 0, 39, 12, 7, 21])
    for epoch in (0, 4):
        dataset.set_epoch(epoch)
        batch = split.batch(index, split.epoch_geometry(epoch))
        for b, i in enumerate(index.tolist()):
            sample = dataset[i]
            assert sample.keys() == batch.keys()
            for key in sample:
                assert torch.equal(sample[key], batch[key][b]), (key, i, epoch)


def test_labeled_only_rows_are_served_from_the_device_like_the_loader(tmp_path):
    """Positions index the labelled rows only (CRD's memory rows): the device copy keeps that mapping."""
    path = make_prepared(tmp_path, splits={"train": 30, "test": 4}, modalities=("rgb",), unlabeled=7)
    dataset = PreparedDataset(path, "train", ["rgb"], augment=PairedAugment(crop=16, padding=2, hflip=True),
                              labeled_only=True, seed=3)
    split = DeviceSplit(dataset, CPU)
    assert len(split) == len(dataset) == 23
    index = torch.arange(23)
    batch = split.batch(index, split.epoch_geometry(1))
    dataset.set_epoch(1)
    for i in index.tolist():
        sample = dataset[i]
        assert all(torch.equal(sample[k], batch[k][i]) for k in sample)


def _chi_square(counts_a: np.ndarray, counts_b: np.ndarray) -> float:
    """Two-sample chi-square statistic of two histograms over the same cells."""
    total = counts_a + counts_b
    keep = total > 0
    a, b, total = counts_a[keep], counts_b[keep], total[keep]
    expected_a = total * a.sum() / total.sum()
    expected_b = total * b.sum() / total.sum()
    return float(((a - expected_a) ** 2 / expected_a).sum() + ((b - expected_b) ** 2 / expected_b).sum())


def test_crop_and_flip_distribution_matches_the_loader_path(tmp_path):
    """Independent draws (other seeds) of the device path and of PairedAugment agree over 162 (top, left, flip)
    cells, and both are uniform: a biased offset or flip rate fails the chi-square bound."""
    path = make_prepared(tmp_path, splits={"train": 2000, "test": 4}, modalities=("rgb",), size=8)
    augment = PairedAugment(crop=8, padding=4, hflip=True)
    dataset = PreparedDataset(path, "train", ["rgb"], augment=augment, seed=1)
    split = DeviceSplit(dataset, CPU)
    cells = 9 * 9 * 2
    device_counts = np.zeros(cells)
    loader_counts = np.zeros(cells)
    for epoch in range(5):
        g = split.epoch_geometry(epoch)
        code = ((g["top"] + 4) * 9 + (g["left"] + 4)) * 2 + g["flip"].long()
        device_counts += np.bincount(code.numpy(), minlength=cells)
        for i in range(len(split)):
            geometry = augment.sample_geometry(SampleRandom(2, epoch, i), 8, 8)  # another seed: independent
            loader_counts[((geometry.top + 4) * 9 + (geometry.left + 4)) * 2 + int(geometry.flip)] += 1
    # 161 degrees of freedom: the 0.999 quantile of chi-square(161) is about 222.
    assert _chi_square(device_counts, loader_counts) < 222
    uniform = np.full(cells, device_counts.sum() / cells)
    assert float(((device_counts - uniform) ** 2 / uniform).sum()) < 222
    assert float(((loader_counts - uniform) ** 2 / uniform).sum()) < 222


def test_a_device_resident_run_is_the_loader_run_and_resumes_exactly(tmp_path):
    """Same weights as the DataLoader path, run to run; a crash after epoch 2 resumes to the same weights."""
    data = make_prepared(tmp_path)
    runs = {}
    for name, setting in (("loader", False), ("device", True), ("device_again", True)):
        cfg = make_cfg(data, tmp_path / name, arch="test_tinynet_bn", epochs=3, milestones=[2], warmup_epochs=1)
        cfg.data.device_resident = setting
        make_trainer(cfg).fit()
        runs[name] = load_checkpoint(tmp_path / name / "run" / "last.pt")
    assert max_weight_diff(runs["loader"]["model"], runs["device"]["model"]) == 0.0
    assert max_weight_diff(runs["device"]["model"], runs["device_again"]["model"]) == 0.0
    assert runs["loader"]["metrics"][-1]["test_top1"] == runs["device"]["metrics"][-1]["test_top1"]

    crashed = make_cfg(data, tmp_path / "crashed", arch="test_tinynet_bn", epochs=3, milestones=[2], warmup_epochs=1)
    crashed.data.device_resident = True
    with pytest.raises(KeyboardInterrupt):
        make_trainer(crashed, train_wrapper=lambda d: FailAtEpoch(d, 2)).fit()
    torch.manual_seed(99)
    make_trainer(crashed, resume=True).fit()
    assert max_weight_diff(runs["device"]["model"], model_weights(tmp_path / "crashed" / "run" / "last.pt")) == 0.0


def test_device_resident_setting_is_validated(tmp_path):
    path = make_prepared(tmp_path, size=16)
    cifar = PreparedDataset(path, "train", ["rgb"], augment=PairedAugment(crop=16, padding=2, hflip=True))
    resized = PreparedDataset(path, "train", ["rgb"], augment=PairedAugment(random_resized_crop=12, hflip=True))
    assert use_device_resident("auto", cifar, CPU) == (False, "auto: device cpu is not CUDA")
    assert use_device_resident(True, cifar, CPU)[0] and not use_device_resident(False, cifar, CPU)[0]
    with pytest.raises(ConfigError, match="data.device_resident true: random_resized_crop runs on the loader only"):
        use_device_resident(True, resized, CPU)
    assert stored_bytes(cifar) == 40 * 3 * 16 * 16  # uint8 rgb, 40 rows
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {{path: {path}, device_resident: sometimes}}\nmodel: {{arch: resnet8}}\n")
    with pytest.raises(ConfigError, match="'data.device_resident' must be one of 'auto' or bool"):
        load_config(config, TeachConfig)
    assert load_config(config, TeachConfig, ["data.device_resident=true"]).data.device_resident is True
