"""Run folders: inside out_dir, written by one run at a time, and resumed only by the run that made them.

    run_dir = run_dir_for(cfg)                        # <out_dir>/<name>; refuses '..' and absolute names
    with RunFolder(run_dir):                          # flock on <run>/.lock: a second run fails at once
        check_fingerprint(run_dir, cfg, task_meta, resuming=True)

The fingerprint (`<run>/fingerprint.json`, written when a run starts) holds every config key that
defines what the run computes (data, splits, augmentation, model, losses and their parameters,
optimiser, seed, precision) plus the identity of the data file and the teachers' sha256. A resume
compares it key by key and refuses any change, naming the key; only `optim.epochs` may grow (the
schedule then spans the new length, which the log says). Keys that only say how the run executes
(device, workers, logging, where it writes) may change freely.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from crossmodal.config import config_to_dict
from crossmodal.errors import ConfigError
from crossmodal.tempfiles import atomic_write_text, remove_stale_temporaries_in

LOCK_FILE = ".lock"
FINGERPRINT_FILE = "fingerprint.json"
GROWABLE = "optim.epochs"
# How a run executes, not what it computes: a resume may change these.
RUNTIME_KEYS = frozenset({
    "name", "out_dir", "data.workers", "data.preload", "data.device_resident", "engine.device", "engine.progress",
    "engine.log_every", "engine.eval_every", "engine.save_every", "engine.compile", "engine.channels_last",
    "engine.cuda_graph", "cache_dir", "report",
})


def run_dir_for(cfg) -> Path:
    """<out_dir>/<name>, with `name` a relative path that stays inside out_dir (ConfigError otherwise)."""
    name = str(cfg.name)
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not name.strip() or PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() \
            or ".." in parts or name.startswith("~"):
        raise ConfigError(f"name {name!r}: a run name is a relative folder name inside out_dir ({cfg.out_dir}), "
                          f"without '..'; use --out-dir to write elsewhere")
    return Path(cfg.out_dir) / name


class RunFolder:
    """An exclusive lock on a run folder (flock on <run>/.lock), held while a run writes into it."""

    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.run_dir, self.enabled, self.fd = Path(run_dir), enabled, None
        self.created: list[Path] = []  # folders this lock made, deepest last

    def __enter__(self) -> "RunFolder":
        if not self.enabled:
            return self
        missing = [p for p in [self.run_dir, *self.run_dir.parents] if not p.exists()]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.created = missing[::-1]
        path = self.run_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(f"{self.run_dir}: another run (pid {holder}) is writing into this folder; wait for it "
                              f"to finish or pass --name to start a separate run") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        remove_stale_temporaries_in(self.run_dir)  # checkpoints half-written by a killed run
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.fd is None:
            return
        if exc_type is not None and self.created and os.listdir(self.run_dir) == [LOCK_FILE]:
            # A run that failed before writing anything leaves no folder behind (it made the folder itself).
            os.unlink(self.run_dir / LOCK_FILE)
            for folder in reversed(self.created):
                try:
                    folder.rmdir()
                except OSError:
                    break
        os.close(self.fd)  # closing releases the flock
        self.fd = None


def _flatten(value, prefix: str, out: dict) -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1} (empty mappings and lists stay values)."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}{key}.", out)
    else:
        out[prefix.rstrip(".")] = value
    return out


def data_identity(path: str | Path) -> str | None:
    """A digest of what a prepared file holds (its attributes and every dataset's shape), or None if unreadable.

    Cheap for any size (no pixel is read). The provenance attribute is left out: it records when, where and how
    fast the file was written, so preparing the same source again (a fresh checkout, another session) gives the
    same identity, while other data changes the per-channel stats, the class names or the shapes."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            digest = hashlib.sha256()
            for key in sorted(set(f.attrs) - {"provenance"}):
                digest.update(f"{key}={f.attrs[key]!r}".encode())
            f.visititems(lambda name, obj: digest.update(
                f"{name}:{getattr(obj, 'shape', None)}:{getattr(obj, 'dtype', None)}".encode()))
            return digest.hexdigest()
    except (OSError, ValueError, TypeError):
        return None


def fingerprint(cfg, task_meta: dict | None = None) -> dict:
    """{dotted key: value} of what defines a run: config keys (but RUNTIME_KEYS), data identity, teachers' sha256."""
    flat = _flatten(config_to_dict(cfg), "", {})
    keys = {k: v for k, v in flat.items() if k not in RUNTIME_KEYS}
    data_path = getattr(getattr(cfg, "data", None), "path", None)
    if data_path:
        keys["data.file"] = data_identity(data_path)
    for i, teacher in enumerate((task_meta or {}).get("teachers") or []):
        keys[f"teachers.{i}.sha256"] = teacher.get("sha256")
    return json.loads(json.dumps(keys, default=str))  # what the file holds, exactly


def check_fingerprint(run_dir: str | Path, cfg, task_meta: dict | None, resuming: bool, write: bool = True) -> list[str]:
    """Record the run's fingerprint (a new run) or compare it (a resume); return notes on allowed changes.

    A resume with a changed key raises ConfigError naming it; a longer optim.epochs is accepted."""
    path = Path(run_dir) / FINGERPRINT_FILE
    current = fingerprint(cfg, task_meta)
    notes = []
    if resuming and path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ConfigError(f"{path}: unreadable run fingerprint; delete it to resume without the check") from None
        if not isinstance(saved, dict):
            raise ConfigError(f"{path}: unreadable run fingerprint; delete it to resume without the check")
        for key in sorted(set(saved) & set(current)):
            if saved[key] == current[key] or key == GROWABLE:
                continue
            what = "the file changed since the run started" if key == "data.file" else \
                "the teacher file changed since the run started" if key.endswith(".sha256") else \
                f"{_short(saved[key])} when the run started, now {_short(current[key])}"
            raise ConfigError(f"{run_dir}: --resume with a changed {key!r} ({what}); resume with the run's own "
                              f"config.yaml, or start a new run with --name")
        old, new = saved.get(GROWABLE), current.get(GROWABLE)
        if isinstance(old, int) and isinstance(new, int) and new < old:
            raise ConfigError(f"{run_dir}: --resume with {GROWABLE} {new}, below the {old} the run was started with; "
                              f"a resume may only lengthen a run")
        if isinstance(old, int) and isinstance(new, int) and new > old:
            notes.append(f"{GROWABLE} {old} -> {new}: lengthening is the one change a resume accepts; the lr "
                         f"schedule now spans {new} epochs")
    if write:
        atomic_write_text(path, json.dumps(current, indent=1, sort_keys=True) + "\n")
    return notes


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
