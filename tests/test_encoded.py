"""Encoded storage (`prepare --encoding jpeg|png`) and decoding in the loader, on the real Imagenette JPEGs.

Files under ../shared/data (skipped with the reason when absent):
    imagenette2-224-sub.tgz   ImageNet layout, the original 224-px JPEG bytes (test split: 1,500 images)
    imagenette2-96-mini.tgz   200 train / 100 val JPEGs at 96x96 (q90, 4:4:4)

Expected values are computed here independently of the code under test: source bytes from
`tarfile`, pixels decoded with PIL (not the OpenCV decoder the library uses), sizes from PIL's
headers, reference crops with torchvision.
"""
from __future__ import annotations

import io
import json
import math
import signal
import subprocess
import sys
import os
import tarfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch.utils.data import DataLoader

from cli.main import app
from conftest import SHARED_DATA, child_pids
from test_engine import FailAtEpoch  # noqa: E402
from crossmodal.data.dataset import PreparedDataset
from crossmodal.data.schema import open_prepared
from crossmodal.data.transforms import PairedAugment, SampleRandom
from crossmodal.engine import load_checkpoint
from crossmodal.errors import ConfigError, DataError
from crossmodal.sections import AugmentConfig, DataConfig, EngineConfig, ModelConfig, OptimConfig
from crossmodal.tasks.teach import TeachConfig

REPO = Path(__file__).resolve().parents[1]
SUB224 = SHARED_DATA / "imagenette2-224-sub.tgz"
MINI96 = SHARED_DATA / "imagenette2-96-mini.tgz"
torch.set_num_threads(1)


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} absent: this test needs the real Imagenette files in ../shared/data (see its README.md)")
    return path


def prepare(*args) -> str:
    """Run `crossmodal prepare ARGS` in-process; return its output (the command must succeed)."""
    result = CliRunner().invoke(app, ["prepare", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def tar_images(path: Path, split_folder: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of <root>/<split_folder>/<class>/<image> members, in the order prepare stores them
    (classes sorted, then file names sorted)."""
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.split("/")[-3:-2] == [split_folder]]
        members.sort(key=lambda m: (m.name.split("/")[-2], m.name.split("/")[-1]))
        return [(m.name, tar.extractfile(m).read()) for m in members]


def pil_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(bytes(data))).convert("RGB"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Prepared files, made once: the 224-px val split as jpeg (as-is bytes), and the 96-px mini set as raw, jpeg
    and png."""
    need(SUB224), need(MINI96)
    root = tmp_path_factory.mktemp("encoded")
    out = {"224": root / "224.h5"}
    prepare("imagefolder", SUB224, "--out", out["224"], "--encoding", "jpeg", "--only-splits", "test", "-j", "2")
    for encoding in ("raw", "jpeg", "png"):
        out[f"96-{encoding}"] = root / f"96-{encoding}.h5"
        prepare("imagefolder", MINI96, "--out", out[f"96-{encoding}"], "--encoding", encoding, "-j", "2")
    return out


# ----------------------------------------------------------------------------- storage


def test_jpeg_sources_are_stored_byte_for_byte_with_their_sizes(files):
    expected = tar_images(SUB224, "val")
    assert len(expected) == 1500
    with h5py.File(files["224"], "r") as f:
        stored, sizes = f["test/rgb"][:], f["test/rgb_size"][:]
        assert json.loads(f.attrs["encoding"]) == {"rgb": "jpeg"}
        assert json.loads(f.attrs["derived"]) == {"L": "rgb", "ab": "rgb"}
        assert f.attrs["schema_version"] == 2
        provenance = json.loads(f.attrs["provenance"])
    assert provenance["reencoded"] == {"test": 0} and provenance["skipped"] == {"test": 0}
    for (name, data), row, size in zip(expected, stored, sizes):
        assert row.tobytes() == data, name
        width, height = Image.open(io.BytesIO(data)).size
        assert tuple(size) == (height, width), name


def test_max_side_shrinks_the_longer_side_and_keeps_the_aspect(tmp_path):
    source = tar_images(need(SUB224), "val")
    # 300 of the real 224x224 JPEGs with --max-side 160 (re-encoded), then 224 (as they are)
    for i, (name, data) in enumerate(source[::5]):
        folder = tmp_path / "real" / ("train", "test")[i % 2] / "n"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name.split("/")[-1]).write_bytes(data)
    for side, reencoded in ((160, 150), (224, 0)):
        prepare("imagefolder", tmp_path / "real", "--out", tmp_path / f"{side}.h5", "--encoding", "jpeg",
                "--max-side", side, "-j", "2")
        with h5py.File(tmp_path / f"{side}.h5", "r") as f:
            assert (f["test/rgb_size"][:] == side).all()
            assert pil_rgb(f["test/rgb"][7]).shape == (side, side, 3)
            assert json.loads(f.attrs["provenance"])["reencoded"] == {"train": reencoded, "test": reencoded}
    # non-square images cut from real ones: 224x150 and 150x224 -> longer side 100, the other round(150 * 100 / 224)
    source = source[:4]
    for split, cls in (("train", "a"), ("test", "a"), ("train", "b"), ("test", "b")):
        (tmp_path / "cut" / split / cls).mkdir(parents=True, exist_ok=True)
    for i, (name, data) in enumerate(source):
        image = pil_rgb(data)
        cut = image[:150] if i % 2 == 0 else image[:, :150]
        split, cls = ("train", "test")[i // 2], "ab"[i % 2]
        Image.fromarray(cut).save(tmp_path / "cut" / split / cls / f"{i}.jpg", quality=95)
    out = tmp_path / "cut.h5"
    prepare("imagefolder", tmp_path / "cut", "--out", out, "--encoding", "jpeg", "--max-side", "100", "-j", "1")
    with h5py.File(out, "r") as f:
        for split in ("train", "test"):
            assert f[f"{split}/rgb_size"][:].tolist() == [[67, 100], [100, 67]]
            assert [pil_rgb(row).shape[:2] for row in f[f"{split}/rgb"][:]] == [(67, 100), (100, 67)]


def test_reencode_stores_every_jpeg_at_quality_and_stays_close_to_the_source(files, tmp_path):
    """--reencode: every JPEG source (the 96-px mini set, q90 4:4:4) is decoded and re-encoded with OpenCV (4:2:0) at
    --quality; without it the source bytes stay (the default is unchanged). Fewer bytes at a lower quality, and the
    pixels (decoded with PIL) stay close to the source's. Measured on the 100 test images, mean absolute error per
    image in 0-255 levels: q90 mean 2.16, worst image 8.23; q70 mean 5.30, worst 11.01 (4:2:0's halved chroma
    resolution is most of it at q90: the same images re-encoded 4:4:4 at q90 come out at 0.04); the bounds below
    leave that room. The stats barely move: q70's means are within 0.05 levels (rgb) and 0.05 (L, ab) of the kept
    bytes'; the asserts allow one level and 0.1."""
    source = tar_images(MINI96, "val")
    with h5py.File(files["96-jpeg"], "r") as f:  # made without --reencode
        assert [row.tobytes() for row in f["test/rgb"][:]] == [data for _, data in source]
        provenance = json.loads(f.attrs["provenance"])
        assert provenance["reencoded"] == {"train": 0, "test": 0} and provenance["arguments"]["reencode"] is False
        kept_stats = json.loads(f.attrs["stats"])
    stored, bounds = {}, {90: (3.0, 10.0), 70: (7.0, 13.0)}  # quality -> (mean, worst image) error bound
    for quality, (mean_bound, worst_bound) in bounds.items():
        out = tmp_path / f"q{quality}.h5"
        prepare("imagefolder", MINI96, "--out", out, "--encoding", "jpeg", "--reencode", "--quality", quality,
                "-j", "2")
        with h5py.File(out, "r") as f:
            rows = [row.tobytes() for row in f["test/rgb"][:]]
            assert f["test/rgb_size"][:].tolist() == [[96, 96]] * len(source)
            provenance = json.loads(f.attrs["provenance"])
            stats = json.loads(f.attrs["stats"])
        assert provenance["reencoded"] == {"train": 200, "test": 100}
        assert provenance["arguments"]["reencode"] is True and provenance["arguments"]["jpeg_quality"] == quality
        errors = []
        for (name, data), row in zip(source, rows, strict=True):
            assert row != data, name
            errors.append(np.abs(pil_rgb(row).astype(np.float64) - pil_rgb(data)).mean())
        assert np.mean(errors) < mean_bound and max(errors) < worst_bound, (quality, np.mean(errors), max(errors))
        for (name, data), row in zip(source[:5], rows):  # OpenCV's encoder at that quality, from its decode
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            assert row == cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes(), name
        for modality, tolerance in (("rgb", 1 / 255), ("L", 0.1), ("ab", 0.1)):  # rgb's stats are in 0-1
            assert np.allclose(stats[modality]["mean"], kept_stats[modality]["mean"], atol=tolerance), modality
        stored[quality] = sum(map(len, rows))
    assert stored[70] < stored[90] < sum(len(data) for _, data in source)


def jpeg_sampling(data: bytes) -> list[tuple[int, int]]:
    """Each component's (horizontal, vertical) sampling factors, read from the JPEG's frame header (SOF marker)."""
    data = bytes(data)
    assert data[:2] == b"\xff\xd8", "no SOI"
    i = 2
    while i + 4 <= len(data):
        assert data[i] == 0xFF, f"no marker at byte {i}"
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOF0..15 (not DHT, JPG, DAC)
            segment = data[i + 4:i + 2 + length]  # precision, height (2), width (2), components, then 3 bytes each
            return [(segment[7 + 3 * k] >> 4, segment[7 + 3 * k] & 15) for k in range(segment[5])]
        i += 2 + length
    raise AssertionError("no SOF marker")


def ab_error(row: bytes, source: bytes) -> float:
    """Mean absolute difference of the a and b channels (CIE Lab, OpenCV's float conversion) of two JPEGs decoded
    with PIL."""
    a, b = (cv2.cvtColor(pil_rgb(x).astype(np.float32) / 255, cv2.COLOR_RGB2Lab)[..., 1:] for x in (row, source))
    return float(np.abs(a - b).mean())


def test_subsampling_444_keeps_the_colour_resolution_that_420_halves(files, tmp_path):
    """--subsampling sets the chroma sampling of every JPEG prepare writes: the frame headers of the stored rows say
    4:2:0 (Y 2x2, Cb and Cr 1x1: OpenCV's default, still what prepare writes without the option) or 4:4:4 (all
    1x1, as the mini set's sources are). On the 100 mini test images re-encoded at q75, the a/b channels' mean
    absolute error against the source measured 2.16 at 4:2:0 (worst image 5.77) and 1.32 at 4:4:4 (3.52), for
    1.15x the bytes; the option applies where prepare re-encodes (--reencode), shrinks (--max-side) or encodes (a
    PNG source) alike."""
    source = tar_images(MINI96, "val")
    assert {tuple(jpeg_sampling(data)) for _, data in source} == {((1, 1), (1, 1), (1, 1))}
    with h5py.File(files["96-jpeg"], "r") as f:  # kept bytes: the sources' own sampling; the default recorded
        assert json.loads(f.attrs["provenance"])["arguments"]["jpeg_subsampling"] == "420"
    rows, errors = {}, {}
    for name, extra in (("default", []), ("420", ["--subsampling", "420"]), ("444", ["--subsampling", "444"])):
        out = tmp_path / f"{name}.h5"
        prepare("imagefolder", MINI96, "--out", out, "--encoding", "jpeg", "--reencode", "--quality", "75",
                *extra, "-j", "2")
        with h5py.File(out, "r") as f:
            rows[name] = [row.tobytes() for row in f["test/rgb"][:]]
            arguments = json.loads(f.attrs["provenance"])["arguments"]
        assert arguments["jpeg_subsampling"] == ("420" if name == "default" else name)
        errors[name] = np.mean([ab_error(row, data) for row, (_, data) in zip(rows[name], source, strict=True)])
    assert rows["default"] == rows["420"]  # the default is unchanged: 4:2:0, byte for byte
    assert {tuple(jpeg_sampling(row)) for row in rows["420"]} == {((2, 2), (1, 1), (1, 1))}
    assert {tuple(jpeg_sampling(row)) for row in rows["444"]} == {((1, 1), (1, 1), (1, 1))}
    assert errors["444"] < 1.6 < 1.9 < errors["420"], errors
    assert sum(map(len, rows["420"])) < sum(map(len, rows["444"]))
    for data, row in zip([data for _, data in source[:5]], rows["444"]):  # OpenCV's encoder with the flag
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert row == cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 75, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                                 cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])[1].tobytes()
    # the other two ways prepare writes a JPEG: shrinking (--max-side) and encoding a PNG source
    pngs = tmp_path / "png"
    for i, (name, data) in enumerate(source[:4]):
        folder = pngs / ("train", "test")[i % 2] / "a"
        folder.mkdir(parents=True, exist_ok=True)
        Image.open(io.BytesIO(data)).save(folder / f"{i}.png")
    for src, extra in ((MINI96, ["--max-side", "64"]), (pngs, [])):
        for sampling, factors in (("444", ((1, 1), (1, 1), (1, 1))), ("420", ((2, 2), (1, 1), (1, 1)))):
            out = tmp_path / f"other_{sampling}.h5"
            prepare("imagefolder", src, "--out", out, "--encoding", "jpeg", "--subsampling", sampling, *extra,
                    "--force", "-j", "2")
            with h5py.File(out, "r") as f:
                stored = [row.tobytes() for row in f["test/rgb"][:]]
                assert all(json.loads(f.attrs["provenance"])["reencoded"].values())
            assert {tuple(jpeg_sampling(row)) for row in stored} == {factors}, (src, sampling)


def test_the_file_does_not_depend_on_the_number_of_workers(files, tmp_path):
    one = tmp_path / "one.h5"
    prepare("imagefolder", MINI96, "--out", one, "--encoding", "jpeg", "-j", "1")
    with h5py.File(one, "r") as a, h5py.File(files["96-jpeg"], "r") as b:  # made with -j 2
        assert a.attrs["stats"] == b.attrs["stats"]
        for split in ("train", "test"):
            assert [r.tobytes() for r in a[f"{split}/rgb"][:]] == [r.tobytes() for r in b[f"{split}/rgb"][:]]
            for name in ("rgb_size", "label"):
                assert np.array_equal(a[f"{split}/{name}"][:], b[f"{split}/{name}"][:])


def test_exif_rotated_jpegs_are_stored_upright(tmp_path):
    """A 224x150 JPEG tagged 'rotate 90' (EXIF orientation 6): raw preparation turns it upright (OpenCV); encoded
    preparation re-encodes it upright too (nvJPEG ignores EXIF, so stored bytes must need no turning), records its
    upright size, and its pixels stay within JPEG re-encoding error (quality 90, 4:2:0) of the raw file's: mean
    under 3 levels."""
    from crossmodal.data.codec import jpeg_orientation

    (name, data), = tar_images(need(SUB224), "val")[:1]
    image = Image.fromarray(pil_rgb(data)[:150])
    exif = Image.Exif()
    exif[0x0112] = 6
    for split in ("train", "test"):
        (tmp_path / "src" / split / "a").mkdir(parents=True)
        image.save(tmp_path / "src" / split / "a" / "0.jpg", exif=exif.tobytes(), quality=95)
    source = (tmp_path / "src" / "test" / "a" / "0.jpg").read_bytes()
    assert jpeg_orientation(source) == 6 and jpeg_orientation(data) == 1
    prepare("imagefolder", tmp_path / "src", "--out", tmp_path / "raw.h5", "-j", "1")
    prepare("imagefolder", tmp_path / "src", "--out", tmp_path / "jpeg.h5", "--encoding", "jpeg", "-j", "1")
    with h5py.File(tmp_path / "raw.h5", "r") as raw, h5py.File(tmp_path / "jpeg.h5", "r") as enc:
        assert raw["test/rgb"].shape == (1, 3, 224, 150)
        stored = enc["test/rgb"][0].tobytes()
        assert stored != source and jpeg_orientation(stored) == 1 and enc["test/rgb_size"][0].tolist() == [224, 150]
        assert pil_rgb(stored).shape == (224, 150, 3)  # PIL ignores EXIF too: nothing left to turn
        assert json.loads(enc.attrs["provenance"])["reencoded"] == {"train": 1, "test": 1}
        expected = raw["test/rgb"][0].astype(np.float64)
    sample = PreparedDataset(tmp_path / "jpeg.h5", "test", ["rgb"], normalize=False)[0]["rgb"].double().numpy()
    assert np.abs(sample * 255 - expected).mean() < 3


def test_png_encoding_stores_the_raw_files_pixels_exactly(files):
    with h5py.File(files["96-raw"], "r") as raw, h5py.File(files["96-png"], "r") as png:
        for split in ("train", "test"):
            pixels = raw[f"{split}/rgb"][:]  # (N, 3, 96, 96)
            decoded = np.stack([pil_rgb(row) for row in png[f"{split}/rgb"][:]]).transpose(0, 3, 1, 2)
            assert decoded.shape == pixels.shape and np.array_equal(decoded, pixels)
            assert np.array_equal(raw[f"{split}/label"][:], png[f"{split}/label"][:])


def test_stats_of_reduced_images_are_close_to_the_raw_files_exact_ones(files):
    """Encoded stats come from images decoded at half size here (96 px -> 48): means within 0.002 (rgb, 0..1), 0.2
    (L*) and 0.1 (a*, b*); stds 0 to 5 % lower (fine texture averaged away)."""
    raw = json.loads(h5py.File(files["96-raw"], "r").attrs["stats"])
    for encoding in ("jpeg", "png"):
        stats = json.loads(h5py.File(files[f"96-{encoding}"], "r").attrs["stats"])
        assert stats.keys() == raw.keys() == {"rgb", "L", "ab"}
        for name, mean_tol in (("rgb", 0.002), ("L", 0.2), ("ab", 0.1)):
            assert np.abs(np.subtract(stats[name]["mean"], raw[name]["mean"])).max() < mean_tol, (encoding, name)
            ratio = np.divide(stats[name]["std"], raw[name]["std"])
            assert ((ratio > 0.95) & (ratio <= 1.0)).all(), (encoding, name, ratio)


def test_an_old_schema_1_raw_file_still_opens(files, tmp_path):
    old = tmp_path / "old.h5"
    old.write_bytes(files["96-raw"].read_bytes())
    with h5py.File(old, "r+") as f:
        f.attrs["schema_version"] = 1
    ds = PreparedDataset(old, "test", ["rgb", "L"])
    assert ds[0]["rgb"].shape == (3, 96, 96) and ds[0]["L"].shape == (1, 96, 96)


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.attrs.__setitem__("encoding", json.dumps({"rgb": "webp"})), "codec 'webp'"),
    (lambda f: f["test"].__delitem__("rgb_size"), "test/rgb_size: expected (N, 2) integer (H, W) sizes"),
    (lambda f: f.attrs.__setitem__("derived", json.dumps({"L": "depth"})), "attribute 'derived' maps 'L' to 'depth'"),
])
def test_a_damaged_encoded_file_is_refused_naming_what_is_wrong(files, tmp_path, edit, message):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(files["96-jpeg"].read_bytes())
    with h5py.File(bad, "r+") as f:
        edit(f)
    with pytest.raises(DataError, match=str(bad)) as info:
        open_prepared(bad)
    assert message in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------- loading


def test_derived_L_ab_match_the_raw_files(files):
    """Untransformed, the encoded path gives exactly the raw file's float16 L/ab (same decoder, same Lab, same
    rounding). Resized (a 64-px centre crop), the encoded path resizes RGB before Lab where the raw path resized
    stored L/ab: rgb differs by at most one 8-bit level, L and ab by less than 0.25 on average (Lab units)."""
    for augment, exact in ((None, True), (PairedAugment(center_crop=64), False)):
        raw = PreparedDataset(files["96-raw"], "test", ["rgb", "L", "ab"], augment=augment, normalize=False)
        enc = PreparedDataset(files["96-jpeg"], "test", ["rgb", "L", "ab"], augment=augment, normalize=False)
        assert len(raw) == len(enc) == 100
        diffs = {m: [] for m in ("rgb", "L", "ab")}
        for i in range(len(raw)):
            a, b = raw[i], enc[i]
            assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
            for m in diffs:
                diffs[m].append((a[m] - b[m]).abs())
        d = {m: torch.stack(v) for m, v in diffs.items()}
        if exact:
            assert all(x.max().item() == 0 for x in d.values())
        else:
            assert d["rgb"].max().item() <= 1 / 255 + 1e-6
            assert d["L"].mean().item() < 0.25 and d["ab"].mean().item() < 0.25


def test_train_transform_is_a_pure_function_of_seed_epoch_index(files):
    augment = PairedAugment(random_resized_crop=224, hflip=True)
    a = PreparedDataset(files["224"], "test", ["rgb"], augment=augment, seed=7)
    b = PreparedDataset(files["224"], "test", ["rgb"], augment=augment, seed=7)
    a.set_epoch(3)
    b.set_epoch(0)
    first = a[11]["rgb"]
    b[11], b[400]  # other draws in between change nothing
    b.set_epoch(3)
    assert torch.equal(b[11]["rgb"], first) and first.shape == (3, 224, 224)
    b.set_epoch(4)
    assert not torch.equal(b[11]["rgb"], first)
    # the pixels: PIL's full decode, the box drawn from (seed, epoch, index), cropped, resized, flipped here
    unnormalised = PreparedDataset(files["224"], "test", ["rgb"], augment=augment, seed=7, normalize=False)
    unnormalised.set_epoch(3)
    flips = set()
    with h5py.File(files["224"], "r") as f:
        for i in range(11, 19):
            image = pil_rgb(f["test/rgb"][i])
            g = augment.sample_geometry(SampleRandom(7, 3, i), 224, 224)
            box = image[g.top:g.top + g.height, g.left:g.left + g.width]
            shrink = g.height > 224 or g.width > 224
            expected = cv2.resize(box, (224, 224), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            expected = expected[:, ::-1] if g.flip else expected
            flips.add(g.flip)
            got = (unnormalised[i]["rgb"] * 255).round().numpy().transpose(1, 2, 0)
            assert np.abs(got - expected).max() <= 1  # decoders may round one level apart
    assert flips == {True, False}


def test_reduced_jpeg_decoding_stays_close_to_a_full_decode(files):
    """Crops much larger than their output decode the JPEG at 1/2 to 1/8 size (DCT scaling) with the box scaled to
    whole pixels of the reduced image: against PIL's full decode + the same box + area resize, the mean absolute
    difference (0..1 units) stays below 0.012 for a 56-px centre crop and 0.03 for 48-px random resized crops
    (their boxes are rounded to pixels of an image up to 8x smaller)."""
    from crossmodal.data.codec import reduction_for

    with h5py.File(files["224"], "r") as f:
        images = [pil_rgb(row) for row in f["test/rgb"][:40]]
    for augment, bound in ((PairedAugment(center_crop=56), 0.012),
                           (PairedAugment(random_resized_crop=48, hflip=True), 0.03)):
        ds = PreparedDataset(files["224"], "test", ["rgb"], augment=augment, normalize=False)
        diffs, reduced = [], 0
        for i, image in enumerate(images):
            g = ds.sample_geometry(i)
            reduced += reduction_for(g.height, g.width, g.out_height, g.out_width) > 1
            box = image[g.top:g.top + g.height, g.left:g.left + g.width]
            expected = cv2.resize(box, (g.out_width, g.out_height), interpolation=cv2.INTER_AREA)
            expected = expected[:, ::-1] if g.flip else expected
            diffs.append(np.abs(ds[i]["rgb"].numpy().transpose(1, 2, 0) * 255 - expected).mean() / 255)
        assert reduced >= 30 and np.mean(diffs) < bound, (reduced, np.mean(diffs))


def test_loader_workers_and_batched_reads_give_the_same_batches(files):
    ds = PreparedDataset(files["224"], "test", ["rgb"], augment=PairedAugment(random_resized_crop=96, hflip=True),
                         seed=1)
    ds.set_epoch(2)
    order = [5, 1400, 3, 77, 900, 12, 640, 31]
    one_by_one = torch.stack([ds[i]["rgb"] for i in order])
    batched = torch.stack([s["rgb"] for s in ds.__getitems__(order)])
    workers = next(iter(DataLoader(ds, batch_size=8, sampler=order, num_workers=2)))
    assert torch.equal(one_by_one, batched) and torch.equal(one_by_one, workers["rgb"])
    assert workers["index"].tolist() == order


def test_random_resized_crop_scale_and_ratio_stay_in_their_ranges(files):
    """RandomResizedCrop(224, scale=(0.08, 1), ratio=(3/4, 4/3)) over the 1,500 real images: every box's area
    fraction and aspect lie in the ranges (up to the rounding of a box to whole pixels), and the draws spread over
    them: scale uniform on [0.08, 1] has mean 0.54 (accepted draws a little less: large boxes of extreme aspect
    do not fit a square image), log-aspect uniform is centred on 0."""
    ds = PreparedDataset(files["224"], "test", ["rgb"], augment=PairedAugment(random_resized_crop=224, hflip=True),
                         seed=3)
    scales, log_ratios, flips = [], [], []
    for epoch in range(2):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            g = ds.sample_geometry(i)
            height, width = ds.sizes[i]
            assert 0 <= g.top <= height - g.height and 0 <= g.left <= width - g.width
            assert (g.out_height, g.out_width) == (224, 224)
            scales.append(g.height * g.width / (height * width))
            assert 0.08 * (1 - 2 / math.sqrt(0.08 * 224 * 224)) <= scales[-1] <= 1
            assert 0.75 * (1 - 2 / g.height) <= g.width / g.height <= 4 / 3 * (1 + 2 / g.width)
            log_ratios.append(math.log(g.width / g.height))
            flips.append(g.flip)
    scales = np.array(scales)
    assert scales.min() < 0.1 and scales.max() > 0.95 and 0.45 < scales.mean() < 0.56
    assert abs(np.mean(log_ratios)) < 0.02 and np.ptp(log_ratios) > 0.5
    assert 0.45 < np.mean(flips) < 0.55


def test_eval_transform_is_resize_then_centre_crop(files):
    """center_crop 64 on 96-px images (shorter side to floor(64 / 0.875) = 73, centre 64x64): against torchvision's
    Resize(73) + CenterCrop(64) within 0.03 mean absolute difference (0..1 units: one crop-and-resize of the box
    rounded to whole pixels instead of two resizes), and within 0.006 of torchvision cropping the same box."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    augment = PairedAugment(center_crop=64)
    ds = PreparedDataset(files["96-jpeg"], "test", ["rgb", "L", "ab"], augment=augment, normalize=False)
    with h5py.File(files["96-jpeg"], "r") as f:
        rows = f["test/rgb"][:20]
    two_step, same_box = [], []
    for i, data in enumerate(rows):
        sample = ds[i]
        assert [sample[m].shape for m in ("rgb", "L", "ab")] == [(3, 64, 64), (1, 64, 64), (2, 64, 64)]
        image = torch.from_numpy(pil_rgb(data).transpose(2, 0, 1).copy())
        bilinear = InterpolationMode.BILINEAR
        reference = TF.center_crop(TF.resize(image, 73, interpolation=bilinear, antialias=True), 64).float() / 255
        two_step.append((reference - sample["rgb"]).abs().mean().item())
        g = ds.sample_geometry(i)
        box = TF.resized_crop(image, g.top, g.left, g.height, g.width, [64, 64], interpolation=bilinear,
                              antialias=True).float() / 255
        same_box.append((box - sample["rgb"]).abs().mean().item())
    assert np.mean(two_step) < 0.03 and np.mean(same_box) < 0.006
    # ImageNet-sized: 224 from a 500x375 image keeps the centre 328x328 (375 * 224 / 256), i.e. resize to 256x341
    assert PairedAugment(center_crop=224)._center_box(375, 500) == (23, 85, 328, 328)


def test_images_of_different_sizes_need_a_fixed_size_transform(files, tmp_path):
    root = tmp_path / "mixed"
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
    for i, (name, data) in enumerate(tar_images(MINI96, "val")[:4]):
        image = pil_rgb(data)[: 96 - 16 * (i % 2)]  # 96x96 and 96x80
        Image.fromarray(image).save(root / ("train", "test")[i // 2] / "a" / f"{i}.jpg")
    out = tmp_path / "mixed.h5"
    prepare("imagefolder", root, "--out", out, "--encoding", "jpeg", "-j", "1")
    with pytest.raises(ConfigError, match="holds images from 96x80 to 96x96; give it a fixed-size transform"):
        PreparedDataset(out, "test", ["rgb"])
    ds = PreparedDataset(out, "test", ["rgb", "ab"], augment=PairedAugment(center_crop=48))
    assert [ds[i]["ab"].shape for i in range(2)] == [(2, 48, 48)] * 2
    assert open_prepared(out)[1]["splits"]["test"]["modalities"]["rgb"] == (3, None, None)
    from crossmodal.data.device_data import use_device_resident

    with pytest.raises(ConfigError, match="encoded images are decoded by the loader"):
        use_device_resident(True, ds, torch.device("cpu"))
    sheet = tmp_path / "mixed.png"
    inspected = CliRunner().invoke(app, ["inspect", str(out), "--sheet", str(sheet), "--split", "test"])
    assert inspected.exit_code == 0 and "jpeg, 96..96 wide, 80..96 high" in inspected.output
    from crossmodal.data import sheet as layout

    image = cv2.imread(str(sheet))  # columns: the 96x96 image, then the 96x80 one fitted inside its tile (aspect kept)
    y, tile = layout.HEADER_HEIGHT, layout.TILE
    first, second = (image[y:y + tile, x:x + tile] for x in (layout.LABEL_WIDTH, layout.LABEL_WIDTH + tile + layout.GAP))
    margin = (tile - round(80 * tile / 96)) // 2  # rows of background above the fitted 96x80 image
    assert (second[:margin] == layout.BACKGROUND).all() and not (second[margin + 1] == layout.BACKGROUND).all()
    assert not (first[0] == layout.BACKGROUND).all()


def gpu_path_against_cpu(files, device: torch.device) -> None:
    """data.decode cuda's batches (bytes + geometry from the workers, decoded with torchvision on `device`) against
    the CPU path's samples: same keys, shapes, labels and rows; pixels within 0.02 mean absolute difference in
    normalised units (resampling filters differ: antialiased bilinear there, OpenCV area / bilinear here)."""
    for augment in (PairedAugment(random_resized_crop=224, hflip=True), PairedAugment(center_crop=160)):
        cpu = PreparedDataset(files["224"], "test", ["rgb"], augment=augment, seed=2)
        gpu = PreparedDataset(files["224"], "test", ["rgb"], augment=augment, seed=2, decode="cuda")
        cpu.set_epoch(1), gpu.set_epoch(1)
        rows = list(range(0, 1500, 75))
        sample = gpu[rows[0]]
        assert sample["rgb_encoded"].dtype == torch.uint8 and sample["rgb_geometry"].shape == (7,)
        batch = gpu.device_transform(gpu.collate_fn(gpu.__getitems__(rows)), device)
        expected = torch.stack([cpu[i]["rgb"] for i in rows])
        assert set(batch) == {"rgb", "label", "index"} and batch["rgb"].shape == expected.shape
        assert batch["index"].tolist() == rows and batch["label"].tolist() == cpu.labels[rows].tolist()
        assert (batch["rgb"].cpu() - expected).abs().mean().item() < 0.02


def test_cuda_decode_path_runs_on_the_cpu_too(files):
    gpu_path_against_cpu(files, torch.device("cpu"))


def test_cuda_decode_on_a_gpu(files):
    if not torch.cuda.is_available():
        pytest.skip("data.decode cuda: nvJPEG decoding needs a CUDA device and this machine has none "
                    "(the same code path runs on the CPU in test_cuda_decode_path_runs_on_the_cpu_too)")
    gpu_path_against_cpu(files, torch.device("cuda"))


def test_cuda_decode_is_refused_where_it_cannot_apply(files, tmp_path):
    with pytest.raises(ConfigError, match="decodes JPEG rows .* this split stores raw arrays"):
        PreparedDataset(files["96-raw"], "test", ["rgb"], decode="cuda")
    with pytest.raises(ConfigError, match=r"gives rgb only; \['rgb', 'L'\] needs data.decode cpu"):
        PreparedDataset(files["96-jpeg"], "test", ["rgb", "L"], decode="cuda")
    with pytest.raises(ConfigError, match="decodes JPEG rows .* this split stores {'rgb': 'png'}"):
        PreparedDataset(files["96-png"], "test", ["rgb"], decode="cuda")
    # A torchvision without its image codecs (deprecated in 0.29, to be removed): refused at config time.
    import torchvision.io

    with pytest.MonkeyPatch.context() as patch:
        patch.delattr(torchvision.io, "decode_jpeg")
        with pytest.raises(ConfigError, match=r"needs torchvision.io.decode_jpeg, which torchvision \S+ does not "
                                              r"provide .*; set data.decode: cpu"):
            PreparedDataset(files["96-jpeg"], "test", ["rgb"], decode="cuda")
    PreparedDataset(files["96-jpeg"], "test", ["rgb"], decode="cuda")  # restored: accepted again
    if torch.cuda.is_available():
        return
    from crossmodal.tasks.teach import run_teach

    cfg = TeachConfig(name="run", out_dir=str(tmp_path), data=DataConfig(path=str(files["96-jpeg"]), decode="cuda"),
                      model=ModelConfig(arch="resnet8"), optim=OptimConfig(epochs=1, batch_size=8, milestones=[1]),
                      engine=EngineConfig(device="cpu", progress=False))
    with pytest.raises(ConfigError, match="data.decode cuda decodes on the training GPU; the device is cpu"):
        run_teach(cfg)


def test_distill_reads_both_splits_with_the_configured_decode(files, tmp_path):
    from crossmodal.tasks.distill import DistillConfig, build_distill_datasets

    for decode in ("cuda", "cpu"):
        cfg = DistillConfig(name="run", out_dir=str(tmp_path), data=DataConfig(path=str(files["96-jpeg"]),
                                                                               decode=decode),
                            student=ModelConfig(arch="resnet8", modality="rgb"), losses={"ce": 1.0})
        train, test = build_distill_datasets(cfg, teachers=[])
        assert (train.decode, test.decode) == (decode, decode)


# ----------------------------------------------------------------------------- inspect, sheet, bad input


def test_inspect_and_sheet_understand_encoded_files(files, tmp_path):
    sheet = tmp_path / "sheet.png"
    result = CliRunner().invoke(app, ["inspect", str(files["224"]), "--sheet", str(sheet), "--n", "4"])
    assert result.exit_code == 0, result.output
    assert "(schema 2," in result.output
    assert "rgb           jpeg, 224x224 every image" in result.output
    assert "L             (1, 224, 224)     derived from rgb by the loader" in result.output
    image = cv2.imread(str(sheet))
    from crossmodal.data import sheet as layout

    tile = layout.TILE
    assert image.shape == (layout.HEADER_HEIGHT + 3 * (tile + layout.GAP), layout.LABEL_WIDTH + 4 * (tile + layout.GAP), 3)
    # the first rgb tile is the first test image, shrunk to the tile (BGR on disk)
    with h5py.File(files["224"], "r") as f:
        first = cv2.resize(pil_rgb(f["test/rgb"][0]), (tile, tile), interpolation=cv2.INTER_AREA)[:, :, ::-1]
    y, x = layout.HEADER_HEIGHT, layout.LABEL_WIDTH
    assert np.abs(image[y:y + tile, x:x + tile].astype(int) - first).max() <= 1


def test_unreadable_jpegs_are_skipped_as_raw_preparation_skips_them(tmp_path):
    """A JPEG whose data is garbage after a real header, and an empty one: counted skips in raw and encoded
    preparation alike; under --strict one error line naming the file, exit 2, nothing written."""
    root = tmp_path / "bad"
    good = tar_images(need(MINI96), "val")[:4]
    for i, (name, data) in enumerate(good):
        folder = root / ("train", "test")[i % 2] / "a"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.jpg").write_bytes(data)
    garbage = root / "train" / "a" / "garbage.jpg"
    garbage.write_bytes(good[0][1][:200] + bytes(range(256)) * 4)
    (root / "test" / "a" / "empty.jpg").write_bytes(b"")
    skipped = {}
    for encoding in ("raw", "jpeg", "png"):
        out = tmp_path / f"{encoding}.h5"
        prepare("imagefolder", root, "--out", out, "--encoding", encoding, "-j", "2")
        provenance = open_prepared(out)[1]["provenance"]
        skipped[encoding] = (provenance["skipped"], provenance["skipped_files"])
    assert skipped["raw"] == skipped["jpeg"] == skipped["png"]
    assert skipped["raw"][0] == {"train": 1, "test": 1}
    out_dir = tmp_path / "strict"
    out_dir.mkdir()
    result = CliRunner().invoke(app, ["prepare", "imagefolder", str(root), "--out", str(out_dir / "x.h5"),
                                      "--encoding", "jpeg", "--strict", "-j", "2"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not a readable image" in lines[0]
    assert "garbage.jpg" in lines[0] or "empty.jpg" in lines[0]
    assert list(out_dir.iterdir()) == []


def test_encoding_errors_force_and_free_space_follow_the_raw_rules(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    for i, (name, data) in enumerate(tar_images(need(MINI96), "val")[:4]):
        folder = root / ("train", "test")[i % 2] / "a"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.jpg").write_bytes(data)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "x.h5"

    def fails(*args) -> str:
        result = CliRunner().invoke(app, ["prepare", "imagefolder", str(root), "--out", str(out), *map(str, args)])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
        return lines[0]

    assert "--max-side needs --encoding jpeg or png" in fails("--max-side", "64")
    assert "--reencode needs --encoding jpeg" in fails("--reencode") and "got --encoding raw" in fails("--reencode")
    assert "got --encoding png" in fails("--encoding", "png", "--reencode")
    assert "--subsampling needs --encoding jpeg" in fails("--subsampling", "444")
    assert "got --encoding png" in fails("--encoding", "png", "--subsampling", "420")
    assert "'422' is not one of '420', '444'" in fails("--encoding", "jpeg", "--subsampling", "422")
    assert "'gif' is not one of 'raw', 'jpeg', 'png'" in fails("--encoding", "gif")
    assert list(out_dir.iterdir()) == []
    rgbd = CliRunner().invoke(app, ["prepare", "rgbd", str(SHARED_DATA / "nyu18"), "--out", str(out),
                                    "--encoding", "jpeg"])
    assert rgbd.exit_code == 2 and "--encoding jpeg stores colour images only" in rgbd.output
    assert list(out_dir.iterdir()) == []
    prepare("imagefolder", root, "--out", out, "--encoding", "jpeg")
    first = out.read_bytes()
    assert "already exists; pass --force" in fails("--encoding", "jpeg")
    prepare("imagefolder", root, "--out", out, "--encoding", "png", "--force")
    assert out.read_bytes() != first and [p.name for p in out_dir.iterdir()] == ["x.h5"]
    import shutil

    from crossmodal import tempfiles

    out.unlink()
    monkeypatch.setattr(tempfiles.shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    assert "has 0 MB free" in fails("--encoding", "jpeg", "-j", "2")
    assert list(out_dir.iterdir()) == []


SLOW_ENCODED_PREPARE = """
import sys, time
import data_prep.encoded as encoded
encode = encoded.encode_item
encoded.encode_item = lambda *a: (time.sleep(0.02), encode(*a))[1]
from cli.main import app
sys.argv = ["crossmodal", *sys.argv[1:]]
app()
"""


def test_sigterm_during_encoded_prepare_stops_the_workers_and_leaves_nothing(tmp_path):
    source = need(SUB224)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_ENCODED_PREPARE, "prepare", "imagefolder", str(source),
                             "--out", str(out / "x.h5"), "--encoding", "jpeg", "--only-splits", "test", "-j", "2"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(out.iterdir()) or len(child_pids(proc.pid)) < 2:  # writing, with its two encoding workers
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    children = child_pids(proc.pid)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1].startswith("error: terminated")
    assert list(out.iterdir()) == []
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in children):  # the parent stopped them before it exited
        assert time.monotonic() < deadline, children
        time.sleep(0.05)


# ----------------------------------------------------------------------------- training


def test_teach_on_an_encoded_file_resumes_exactly(files, tmp_path):
    """resnet8 on the 96-px JPEG file (random_resized_crop 32 + flip, evaluation centre crop 32), 3 epochs of 3
    steps; a run stopped at the start of epoch 3 and resumed ends with the uninterrupted run's weights."""
    from crossmodal.engine import ModelMeta, Trainer, seed_everything
    from crossmodal.models import build_model
    from crossmodal.tasks.teach import ClassifierTask, build_datasets

    def cfg(out: str) -> TeachConfig:
        return TeachConfig(name="run", out_dir=str(tmp_path / out), seed=5,
                           data=DataConfig(path=str(files["96-jpeg"]),
                                           augment=AugmentConfig(random_resized_crop=32, hflip=True),
                                           eval_augment=AugmentConfig(center_crop=32)),
                           model=ModelConfig(arch="resnet8"),
                           optim=OptimConfig(lr=0.05, batch_size=16, epochs=3, milestones=[2]),
                           engine=EngineConfig(device="cpu", progress=False, max_steps_per_epoch=3))

    def trainer(c: TeachConfig, resume=False, fail_epoch=None) -> Trainer:
        seed_everything(c.seed)
        train, test = build_datasets(c, ["rgb"])
        assert train.encoded_source == "rgb" and test.augment.center_crop == 32
        if fail_epoch is not None:
            train = FailAtEpoch(train, fail_epoch)
        model = build_model("resnet8", in_chans=3, num_classes=train.num_classes)
        task = ClassifierTask(model, ModelMeta.for_dataset("resnet8", "rgb", train, c.data.path))
        return Trainer(task, train, test, c, Path(c.out_dir) / c.name, resume=resume)

    trainer(cfg("a")).fit()
    with pytest.raises(KeyboardInterrupt):
        trainer(cfg("b"), fail_epoch=2).fit()
    assert load_checkpoint(tmp_path / "b" / "run" / "last.pt")["epoch"] == 2
    torch.manual_seed(99)
    trainer(cfg("b"), resume=True).fit()
    a = load_checkpoint(tmp_path / "a" / "run" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "run" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["metrics"][-1]["train_loss"] == b["metrics"][-1]["train_loss"]
    assert a["metrics"][-1]["test_top1"] == b["metrics"][-1]["test_top1"]


def test_linear_probe_reads_mixed_sizes_through_the_evaluation_crop_and_keys_its_cache_by_it(files, tmp_path):
    """An encoded file of 96x96 and 96x80 photos: the linear probe refuses it without data.eval_augment (one
    line naming the fix), probes it through the centre crop, and caches features per transform."""
    from crossmodal.tasks.probe import ProbeConfig, ProbeOptimConfig, run_probe
    from crossmodal.tasks.teach import run_teach

    root = tmp_path / "mixed"
    images = tar_images(MINI96, "val")
    for split, chosen in (("train", images[:8]), ("test", images[8:12])):
        for i, (name, data) in enumerate(chosen):
            (root / split / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pil_rgb(data)[: 96 - 16 * (i % 2)]).save(root / split / f"c{i % 2}" / f"{i}.jpg")
    data = tmp_path / "mixed.h5"
    prepare("imagefolder", root, "--out", data, "--encoding", "jpeg", "-j", "1")
    crop = AugmentConfig(center_crop=32)
    run_teach(TeachConfig(name="t", out_dir=str(tmp_path), data=DataConfig(path=str(data), augment=AugmentConfig(
        random_resized_crop=32), eval_augment=crop), model=ModelConfig(arch="resnet8"),
        optim=OptimConfig(batch_size=4, epochs=1), engine=EngineConfig(device="cpu", progress=False)))

    def probe(eval_augment: AugmentConfig, name: str) -> dict:
        return run_probe(ProbeConfig(name=name, out_dir=str(tmp_path / "probe"),
                                     checkpoint=str(tmp_path / "t" / "last.pt"),
                                     data=DataConfig(path=str(data), eval_augment=eval_augment),
                                     optim=ProbeOptimConfig(epochs=2, batch_size=4),
                                     engine=EngineConfig(device="cpu", progress=False)))

    with pytest.raises(ConfigError, match="give it a fixed-size transform"):
        probe(AugmentConfig(), "plain")
    rows = probe(crop, "crop32")["rows"]
    assert len(rows) == 1 and rows[0]["top1"] in (0.0, 25.0, 50.0, 75.0, 100.0)  # scored on the 4 test photos
    assert len(list((tmp_path / "probe" / "feature_cache").glob("*.pt"))) == 2  # train and test features
    probe(AugmentConfig(center_crop=24), "crop24")
    assert len(list((tmp_path / "probe" / "feature_cache").glob("*.pt"))) == 4  # another crop: other entries
