"""Shared test fixtures: small schema-valid prepared files, and the real data folder when present.

The plain functions (`make_prepared`, `depth_from_rgb`, `segmentation_from_rgb`) can be imported
by tests (`from conftest import make_prepared`); the fixtures of the same names wrap them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

import crossmodal
from crossmodal.data.schema import SCHEMA_VERSION
from crossmodal.modalities import MODALITIES, to_float

# ../shared/data beside the repository, or the folder CROSSMODAL_SHARED_DATA names (as for the benchmarks: a mutation
# run's copy of the tests lives one folder deeper, in mutants/).
SHARED_DATA = (Path(os.environ["CROSSMODAL_SHARED_DATA"]) if os.environ.get("CROSSMODAL_SHARED_DATA")
               else Path(__file__).resolve().parents[1].parent / "shared" / "data")


def depth_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """Test depth (..., 1, H, W) metres from uint8 rgb (..., 3, H, W): 0.5 + 4 * red, missing (0) where red < 16."""
    red = rgb[..., 0:1, :, :].astype(np.float32)
    return np.where(red < 16, 0.0, 0.5 + 4.0 * red / 255.0).astype(np.float32)


def segmentation_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """Test segmentation (..., H, W) int16 from uint8 rgb: green // 64 (0..3, 0 = unlabeled)."""
    return (rgb[..., 1, :, :] // 64).astype(np.int16)


def _rgb_images(n: int, size: int, seed: int) -> np.ndarray:
    """(n, 3, size, size) uint8: smooth gradients plus noise, so crops and flips change the pixels."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    base = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1),
                     ramp[::-1][None, :].repeat(size, 0)])  # (3, H, W)
    noise = rng.integers(-60, 61, size=(n, 3, size, size))
    return np.clip(base[None] + noise, 0, 255).astype(np.uint8)


def _derive(modality: str, rgb: np.ndarray) -> np.ndarray:
    """Modality `modality` of uint8 rgb (N, 3, H, W) in its stored dtype."""
    if modality in ("rgb", "hha"):
        return rgb.copy()
    if modality == "depth":
        return depth_from_rgb(rgb)
    hwc = rgb.transpose(0, 2, 3, 1).astype(np.float32) / 255.0
    lab = np.stack([cv2.cvtColor(img, cv2.COLOR_RGB2Lab) for img in hwc]).transpose(0, 3, 1, 2)
    channels = slice(0, 1) if modality == "L" else slice(1, 3)
    return lab[:, channels].astype(np.float16)


def _stats(modality: str, stored: np.ndarray) -> dict:
    """Per-channel mean/std in float units (depth over valid pixels), as `prepare` records them."""
    values = to_float(modality, stored).transpose(1, 0, 2, 3).reshape(stored.shape[1], -1)  # (C, N*H*W)
    if modality == "depth":
        values = values[:, values[0] > 0]
    return {"mean": values.mean(1).tolist(), "std": values.std(1).tolist()}


def make_prepared(tmp_path: Path, splits: dict[str, int] | None = None,
                  modalities: tuple[str, ...] = ("rgb", "L", "ab"), size: int = 16, num_classes: int = 4,
                  with_segmentation: bool = False, unlabeled: int = 0, name: str | None = None) -> Path:
    """Write a small schema-valid prepared file under tmp_path and return its path.

    Row i of a split has label i % num_classes, except `unlabeled` evenly spread rows (label -1);
    a split named "unlabeled" has no labels at all. Depth and segmentation are functions of rgb
    (depth_from_rgb, segmentation_from_rgb) so tests can check that augmentations keep them aligned.
    """
    splits = {"train": 40, "test": 20} if splits is None else splits
    tmp_path = Path(tmp_path)
    if name is None:
        name, k = "prepared.h5", 0
        while (tmp_path / name).exists():
            k += 1
            name = f"prepared-{k}.h5"
    path = tmp_path / name
    stats_split = "train" if "train" in splits else next(iter(splits))
    stats = {}
    partial = path.with_name(path.name + ".partial")
    with h5py.File(partial, "w") as f:
        for split_index, (split, n) in enumerate(splits.items()):
            group = f.create_group(split)
            rgb = _rgb_images(n, size, seed=split_index)
            for m in modalities:
                stored = _derive(m, rgb)
                assert str(stored.dtype) == MODALITIES[m].dtype
                group.create_dataset(m, data=stored, chunks=(1, *stored.shape[1:]))
                if split == stats_split:
                    stats[m] = _stats(m, stored)
            labels = np.arange(n, dtype=np.int64) % num_classes
            if split == "unlabeled":
                labels[:] = -1
            elif unlabeled:
                labels[np.round(np.linspace(0, n - 1, unlabeled)).astype(int)] = -1
            group.create_dataset("label", data=labels)
            if with_segmentation:
                group.create_dataset("segmentation", data=segmentation_from_rgb(rgb), chunks=(1, size, size))
            if "depth" in modalities:
                group.create_dataset("depth_valid", data=(depth_from_rgb(rgb) > 0).astype(np.uint8),
                                     chunks=(1, 1, size, size))
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["crossmodal_version"] = crossmodal.__version__
        f.attrs["source"] = "tests"
        f.attrs["provenance"] = json.dumps({"reader": "tests/conftest.py", "splits": splits})
        f.attrs["class_names"] = json.dumps([f"class{c}" for c in range(num_classes)])
        f.attrs["stats"] = json.dumps(stats)
    os.replace(partial, path)
    return path


@pytest.fixture(name="make_prepared")
def make_prepared_fixture(tmp_path):
    """Factory fixture: make_prepared(**kwargs) writes a new prepared file in this test's tmp_path."""
    return lambda **kwargs: make_prepared(tmp_path, **kwargs)


@pytest.fixture
def shared_data() -> Path:
    """Path of the real data folder ../shared/data, or skip the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data absent: real-data test needs {SHARED_DATA} (see README, 'Real data')")
    return SHARED_DATA


MP_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")  # they end with their parent


def cmdline(pid: int) -> str:
    """The command line of process `pid` ('' once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def child_pids(pid: int, helpers: bool = True) -> list[int]:
    """Live child processes of `pid`, from /proc (exited ones waiting to be reaped left out); `helpers=False` also
    leaves out multiprocessing's resource tracker and forkserver."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            child = int(stat.parent.name)
            if helpers or not any(helper in cmdline(child) for helper in MP_HELPERS):
                children.append(child)
    return children


def _leftovers() -> dict[str, str]:
    """Threads (not daemons) and child processes alive now, by a key that stays the same while they live: what
    would keep the test process from exiting."""
    import multiprocessing
    import threading

    found = {f"thread {t.ident}": f"thread {t.name!r} ({type(t).__name__}, not a daemon)" for t in threading.enumerate()
             if t is not threading.main_thread() and not t.daemon and t.is_alive()}
    names = {p.pid: p.name for p in multiprocessing.active_children()}
    for child in child_pids(os.getpid(), helpers=False):  # multiprocessing's and subprocess.Popen's alike
        found[f"process {child}"] = f"child process {child} {names.get(child, '')!r}: {cmdline(child)[:120]}"
    return found


_LEFT_BEHIND: list[str] = []


@pytest.fixture(autouse=True)
def _nothing_left_running(request):
    """Record a test that leaves a thread or child process running after it ends (a CI run once printed its result
    and then did not exit: an encoding worker process of some earlier test was still waiting for work)."""
    import time

    before = set(_leftovers())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        new = {k: v for k, v in _leftovers().items() if k not in before}
        if not new or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if new:
        _LEFT_BEHIND.append(f"{request.node.nodeid}: " + "; ".join(new.values()))


def pytest_terminal_summary(terminalreporter):
    """Name the tests that left something running, and what the session still runs at its end."""
    for line in _LEFT_BEHIND:
        terminalreporter.write_line(f"left running after {line}", yellow=True)
    leftovers = _leftovers()
    if leftovers:
        terminalreporter.write_line("still running after the tests (the process may not exit): "
                                    + "; ".join(leftovers.values()), yellow=True)
