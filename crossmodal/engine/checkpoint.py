"""Checkpoints: atomic writes, safe loads (weights_only=True), and rebuilding a trained model.

A checkpoint written by the Trainer is a dict of tensors, numbers, strings, lists and dicts only:

    format "crossmodal-checkpoint", version, crossmodal_version,
    epoch            completed epochs
    model            state_dict of task.model (what load_model rebuilds)
    task             the rest of task.state_dict() (distiller heads, CRD memories, ...)
    optimizer, scheduler, scaler (None unless fp16)
    rng              {"torch": CPU generator state, "cuda": [one state per visible GPU]}
    config           the resolved config dict
    metrics          the per-epoch rows of metrics.csv; best_top1, best_epoch
    meta             arch, modality, in_chans, num_classes, class_names, data_path, stats
    task_meta        task.checkpoint_meta() (e.g. the teachers' sha256)
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch
import torch.nn as nn

from crossmodal.errors import CrossmodalError
from crossmodal.tempfiles import atomic_write

FORMAT = "crossmodal-checkpoint"
VERSION = 1
META_KEYS = ("arch", "modality", "in_chans", "num_classes", "class_names", "data_path", "stats")


class CheckpointError(CrossmodalError):
    """A checkpoint file is missing, unreadable or not one crossmodal wrote."""


def save_checkpoint(path: str | Path, obj: dict) -> None:
    """torch.save `obj` to a temporary file beside `path`, fsync it, then rename it over `path`."""
    try:
        with atomic_write(path, "wb") as f:
            torch.save(obj, f)
    except (OSError, RuntimeError) as e:  # torch reports a failed write (disk full) as a RuntimeError
        reason = _write_failure_reason(e, Path(path))
        raise CheckpointError(f"{path}: could not be written ({reason}); the previous {Path(path).name} is kept; "
                              f"free some space and continue with --resume") from None


def _write_failure_reason(e: BaseException, path: Path) -> str:
    """The OSError behind a failed save (torch wraps it), else the folder's free space, else torch's message."""
    seen = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    try:
        import shutil

        free = shutil.disk_usage(path.parent).free
        if free < (64 << 20):
            return f"No space left on device? {free / 1e6:.1f} MB free"
    except OSError:
        pass
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with torch.load(weights_only=True); CheckpointError naming the file if that fails."""
    return _load(path, lambda p: p, map_location)


def read_checkpoint(path: str | Path) -> tuple[dict, str]:
    """(checkpoint, hex sha256 of the file) from one read of `path` (a model's contents and identity at once)."""
    digest = []

    def read_once(p: Path) -> io.BytesIO:
        data = p.read_bytes()
        digest.append(hashlib.sha256(data).hexdigest())
        return io.BytesIO(data)

    return _load(path, read_once, "cpu"), digest[0]


def _load(path: str | Path, source, map_location) -> dict:
    """torch.load(source(path), weights_only=True) checked to be a crossmodal checkpoint; CheckpointError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(source(path), map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a crossmodal checkpoint (written by `crossmodal teach` or `distill`)")
    return obj


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (identifies a teacher checkpoint in a student's metadata)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_model(path: str | Path, device="cpu") -> tuple[nn.Module, dict]:
    """Rebuild the trained network of checkpoint `path` in eval mode; return (model, meta).

    meta holds arch, modality, in_chans, num_classes, class_names, data_path, stats, plus
    `sha256` of the file, `path`, `epoch` and `task_meta`. The file is read once.
    """
    ckpt, sha256 = read_checkpoint(path)
    meta = model_meta(ckpt, path, sha256)
    return model_from_checkpoint(ckpt, meta, device), meta


def model_meta(ckpt: dict, path: str | Path, sha256: str) -> dict:
    """The checked model metadata of checkpoint `ckpt` read from `path`, plus sha256, path, epoch and task_meta."""
    meta = dict(ckpt.get("meta") or {}) if isinstance(ckpt.get("meta"), dict) else {}
    missing = [k for k in META_KEYS if k not in meta]
    if missing or "model" not in ckpt:
        raise CheckpointError(f"{path}: checkpoint has no model metadata ({', '.join(missing) or 'model'} missing)")
    check_meta(meta, path)
    if not isinstance(ckpt["model"], dict):
        raise CheckpointError(f"{path}: checkpoint's 'model' is not a state_dict")
    meta.update(sha256=sha256, path=str(path), epoch=ckpt.get("epoch"), task_meta=ckpt.get("task_meta", {}))
    return meta


def model_from_checkpoint(ckpt: dict, meta: dict, device="cpu") -> nn.Module:
    """The network `meta` (from model_meta) describes, with the weights of `ckpt`, on `device` in eval mode."""
    from crossmodal.models import build_model

    model = build_model(meta["arch"], in_chans=meta["in_chans"], num_classes=meta["num_classes"])
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        reason = str(e).splitlines()[0]
        raise CheckpointError(f"{meta['path']}: weights do not fit {meta['arch']!r} ({reason})") from None
    return model.to(device).eval()


def export_weights(src: str | Path, dst: str | Path, half: bool = False) -> dict:
    """Write the network of checkpoint `src` alone to `dst`: what `load_model` needs, nothing to resume.

    The export keeps the format marker, the epoch, the model's state_dict (fp16 floats when `half`;
    `load_model` casts them back to the model's dtype), the model metadata, the run's resolved config and
    its per-epoch metrics. Distiller state (CRD memories), optimiser, scheduler and RNG states are dropped,
    so a teacher or student can be shared in a fraction of the size. Returns the exported dict.
    """
    ckpt = load_checkpoint(src)
    if "model" not in ckpt or "meta" not in ckpt:
        raise CheckpointError(f"{src}: checkpoint has no model or model metadata to export")
    weights = {k: (v.half() if half and v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    slim = {"format": FORMAT, "version": VERSION, "crossmodal_version": ckpt.get("crossmodal_version"),
            "epoch": ckpt.get("epoch"), "model": weights, "meta": ckpt["meta"], "config": ckpt.get("config"),
            "metrics": ckpt.get("metrics"), "task_meta": ckpt.get("task_meta", {}), "exported_from": str(src)}
    save_checkpoint(dst, slim)
    return slim


def check_meta(meta: dict, path: str | Path) -> None:
    """CheckpointError naming the key when a checkpoint's model metadata has the wrong type or value."""
    def bad(key: str, expected: str):
        return CheckpointError(f"{path}: checkpoint metadata {key!r} must be {expected}, got {meta.get(key)!r:.80}")

    for key in ("arch", "modality", "data_path"):
        if not isinstance(meta.get(key), str):
            raise bad(key, "a string")
    for key in ("in_chans", "num_classes"):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(key, "a positive integer")
    names = meta.get("class_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise bad("class_names", "a list of strings")
    stats = meta.get("stats")
    if not isinstance(stats, dict) or not all(
            isinstance(v, dict) and all(isinstance(v.get(k), list) and v[k] and
                                        all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v[k])
                                        for k in ("mean", "std")) for v in stats.values()):
        raise bad("stats", "{modality: {mean: [numbers], std: [numbers]}}")
    own = stats.get(meta["modality"])
    if own is None or len(own["mean"]) != meta["in_chans"] or len(own["std"]) != meta["in_chans"] \
            or not all(x > 0 for x in own["std"]):
        raise bad("stats", f"mean/std of the model's modality {meta['modality']!r}, {meta['in_chans']} each, std > 0")


def task_state(ckpt: dict) -> dict:
    """The full Task.state_dict of a checkpoint: its "model" entries under `model.` plus the rest ("task")."""
    state = {"model." + k: v for k, v in ckpt["model"].items()}
    state.update(ckpt["task"])
    return state


def capture_rng() -> dict:
    """The torch RNG states (CPU, and every CUDA device if initialised), as tensors."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Restore RNG states captured by capture_rng (CUDA states only when as many GPUs are visible)."""
    # Generator states must be CPU byte tensors, whatever map_location the checkpoint was loaded with.
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
