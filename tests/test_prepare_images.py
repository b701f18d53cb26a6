"""`crossmodal prepare` for image sources: real archives in ../shared/data, CIFAR/STL-10 file formats, --size."""
from __future__ import annotations

import io
import json
import pickle
import shutil
import tarfile
import zipfile
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import app
from crossmodal.color import rgb_to_lab
from crossmodal.data.schema import open_prepared
from crossmodal.modalities import MODALITIES
from data_prep.images import open_file_tree, read_cifar100, read_imagefolder
from data_prep.pixels import fit_record
from data_prep.writer import write_prepared

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR_MINI = DATA / "cifar10-mini.tar.gz"
IMAGENETTE_MINI = DATA / "imagenette2-96-mini.tgz"
needs_data = pytest.mark.skipif(not CIFAR_MINI.exists() or not IMAGENETTE_MINI.exists(),
                                reason=f"real archives not found in {DATA} (../shared/data beside the repository)")


def prepare(*args):
    """Run `crossmodal prepare ARGS` in-process, as a user would from the shell."""
    return CliRunner().invoke(app, ["prepare", *map(str, args)])


def archive_listing(path: Path) -> dict[str, list[str]]:
    """split folder -> sorted member names of its images, read with tarfile (independently of our parser)."""
    splits: dict[str, list[str]] = {}
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            if member.isfile():
                splits.setdefault(member.name.split("/")[1], []).append(member.name)
    return {split: sorted(names) for split, names in splits.items()}


def decode_member(path: Path, name: str) -> np.ndarray:
    """One archive member decoded by OpenCV to RGB."""
    with tarfile.open(path) as archive:
        data = np.frombuffer(archive.extractfile(name).read(), np.uint8)
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def cifar_mini(tmp_path_factory) -> Path:
    """cifar10-mini.tar.gz prepared once with rgb, L and ab."""
    if not CIFAR_MINI.exists():
        pytest.skip(f"{CIFAR_MINI} not found (../shared/data beside the repository)")
    out = tmp_path_factory.mktemp("cifar") / "cifar10-mini.h5"
    write_prepared(read_imagefolder(CIFAR_MINI), out, ["rgb", "L", "ab"], workers=2)
    return out


@needs_data
@pytest.mark.shared_data
def test_counts_classes_and_schema_match_the_archive(cifar_mini):
    listing = archive_listing(CIFAR_MINI)
    f, summary = open_prepared(cifar_mini)  # validates against the schema
    with f:
        assert {s: info["n"] for s, info in summary["splits"].items()} == {s: len(n) for s, n in listing.items()}
        assert summary["class_names"] == sorted({name.split("/")[2] for name in listing["train"]})
        assert summary["splits"]["train"]["modalities"] == {"rgb": (3, 32, 32), "L": (1, 32, 32), "ab": (2, 32, 32)}
        assert f["train/rgb"].chunks == (1, 3, 32, 32) and f["train/rgb"].compression is None
        provenance = summary["provenance"]
        assert provenance["counts"] == {"train": 500, "test": 100} and provenance["skipped"] == {"train": 0, "test": 0}
        assert provenance["src"] == str(CIFAR_MINI) and provenance["arguments"]["modalities"] == ["rgb", "L", "ab"]


@needs_data
@pytest.mark.shared_data
def test_labels_and_pixels_follow_the_class_folders(cifar_mini):
    listing = archive_listing(CIFAR_MINI)
    with h5py.File(cifar_mini, "r") as f:
        class_names = json.loads(f.attrs["class_names"])
        for split, names in listing.items():
            expected = [class_names.index(name.split("/")[2]) for name in names]
            np.testing.assert_array_equal(f[split]["label"][:], expected)
            for row in (0, 37, len(names) - 1):  # stored (C, H, W) rgb == the JPEG decoded by OpenCV
                decoded = decode_member(CIFAR_MINI, names[row])
                np.testing.assert_array_equal(f[split]["rgb"][row], decoded.transpose(2, 0, 1))


@needs_data
@pytest.mark.shared_data
def test_L_and_ab_are_the_float16_lab_of_the_stored_rgb(cifar_mini):
    with h5py.File(cifar_mini, "r") as f:
        rgb, L, ab = f["test/rgb"][:], f["test/L"][:], f["test/ab"][:]
    lab = rgb_to_lab(rgb.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2).astype(np.float16)  # numpy's rounding
    np.testing.assert_array_equal(L, lab[:, :1])
    np.testing.assert_array_equal(ab, lab[:, 1:])
    assert L.dtype == ab.dtype == np.float16 and 0 <= L.min() and L.max() <= 100


@needs_data
@pytest.mark.shared_data
def test_stats_are_numpy_mean_and_std_of_the_stored_train_split(cifar_mini):
    with h5py.File(cifar_mini, "r") as f:
        stats = json.loads(f.attrs["stats"])
        assert set(stats) == {"rgb", "L", "ab"}
        for name in stats:
            values = f["train"][name][:].astype(np.float64) * MODALITIES[name].scale  # (N, C, H, W) float units
            np.testing.assert_allclose(stats[name]["mean"], values.mean(axis=(0, 2, 3)), rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(stats[name]["std"], values.std(axis=(0, 2, 3)), rtol=1e-9, atol=1e-9)


@needs_data
@pytest.mark.shared_data
def test_cli_val_becomes_test_and_size_resizes_with_area_averaging(tmp_path):
    out = tmp_path / "imagenette.h5"
    result = prepare("imagefolder", IMAGENETTE_MINI, "--out", out, "--size", 64, "--modalities", "rgb", "-j", 2)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: train 200, test 100" in result.output
    f, summary = open_prepared(out)
    with f:
        assert summary["provenance"]["split_map"] == {"val": "test"}
        assert summary["class_names"][0] == "n01440764" and len(summary["class_names"]) == 10
        assert summary["splits"]["test"]["modalities"] == {"rgb": (3, 64, 64)}
        first_val = archive_listing(IMAGENETTE_MINI)["val"][0]
        expected = cv2.resize(decode_member(IMAGENETTE_MINI, first_val), (64, 64), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(f["test/rgb"][0], expected.transpose(2, 0, 1))


@needs_data
@pytest.mark.shared_data
def test_cli_refuses_to_overwrite_without_force(cifar_mini, tmp_path):
    out = tmp_path / "copy.h5"
    shutil.copy(cifar_mini, out)
    before = out.read_bytes()
    result = prepare("imagefolder", CIFAR_MINI, "--out", out, "--modalities", "rgb")
    assert result.exit_code == 2 and f"{out} already exists; pass --force" in result.output
    assert out.read_bytes() == before
    result = prepare("imagefolder", CIFAR_MINI, "--out", out, "--modalities", "rgb", "--force")
    assert result.exit_code == 0, result.output
    assert open_prepared(out)[1]["splits"]["train"]["modalities"] == {"rgb": (3, 32, 32)}


@needs_data
@pytest.mark.shared_data
def test_folder_tar_and_zip_give_the_same_file_and_classes_txt_names(tmp_path):
    root = tmp_path / "tiny" / "tiny"
    with tarfile.open(CIFAR_MINI) as archive:  # 3 classes x (4 train + 2 val) real images
        for member in archive.getmembers():
            _, split, cls, name = member.name.split("/")
            if cls in ("bird", "cat", "dog") and int(name[:4]) < (4 if split == "train" else 2):
                target = root / ("val" if split == "test" else split) / cls / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.extractfile(member).read())
    (root / "classes.txt").write_text("bird\tsmall flying animal\ncat\tfeline\n")
    shutil.make_archive(str(tmp_path / "tiny_zip"), "zip", tmp_path / "tiny")
    shutil.make_archive(str(tmp_path / "tiny_tar"), "tar", tmp_path / "tiny")
    arrays = []
    for src in (root, tmp_path / "tiny_zip.zip", tmp_path / "tiny_tar.tar"):
        out = tmp_path / f"{src.name}.h5"
        summary = write_prepared(read_imagefolder(src), out, ["rgb"], workers=1)
        assert summary["class_names"] == ["bird", "cat", "dog"]
        assert summary["provenance"]["class_descriptions"] == ["small flying animal", "feline", ""]
        with h5py.File(out, "r") as f:
            arrays.append({k: f[k][:] for k in ("train/rgb", "train/label", "test/rgb", "test/label")})
    assert arrays[0]["train/label"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for other in arrays[1:]:
        for key, value in arrays[0].items():
            np.testing.assert_array_equal(other[key], value)


@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("compression", ["", "gz", "xz"])
def test_tar_index_matches_tarfile_for_long_names(tmp_path, tar_format, compression):
    deep = "a" * 60 + "/" + "b" * 60 + "/" + "c" * 30  # 152 characters: needs a pax, GNU or ustar-prefix name
    members = {f"{deep}/train/cat/{i}.png": bytes([i]) * (700 + i) for i in range(3)}
    members["short/x.txt"] = b"hello"
    path = tmp_path / f"t.tar.{compression}".rstrip(".")
    with tarfile.open(path, f"w:{compression}", format=tar_format) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    tree = open_file_tree(path)
    assert {name: bytes(tree.read(handle)) for name, handle in tree.files.items()} == members


def test_fit_record_crops_the_centre_and_keeps_depth_holes_out_of_averages():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 96, 3), np.uint8)  # 96 wide, 64 high
    depth = np.zeros((64, 96), np.float32)
    depth[0::2, :] = 1.0  # each 2x2 block: two pixels at 1 m, one at 3 m, one hole
    depth[1::2, 0::2] = 3.0
    segmentation = np.arange(64 * 96, dtype=np.int16).reshape(64, 96) % 13
    fitted = fit_record({"rgb": rgb, "depth": depth, "segmentation": segmentation, "label": 4}, 32)
    # shorter side 64 -> 32 makes the image 48 wide; the centre crop keeps columns 8..39
    expected = cv2.resize(rgb, (48, 32), interpolation=cv2.INTER_AREA)[:, 8:40]
    np.testing.assert_array_equal(fitted["rgb"], expected)
    np.testing.assert_allclose(fitted["depth"], np.full((32, 32), 5.0 / 3.0), rtol=1e-6)  # not 5/4: hole ignored
    np.testing.assert_array_equal(fitted["segmentation"],
                                  cv2.resize(segmentation, (48, 32), interpolation=cv2.INTER_NEAREST)[:, 8:40])
    assert fitted["label"] == 4 and fitted["segmentation"].dtype == np.int16


# ----------------------------------------------------------------------------- torchvision layouts

def cifar_row(image: np.ndarray) -> np.ndarray:
    """(32, 32, 3) RGB -> CIFAR's 3072 bytes: the red plane, then green, then blue, each row-major."""
    return np.concatenate([image[:, :, c].ravel() for c in range(3)])


def test_cifar10_pickles_in_torchvision_layout(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    images = rng.integers(0, 256, (12, 32, 32, 3), np.uint8)
    labels = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]
    for i in range(5):  # data_batch_1..5 with 2 images each, then test_batch with 2
        rows = slice(2 * i, 2 * i + 2)
        batch = {"batch_label": f"training batch {i + 1} of 5", "labels": labels[rows],
                 "data": np.stack([cifar_row(im) for im in images[rows]]), "filenames": ["a.png", "b.png"]}
        (folder / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {"labels": labels[10:], "data": np.stack([cifar_row(im) for im in images[10:]])}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names, "num_vis": 3072}, protocol=2))
    out = tmp_path / "cifar10.h5"
    result = prepare("cifar10", tmp_path, "--out", out, "-j", 1)
    assert result.exit_code == 0, result.output
    f, summary = open_prepared(out)
    with f:
        assert summary["class_names"] == names and summary["source"] == "cifar10"
        np.testing.assert_array_equal(f["train/rgb"][:], images[:10].transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(f["test/rgb"][:], images[10:].transpose(0, 3, 1, 2))
        assert f["train/label"][:].tolist() == labels[:10] and f["test/label"][:].tolist() == labels[10:]


def test_cifar100_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    images = rng.integers(0, 256, (3, 32, 32, 3), np.uint8)
    for name, rows in (("train", slice(0, 2)), ("test", slice(2, 3))):
        entry = {"fine_labels": [99, 7, 42][rows], "coarse_labels": [1, 2, 3][rows],
                 "data": np.stack([cifar_row(im) for im in images[rows]])}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    fine = [f"class{i:02d}" for i in range(100)]
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": fine, "coarse_label_names": ["x"] * 20}))
    out = tmp_path / "c100.h5"
    write_prepared(read_cifar100(tmp_path), out, ["rgb", "L"], workers=1)
    with h5py.File(out, "r") as f:
        assert f["train/label"][:].tolist() == [99, 7] and f["test/label"][:].tolist() == [42]
        assert json.loads(f.attrs["class_names"]) == fine
        np.testing.assert_array_equal(f["test/rgb"][0], images[2].transpose(2, 0, 1))


def stl10_bytes(images: np.ndarray) -> bytes:
    """(N, 96, 96, 3) RGB -> STL-10's binary: per image, the R, G, B planes, each in column-major order."""
    return b"".join(image[:, :, c].tobytes(order="F") for image in images for c in range(3))


def test_stl10_binaries_with_unlabeled_split(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    images = {"train": rng.integers(0, 256, (3, 96, 96, 3), np.uint8),
              "test": rng.integers(0, 256, (2, 96, 96, 3), np.uint8),
              "unlabeled": rng.integers(0, 256, (2, 96, 96, 3), np.uint8)}
    labels = {"train": [1, 10, 4], "test": [2, 2]}  # 1-based on disk
    for split, batch in images.items():
        (folder / f"{split}_X.bin").write_bytes(stl10_bytes(batch))
    for split, values in labels.items():
        (folder / f"{split}_y.bin").write_bytes(bytes(values))
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    out = tmp_path / "stl10.h5"
    assert prepare("stl10", tmp_path, "--out", out, "-m", "rgb,ab").exit_code == 0
    f, summary = open_prepared(out)
    with f:
        assert list(f) == ["test", "train", "unlabeled"] and summary["class_names"] == names
        for split, batch in images.items():
            np.testing.assert_array_equal(f[split]["rgb"][:], batch.transpose(0, 3, 1, 2))
        assert f["train/label"][:].tolist() == [0, 9, 3] and f["unlabeled/label"][:].tolist() == [-1, -1]
        assert summary["provenance"]["stats_split"] == "train"
    only = tmp_path / "labelled.h5"
    result = prepare("stl10", tmp_path, "--out", only, "--only-splits", "train,test", "-m", "rgb")
    assert result.exit_code == 0, result.output
    assert set(open_prepared(only)[1]["splits"]) == {"train", "test"}


def test_zip_from_macos_ignores_resource_forks(tmp_path):
    png = cv2.imencode(".png", np.full((4, 4, 3), 200, np.uint8))[1].tobytes()
    path = tmp_path / "mac.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ds/", b"")
        archive.writestr("ds/train/cat/0.png", png)
        archive.writestr("ds/train/cat/._0.png", b"resource fork, not an image")
        archive.writestr("ds/test/cat/0.png", png)
        archive.writestr("__MACOSX/ds/train/cat/._0.png", b"resource fork, not an image")
    summary = write_prepared(read_imagefolder(path), tmp_path / "mac.h5", ["rgb"], workers=1)
    assert summary["provenance"]["counts"] == {"train": 1, "test": 1}
    assert summary["provenance"]["skipped"] == {"train": 0, "test": 0} and summary["class_names"] == ["cat"]
