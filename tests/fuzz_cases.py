"""The fuzz table: bad inputs and faults for every command, each with the exit status and error it must give.

Each `Case` builds its inputs in a fresh folder of a shared workspace (`World`) and returns the
command line; tests/test_fuzz.py runs it in-process and checks the exit status, exactly one
`error:` line (holding `message`), no traceback, no new file outside `new_files`, and every
file that existed before unchanged. The table is generated: per-key bad values crossed with
the ways a value reaches the config (--set, a flag, the YAML file) and the commands that read it.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import h5py
import numpy as np
import torch
import yaml


@dataclass
class World:
    """Shared, valid inputs (made once) and the folder of the case being built."""

    root: Path  # the workspace every case lives in (snapshotted around each case)
    data: Path  # a valid prepared file: train 40, test 20, rgb/L/ab 16x16, 4 classes
    teacher: Path  # a valid teacher checkpoint (resnet8 on rgb of `data`)
    teach_cfg: dict  # a valid teach config (as a dict)
    distill_cfg: dict  # a valid distill config
    images: Path  # a valid image folder <split>/<class>/<n>.png
    case_dir: Path = None  # set per case

    def write_yaml(self, name: str, cfg) -> Path:
        """Write `cfg` as YAML into the case folder and return its path."""
        path = self.case_dir / name
        path.write_text(yaml.safe_dump(cfg))
        return path

    def write(self, name: str, data: bytes | str) -> Path:
        """Write raw bytes/text into the case folder and return its path."""
        path = self.case_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def out(self, name: str = "runs") -> str:
        """A run output folder inside the case folder."""
        return str(self.case_dir / name)


@dataclass
class Case:
    """One bad input or fault: how to build it, and what the command must answer."""

    id: str
    build: Callable[[World], list[str]]  # makes inputs under world.case_dir, returns argv (without `crossmodal`)
    exit_code: int = 2
    message: str = ""  # a fragment the one `error:` line must hold
    new_files: tuple[str, ...] = ()  # glob patterns (relative to the case folder) a case may create


def _set_dotted(cfg: dict, key: str, value) -> dict:
    cfg = json.loads(json.dumps(cfg))
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return cfg


# ----------------------------------------------------------------------------- config values

# key -> bad values (each a YAML-writable value) and the fragment the error names
BAD_RUN_VALUES = {
    "optim.batch_size": [0, -1, 1.5, "eight", True],
    "optim.epochs": [0, -3, "many"],
    "optim.lr": [0, -0.1, ".nan", "fast"],
    "optim.momentum": [1, -0.1, 1.5],
    "optim.weight_decay": [-1e-4],
    "optim.milestones": [[0], [-5], "x", [1.5]],
    "optim.gamma": [0, -1],
    "optim.warmup_epochs": [-1],
    "optim.label_smoothing": [1, -0.5],
    "optim.grad_clip": [0, -1],
    "optim.name": ["adam"],
    "optim.schedule": ["linear"],
    "engine.eval_every": [0, -1],
    "engine.save_every": [0],
    "engine.log_every": [0],
    "engine.max_steps_per_epoch": [0, -2],
    "engine.precision": ["fp8"],
    "data.workers": [-1],
    "data.augment.crop": [0],
    "data.augment.padding": [-1],
    "data.augment.scale": [[0, 1], [0.5, 2]],
    "seed": ["abc", 1.5],
}

BAD_TEACH_ONLY = {"model.arch": ["resnet_nope"], "model.modality": ["xyz"]}
BAD_DISTILL_ONLY = {
    "student.arch": ["resnet_nope"],
    "losses.kd": [-1],
    "losses.crd": ["lots"],
    "init_lr": [0],
}

FLAGS = {"optim.batch_size": "--batch-size", "optim.epochs": "--epochs", "optim.lr": "--lr",
         "data.workers": "--workers", "seed": "--seed"}


# keys whose error names the bad value (a registry lookup) rather than the key
NAMED_BY_VALUE = {"model.arch": "resnet_nope", "student.arch": "resnet_nope", "model.modality": "xyz"}


def _key_fragment(key: str) -> str:
    return NAMED_BY_VALUE.get(key, key)


def _value_cases(command: str, base: Callable[[World], dict], values: dict) -> list[Case]:
    cases = []
    for key, bads in values.items():
        for i, bad in enumerate(bads):
            text = yaml.safe_dump(bad, default_flow_style=True).strip().removesuffix("...").strip()

            def in_file(w, key=key, bad=bad):
                value = float("nan") if bad == ".nan" else bad
                return [command, str(w.write_yaml("c.yaml", _set_dotted(base(w), key, value)))]

            def by_set(w, key=key, text=text):
                return [command, str(w.write_yaml("c.yaml", base(w))), "--set", f"{key}={text}"]

            cases.append(Case(f"{command}-file-{key}-{i}", in_file, message=_key_fragment(key)))
            cases.append(Case(f"{command}-set-{key}-{i}", by_set, message=_key_fragment(key)))
            if key in FLAGS and isinstance(bad, (int, float)) and not isinstance(bad, bool) \
                    and not (key != "optim.lr" and isinstance(bad, float)):
                def by_flag(w, key=key, bad=bad):
                    return [command, str(w.write_yaml("c.yaml", base(w))), FLAGS[key], str(bad)]

                cases.append(Case(f"{command}-flag-{key}-{i}", by_flag, message=_key_fragment(key)))
    return cases


def _teach(w: World) -> dict:
    return _set_dotted(w.teach_cfg, "out_dir", w.out())


def _distill(w: World) -> dict:
    return _set_dotted(w.distill_cfg, "out_dir", w.out())


# ----------------------------------------------------------------------------- config files

def _config_file_cases(command: str, base: Callable[[World], dict]) -> list[Case]:
    alias_bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    files = {
        "missing": (lambda w: str(w.case_dir / "nowhere.yaml"), "no such config file"),
        "directory": (lambda w: str(w.case_dir), "is a directory"),
        "latin1": (lambda w: str(w.write("c.yaml", "name: caf\xe9\n".encode("latin-1"))), "not UTF-8"),
        "binary": (lambda w: str(w.write("c.yaml", bytes(range(256)))), "c.yaml"),
        "syntax": (lambda w: str(w.write("c.yaml", "data: {path: [unclosed\n")), "not valid YAML"),
        "tab-indent": (lambda w: str(w.write("c.yaml", "data:\n\tpath: x\n")), "not valid YAML"),
        "alias-bomb": (lambda w: str(w.write("c.yaml", alias_bomb)), "aliases"),
        "recursive-alias": (lambda w: str(w.write("c.yaml", "a: &a [*a]\n")), "aliases"),
        "too-big": (lambda w: str(w.write("c.yaml", "# " + "x" * (1 << 20) + "\n")), "larger than"),
        "top-level-list": (lambda w: str(w.write("c.yaml", "- a\n- b\n")), "mapping"),
        "top-level-scalar": (lambda w: str(w.write("c.yaml", "hello\n")), "mapping"),
        "python-tag": (lambda w: str(w.write("c.yaml", "x: !!python/object/apply:os.system ['touch pwned']\n")),
                       "not valid YAML"),
        "unknown-key": (lambda w: str(w.write_yaml("c.yaml", {**base(w), "optimm": {}})), "optimm"),
        "typo-key": (lambda w: str(w.write_yaml("c.yaml", _set_dotted(base(w), "optim.momentun", 0.8))),
                     "momentum"),
        "section-not-mapping": (lambda w: str(w.write_yaml("c.yaml", {**base(w), "optim": 3})), "optim"),
        "empty": (lambda w: str(w.write("c.yaml", "")), "required key"),
        "no-data": (lambda w: str(w.write_yaml("c.yaml", {k: v for k, v in base(w).items() if k != "data"})),
                    "data.path"),
    }
    cases = [Case(f"{command}-config-{name}", lambda w, f=f: [command, f(w)], message=msg)
             for name, (f, msg) in files.items()]
    sets = {
        "set-no-equals": ("optim.lr", "KEY=VALUE"),
        "set-unknown-key": ("optim.zzz=1", "optim.zzz"),
        "set-bad-yaml": ("optim.lr=[1,", "not valid YAML"),
        "set-list-index": ("optim.milestones.9=3", "no item 9"),
        "set-into-scalar": ("seed.x=1", "seed"),
    }
    cases += [Case(f"{command}-{name}", lambda w, o=o: [command, str(w.write_yaml("c.yaml", base(w))), "--set", o],
                   message=msg) for name, (o, msg) in sets.items()]
    names = {"dotdot": "../escape", "deep-dotdot": "a/../../escape", "absolute": "/tmp/escape", "home": "~/escape",
             "blank": " "}
    cases += [Case(f"{command}-name-{n}", lambda w, v=v: [command, str(w.write_yaml("c.yaml", base(w))), "--name", v],
                   message="run name") for n, v in names.items()]
    cases += [
        Case(f"{command}-data-missing", lambda w: [command, str(w.write_yaml(
            "c.yaml", _set_dotted(base(w), "data.path", str(w.case_dir / "none.h5"))))], message="none.h5"),
        Case(f"{command}-data-not-hdf5", lambda w: [command, str(w.write_yaml(
            "c.yaml", _set_dotted(base(w), "data.path", str(w.write("d.h5", b"not hdf5" * 100)))))],
             message="d.h5"),
        Case(f"{command}-data-bad-labels", lambda w: [command, str(w.write_yaml(
            "c.yaml", _set_dotted(base(w), "data.path", str(_relabelled(w, 7)))))], message="label 7"),
        Case(f"{command}-data-no-attrs", lambda w: [command, str(w.write_yaml(
            "c.yaml", _set_dotted(base(w), "data.path", str(_bare_h5(w)))))], message="not a crossmodal"),
        Case(f"{command}-data-split-missing", lambda w: [command, str(w.write_yaml(
            "c.yaml", _set_dotted(base(w), "data.train_split", "nosuch")))], message="nosuch"),
        Case(f"{command}-device-bad", lambda w: [command, str(w.write_yaml("c.yaml", base(w))), "--device", "tpu"],
             message="tpu"),
        Case(f"{command}-bad-option", lambda w: [command, str(w.write_yaml("c.yaml", base(w))), "--epoch", "3"],
             message="--epoch"),
        Case(f"{command}-flag-not-int", lambda w: [command, str(w.write_yaml("c.yaml", base(w))), "--epochs", "x"],
             message="x"),
    ]
    return cases


def _relabelled(w: World, label: int) -> Path:
    """A copy of the prepared file whose first test label is `label` (outside its 4 classes)."""
    path = w.case_dir / "relabelled.h5"
    shutil.copy(w.data, path)
    with h5py.File(path, "r+") as f:
        f["test/label"][0] = label
    return path


def _bare_h5(w: World) -> Path:
    path = w.case_dir / "bare.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    return path


# ----------------------------------------------------------------------------- distill: losses, teachers

def _teacher_variant(w: World, edit: Callable[[dict], None], name: str = "t.pt") -> Path:
    ckpt = torch.load(w.teacher, weights_only=True)
    edit(ckpt)
    path = w.case_dir / name
    torch.save(ckpt, path)
    return path


class _Payload:
    """An object whose unpickling would run code (what weights_only must refuse)."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _distill_with_teacher(path_fn):
    def build(w):
        return ["distill", str(w.write_yaml("c.yaml", _set_dotted(_distill(w), "teachers", [
            {"checkpoint": str(path_fn(w)), "modality": "rgb"}])))]
    return build


def _meta_edit(key, value):
    def edit(ckpt):
        ckpt["meta"][key] = value
    return edit


def _distill_cases() -> list[Case]:
    teachers = {
        "missing": (lambda w: w.case_dir / "none.pt", "none.pt"),
        "garbage": (lambda w: w.write("t.pt", b"\x00garbage" * 50), "not a readable checkpoint"),
        "empty": (lambda w: w.write("t.pt", b""), "not a readable checkpoint"),
        "pickle-payload": (lambda w: _pickled(w, _Payload()), "not a readable checkpoint"),
        "torch-payload": (lambda w: _torch_saved(w, {"format": "crossmodal-checkpoint", "x": _Payload()}),
                          "not a readable checkpoint"),
        "plain-dict": (lambda w: _torch_saved(w, {"a": torch.zeros(2)}), "not a crossmodal checkpoint"),
        "tensor": (lambda w: _torch_saved(w, torch.zeros(3)), "not a crossmodal checkpoint"),
        "directory": (lambda w: w.case_dir, "checkpoint"),
        "meta-missing": (lambda w: _teacher_variant(w, lambda c: c.pop("meta")), "metadata"),
        "meta-not-dict": (lambda w: _teacher_variant(w, lambda c: c.__setitem__("meta", [1, 2])), "metadata"),
        "in_chans-text": (lambda w: _teacher_variant(w, _meta_edit("in_chans", "3")), "in_chans"),
        "in_chans-zero": (lambda w: _teacher_variant(w, _meta_edit("in_chans", 0)), "in_chans"),
        "num_classes-negative": (lambda w: _teacher_variant(w, _meta_edit("num_classes", -4)), "num_classes"),
        "num_classes-float": (lambda w: _teacher_variant(w, _meta_edit("num_classes", 4.0)), "num_classes"),
        "arch-number": (lambda w: _teacher_variant(w, _meta_edit("arch", 8)), "arch"),
        "arch-unknown": (lambda w: _teacher_variant(w, _meta_edit("arch", "resnet_nope")), "resnet_nope"),
        "modality-list": (lambda w: _teacher_variant(w, _meta_edit("modality", ["rgb"])), "modality"),
        "class_names-int": (lambda w: _teacher_variant(w, _meta_edit("class_names", 4)), "class_names"),
        "stats-missing-modality": (lambda w: _teacher_variant(w, _meta_edit("stats", {})), "stats"),
        "stats-wrong-length": (lambda w: _teacher_variant(w, _meta_edit("stats", {"rgb": {"mean": [0.5],
                                                                                           "std": [0.2]}})), "stats"),
        "stats-zero-std": (lambda w: _teacher_variant(w, _meta_edit("stats", {"rgb": {"mean": [0.5] * 3,
                                                                                       "std": [0.0] * 3}})), "stats"),
        "weights-wrong-shape": (lambda w: _teacher_variant(w, _meta_edit("num_classes", 7)), "do not fit"),
        "model-not-dict": (lambda w: _teacher_variant(w, lambda c: c.__setitem__("model", [1])), "state_dict"),
    }
    cases = [Case(f"distill-teacher-{name}", _distill_with_teacher(fn), message=msg)
             for name, (fn, msg) in teachers.items()]
    losses = {
        "all-zero": ({"ce": 0, "kd": 0, "crd": 0}, {}, "every weight is 0"),
        "unknown-loss": ({"ce": 1, "crdd": 1}, {}, "did you mean 'crd'"),
        "nce_k-at-N": ({"crd": 1}, {"crd": {"nce_k": 40}}, "nce_k=40"),
        "nce_k-above-N": ({"crd": 1}, {"crd": {"nce_k": 16384}}, "nce_k=16384"),
        "nce_k-zero": ({"crd": 1}, {"crd": {"nce_k": 0}}, "nce_k"),
        "nce_t-zero": ({"crd": 1}, {"crd": {"nce_k": 8, "nce_t": 0}}, "nce_t"),
        "crd-mode": ({"crd": 1}, {"crd": {"nce_k": 8, "mode": "fuzzy"}}, "mode"),
        "crd-unknown-param": ({"crd": 1}, {"crd": {"nce_kk": 8}}, "nce_kk"),
        "params-without-loss": ({"ce": 1}, {"kd": {"temperature": 4}}, "loss_params.kd"),
        "no-losses": ({}, {}, "at least one loss"),
        "no-teacher": (None, None, "need a teacher"),
    }
    for name, (weights, params, msg) in losses.items():
        def build(w, weights=weights, params=params):
            cfg = _distill(w)
            if weights is None:
                cfg["teachers"] = []
            else:
                cfg["losses"], cfg["loss_params"] = weights, params
            return ["distill", str(w.write_yaml("c.yaml", cfg))]
        cases.append(Case(f"distill-loss-{name}", build, message=msg))
    return cases


def _pickled(w: World, obj) -> Path:
    return w.write("t.pt", pickle.dumps(obj))


def _torch_saved(w: World, obj) -> Path:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return w.write("t.pt", buffer.getvalue())


# ----------------------------------------------------------------------------- prepare

def _png(seed: int = 0, side: int = 8) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (side, side, 3), np.uint8)
    return cv2.imencode(".png", image)[1].tobytes()


def make_image_folder(root: Path, per_class: int = 3, side: int = 8) -> Path:
    """A valid <root>/{train,test}/{cat,dog}/<n>.png folder."""
    for split in ("train", "test"):
        for c, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                (root / split / cls / f"{i}.png").write_bytes(_png(1000 * c + i, side))
    return root


def _tar_with_pax(w: World, record: bytes) -> Path:
    """A tar whose first member carries the pax header `record` (raw bytes), then a valid image."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        data = _png()
        info = tarfile.TarInfo("d/train/cat/0.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    raw = bytearray(buffer.getvalue())
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, len(record)
    header = pax.tobuf(format=tarfile.USTAR_FORMAT)
    body = record + b"\0" * (-len(record) % 512)
    return w.write("d.tar", bytes(header) + body + bytes(raw))


def _zip_with(w: World, flag_bits: int = 0, compress_type: int | None = None) -> Path:
    path = w.case_dir / "d.zip"
    with zipfile.ZipFile(path, "w") as z:
        for split in ("train", "test"):
            for cls in ("cat", "dog"):
                z.writestr(f"d/{split}/{cls}/0.png", _png())
    if flag_bits or compress_type is not None:  # patch every member's headers in place
        data = bytearray(path.read_bytes())
        for sig, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
            start = 0
            while (start := data.find(sig, start)) >= 0:
                if flag_bits:
                    data[start + flag_at] |= flag_bits
                if compress_type is not None:
                    data[start + method_at:start + method_at + 2] = compress_type.to_bytes(2, "little")
                start += 4
        path.write_bytes(bytes(data))
    return path


def _cifar(w: World, meta_obj=None, batch_obj=None) -> Path:
    root = w.case_dir / "cifar"
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows = np.zeros((4, 3072), np.uint8)
    batch = {"data": rows, "labels": [0, 1, 2, 3], "batch_label": "b", "filenames": ["a"] * 4}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch if batch_obj is None else batch_obj, protocol=2))
    meta = {"label_names": [f"c{i}" for i in range(10)]} if meta_obj is None else meta_obj
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


class _SystemCall:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _prepare_cases() -> list[Case]:
    out = lambda w: str(w.case_dir / "out.h5")  # noqa: E731
    src = {
        "missing": (lambda w: w.case_dir / "nowhere", "no such file or directory"),
        "empty-dir": (lambda w: (w.case_dir / "e").mkdir() or w.case_dir / "e", "no images"),
        "empty-file": (lambda w: w.write("d.tar", b""), "empty file"),
        "not-archive": (lambda w: w.write("d.tar", b"hello" * 200), "not a folder, tar"),
        "truncated-gzip": (lambda w: w.write("d.tgz", b"\x1f\x8b" + b"\0" * 40), "truncated or corrupt"),
        "pax-zero-length": (lambda w: _tar_with_pax(w, b"0 x\n"), "corrupt tar header"),
        "pax-length-past-end": (lambda w: _tar_with_pax(w, b"99 path=a\n"), "corrupt tar header"),
        "pax-not-number": (lambda w: _tar_with_pax(w, b"zz path=a\n"), "corrupt tar header"),
        "pax-negative-size": (lambda w: _tar_with_pax(w, b"11 size=-9\n"), "corrupt tar header"),
        "zip-corrupt": (lambda w: w.write("d.zip", b"PK\x03\x04" + b"\0" * 30), "zip"),
        "zip-all-encrypted": (lambda w: _zip_with(w, flag_bits=1), "could be read"),
        "zip-unknown-method": (lambda w: _zip_with(w, compress_type=99), "could be read"),
        "split-without-images": (lambda w: _folder(w, extra_split=True), "split folder has no images"),
        "all-images-corrupt": (lambda w: _folder(w, corrupt="all"), "could be read"),
        "mixed-sizes": (lambda w: _folder(w, odd_size=True), "--size"),
        "truncated-tar": (lambda w: w.write("d.tar", _tar_bytes(w)[:1536]), "truncated"),
        "class-not-in-train": (lambda w: _folder(w, extra_class=True), "class folder not in train"),
    }
    cases = [Case(f"prepare-imagefolder-{name}", lambda w, f=f: ["prepare", "imagefolder", str(f(w)), "--out", out(w)],
                  message=msg) for name, (f, msg) in src.items()]
    cases.append(Case("prepare-imagefolder-strict-corrupt-image", lambda w: [
        "prepare", "imagefolder", str(_folder(w, corrupt="one")), "--out", out(w), "--strict"], message="1.png"))
    for encoding in ("jpeg", "png"):  # encoded preparation treats unreadable images as raw preparation does
        cases.append(Case(f"prepare-imagefolder-{encoding}-strict-corrupt-image", lambda w, e=encoding: [
            "prepare", "imagefolder", str(_folder(w, corrupt="one")), "--out", out(w), "--strict", "--encoding", e,
            "-j", "2"], message="1.png"))
        cases.append(Case(f"prepare-imagefolder-{encoding}-all-images-corrupt", lambda w, e=encoding: [
            "prepare", "imagefolder", str(_folder(w, corrupt="all")), "--out", out(w), "--encoding", e],
            message="could be read"))
    cases.append(Case("prepare-rgbd-encoded", lambda w: ["prepare", "rgbd", str(_rgbd(w)), "--out", out(w),
                                                         "--encoding", "jpeg"], message="stores colour images only"))
    cases += [Case(f"prepare-rgbd-{name}", lambda w, kw=kw: ["prepare", "rgbd", str(_rgbd(w, **kw)), "--out", out(w)],
                   message=msg) for name, (kw, msg) in {
        "no-depth": ({"depth": False}, "depth"),
        "frames-differ": ({"extra_rgb": True}, "0002"),
        "depth-size-differs": ({"depth_side": 12}, "0001"),
        "split-file-latin1": ({"split_text": b"0001 tr\xe9in\n"}, "not UTF-8"),
        "split-file-bad-line": ({"split_text": b"0001\n"}, "expected '<frame> <split>'"),
    }.items()]
    options = {
        "size-zero": (["--size", "0"], "--size"),
        "workers-zero": (["--workers", "0"], "--workers"),
        "modality-unknown": (["-m", "rgb,xyz"], "xyz"),
        "modality-unavailable": (["-m", "depth"], "depth"),
        "modality-empty": (["-m", ","], "no modality"),
        "only-splits-unknown": (["--only-splits", "val"], "val"),
        "bad-option": (["--sise", "3"], "--sise"),
        "encoding-unknown": (["--encoding", "gif"], "--encoding"),
        "max-side-zero": (["--encoding", "jpeg", "--max-side", "0"], "--max-side"),
        "max-side-raw": (["--max-side", "64"], "--max-side needs --encoding jpeg or png"),
        "quality-zero": (["--encoding", "jpeg", "--quality", "0"], "--quality"),
        "reencode-raw": (["--reencode"], "--reencode needs --encoding jpeg"),
        "reencode-png": (["--encoding", "png", "--reencode"], "--reencode needs --encoding jpeg"),
        "subsampling-raw": (["--subsampling", "444"], "--subsampling needs --encoding jpeg"),
        "subsampling-png": (["--encoding", "png", "--subsampling", "444"], "--subsampling needs --encoding jpeg"),
        "subsampling-unknown": (["--encoding", "jpeg", "--subsampling", "422"], "--subsampling"),
        "encoded-modality-unavailable": (["--encoding", "jpeg", "-m", "rgb,depth"], "depth"),
    }
    cases += [Case(f"prepare-option-{name}", lambda w, a=a: ["prepare", "imagefolder", str(w.images), "--out", out(w),
                                                               *a], message=msg) for name, (a, msg) in options.items()]
    outs = {
        "folder-missing": (lambda w: str(w.case_dir / "no" / "x.h5"), "does not exist"),
        "is-directory": (lambda w: str(w.case_dir), "is a directory"),
        "exists": (lambda w: str(w.write("x.h5", b"keep me")), "already exists"),
    }
    cases += [Case(f"prepare-out-{name}", lambda w, f=f: ["prepare", "imagefolder", str(w.images), "--out", f(w)],
                   message=msg) for name, (f, msg) in outs.items()]
    cases += [Case(f"prepare-out-{name}-encoded", lambda w, f=f: ["prepare", "imagefolder", str(w.images), "--out",
                                                                  f(w), "--encoding", "jpeg"], message=msg)
              for name, (f, msg) in outs.items()]
    cifar = {
        "payload-meta": (lambda w: _cifar(w, meta_obj=_SystemCall()), "refused"),
        "payload-batch": (lambda w: _cifar(w, batch_obj={"data": _SystemCall()}), "refused"),
        "meta-not-dict": (lambda w: _cifar(w, meta_obj=[1, 2]), "not a CIFAR pickle"),
        "rows-wrong-shape": (lambda w: _cifar(w, batch_obj={"data": np.zeros((4, 10), np.uint8),
                                                             "labels": [0] * 4}), "expected (N, 3072)"),
        "labels-out-of-range": (lambda w: _cifar(w, batch_obj={"data": np.zeros((2, 3072), np.uint8),
                                                                "labels": [0, 10]}), "labels outside"),
        "rows-text": (lambda w: _cifar(w, batch_obj={"data": "abc", "labels": [0]}), "data_batch_1"),
        "no-labels": (lambda w: _cifar(w, batch_obj={"data": np.zeros((1, 3072), np.uint8)}), "'labels'"),
        "truncated": (lambda w: _truncated_cifar(w), "not a CIFAR pickle"),
        "codec-not-latin1": (lambda w: _cifar_raw(w, b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x03\x00\x00\x00"
                                                     b"hex\x86R."), "refused"),
        "global-builtins-eval": (lambda w: _cifar_raw(w, b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1\x85R."),
                                 "builtins.eval"),
        "global-numpy-other": (lambda w: _cifar_raw(w, b"\x80\x02cnumpy\nload\nX\x01\x00\x00\x00x\x85R."),
                               "numpy.load"),
        "no-folder": (lambda w: w.case_dir, "no cifar-10-batches-py"),
    }
    cases += [Case(f"prepare-cifar10-{name}", lambda w, f=f: ["prepare", "cifar10", str(f(w)), "--out", out(w)],
                   message=msg) for name, (f, msg) in cifar.items()]
    cases += [
        Case("prepare-rgbd-missing", lambda w: ["prepare", "rgbd", str(w.case_dir / "none"), "--out", out(w)],
             message="none"),
        Case("prepare-rgbd-split-file-missing", lambda w: ["prepare", "rgbd", str(w.case_dir), "--split-file",
                                                           str(w.case_dir / "s.txt"), "--out", out(w)],
             message="no rgb/ folder"),
        Case("prepare-nyu-missing", lambda w: ["prepare", "nyu", str(w.case_dir / "n.mat"), "--out", out(w)],
             message="n.mat"),
        Case("prepare-nyu-garbage", lambda w: ["prepare", "nyu", str(w.write("n.mat", b"MATLAB" * 100)), "--out",
                                               out(w)], message="n.mat"),
        Case("prepare-nyu-truncated-hdf5", lambda w: ["prepare", "nyu", str(_truncated_h5(w)), "--out", out(w)],
             message="n.mat"),
        Case("prepare-stl10-missing", lambda w: ["prepare", "stl10", str(w.case_dir), "--out", out(w)],
             message="train_X.bin"),
        Case("prepare-stl10-truncated", lambda w: ["prepare", "stl10", str(_stl(w)), "--out", out(w)],
             message="not a whole number"),
        Case("prepare-unknown-source", lambda w: ["prepare", "cifar11", str(w.case_dir), "--out", out(w)],
             message="cifar11"),
    ]
    return cases


def _folder(w: World, extra_split=False, extra_class=False, corrupt: str = "", odd_size=False) -> Path:
    root = w.case_dir / "f"
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            (root / split / cls / "0.png").write_bytes(b"not a png" if corrupt == "all" else _png())
            if corrupt == "one" and split == "train" and cls == "cat":
                (root / split / cls / "1.png").write_bytes(b"not a png")
    if odd_size:
        (root / "train" / "dog" / "1.png").write_bytes(_png(side=12))
    if extra_split:
        (root / "val" / "cat").mkdir(parents=True)
    if extra_class:
        (root / "test" / "cow").mkdir()
        (root / "test" / "cow" / "0.png").write_bytes(_png())
    return root


def _cifar_raw(w: World, data: bytes) -> Path:
    """A CIFAR folder whose data_batch_1 holds the raw pickle bytes `data`."""
    root = _cifar(w)
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(data)
    return root


def _tar_bytes(w: World) -> bytes:
    """A valid tar of a small image folder, as bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(_folder(w), arcname="d")
    return buffer.getvalue()


def _rgbd(w: World, depth=True, extra_rgb=False, depth_side=8, split_text: bytes | None = None) -> Path:
    """An RGB-D folder rgb/0001.png, depth/0001.png (uint16 mm) with one defect."""
    root = w.case_dir / "rgbd"
    (root / "rgb").mkdir(parents=True)
    (root / "rgb" / "0001.png").write_bytes(_png())
    if extra_rgb:
        (root / "rgb" / "0002.png").write_bytes(_png(1))
    if depth:
        (root / "depth").mkdir()
        depth_mm = np.full((depth_side, depth_side), 1500, np.uint16)
        (root / "depth" / "0001.png").write_bytes(cv2.imencode(".png", depth_mm)[1].tobytes())
    if split_text is not None:
        (root / "split.txt").write_bytes(split_text)
    return root


def _truncated_cifar(w: World) -> Path:
    root = _cifar(w)
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:100])
    return root


def _truncated_h5(w: World) -> Path:
    path = w.case_dir / "n.mat"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.zeros((2, 3, 8, 8), np.uint8))
    path.write_bytes(path.read_bytes()[:1500])
    return path


def _stl(w: World) -> Path:
    folder = w.case_dir / "stl10_binary"
    folder.mkdir()
    for split in ("train", "test"):
        (folder / f"{split}_X.bin").write_bytes(b"\0" * 1000)
    return w.case_dir


# ----------------------------------------------------------------------------- inspect

def _inspect_cases() -> list[Case]:
    return [
        Case("inspect-missing", lambda w: ["inspect", str(w.case_dir / "x.h5")], message="no such file"),
        Case("inspect-directory", lambda w: ["inspect", str(w.case_dir)], message=str("directory")),
        Case("inspect-not-hdf5", lambda w: ["inspect", str(w.write("x.h5", b"hello" * 100))],
             message="not a readable HDF5"),
        Case("inspect-no-attrs", lambda w: ["inspect", str(_bare_h5(w))], message="not a crossmodal"),
        Case("inspect-label-too-big", lambda w: ["inspect", str(_relabelled(w, 4))], message="label 4"),
        Case("inspect-label-below-minus-one", lambda w: ["inspect", str(_relabelled(w, -5))], message="label -5"),
        Case("inspect-bad-json-attr", lambda w: ["inspect", str(_edited_attr(w, "stats", "{oops"))],
             message="'stats'"),
        Case("inspect-class-names-not-list", lambda w: ["inspect", str(_edited_attr(w, "class_names", '"abc"'))],
             message="class_names"),
        Case("inspect-schema-version", lambda w: ["inspect", str(_edited_attr(w, "schema_version", 99))],
             message="schema_version 99"),
        Case("inspect-schema-version-text", lambda w: ["inspect", str(_edited_attr(w, "schema_version", "one"))],
             message="x.h5"),
        Case("inspect-sheet-exists", lambda w: ["inspect", str(w.data), "--sheet", str(w.write("s.png", b"old"))],
             message="--force"),
        Case("inspect-sheet-n-zero", lambda w: ["inspect", str(w.data), "--sheet", str(w.case_dir / "s.png"),
                                                "--n", "0"], message="--n"),
        Case("inspect-sheet-split-unknown", lambda w: ["inspect", str(w.data), "--sheet", str(w.case_dir / "s.png"),
                                                       "--split", "nosuch"], message="nosuch"),
        Case("inspect-sheet-is-directory", lambda w: ["inspect", str(w.data), "--sheet", str(w.case_dir)],
             message="is a directory"),
    ]


def _edited_attr(w: World, key: str, value) -> Path:
    path = w.case_dir / "x.h5"
    shutil.copy(w.data, path)
    with h5py.File(path, "r+") as f:
        f.attrs[key] = value
    return path


# ----------------------------------------------------------------------------- probe

def _probe_cases() -> list[Case]:
    def linear(w, *extra):
        return ["probe", "linear", "--checkpoint", str(w.teacher), "--data", str(w.data), "--out-dir", w.out(),
                "--device", "cpu", *extra]

    def existing_results(w):
        folder = w.case_dir / "runs" / "p"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text("{}")
        return linear(w, "--name", "p")

    def existing_report(w):
        (w.case_dir / "rep").mkdir()
        (w.case_dir / "rep" / "report.md").write_text("old")
        return linear(w, "--report", str(w.case_dir / "rep"))

    def compare(w, *extra):
        return ["probe", "compare", "--teacher", str(w.teacher), "--student", str(w.teacher), "--data", str(w.data),
                "--out-dir", str(w.case_dir / "cmp"), "--device", "cpu", *extra]

    def existing_compare(w):
        (w.case_dir / "cmp").mkdir()
        (w.case_dir / "cmp" / "compare.json").write_text("{}")
        return compare(w)

    return [
        Case("probe-linear-no-checkpoint", lambda w: ["probe", "linear", "--data", str(w.data)],
             message="--checkpoint"),
        Case("probe-linear-no-data", lambda w: ["probe", "linear", "--checkpoint", str(w.teacher)], message="--data"),
        Case("probe-linear-checkpoint-missing", lambda w: ["probe", "linear", "--checkpoint",
                                                           str(w.case_dir / "x.pt"), "--data", str(w.data),
                                                           "--out-dir", w.out()], message="x.pt"),
        Case("probe-linear-checkpoint-garbage", lambda w: ["probe", "linear", "--checkpoint",
                                                           str(w.write("x.pt", b"junk" * 10)), "--data", str(w.data),
                                                           "--out-dir", w.out()], message="x.pt"),
        Case("probe-linear-results-exist", existing_results, message="--force"),
        Case("probe-linear-report-exists", existing_report, message="--force"),
        Case("probe-linear-epochs-zero", lambda w: linear(w, "--epochs", "0"), message="optim.epochs"),
        Case("probe-linear-batch-negative", lambda w: linear(w, "--batch-size", "-2"), message="optim.batch_size"),
        Case("probe-linear-stage-bad", lambda w: linear(w, "--stage", "middle"), message="middle"),
        Case("probe-linear-name-escape", lambda w: linear(w, "--name", "../../x"), message="run name"),
        Case("probe-linear-data-bad-labels", lambda w: ["probe", "linear", "--checkpoint", str(w.teacher), "--data",
                                                        str(_relabelled(w, 9)), "--out-dir", w.out()],
             message="label 9"),
        Case("probe-dense-folds-one", lambda w: ["probe", "dense", "--checkpoint", str(w.teacher), "--data",
                                                 str(w.data), "--out-dir", w.out(), "--set", "dense.folds=1"],
             message="dense.folds"),
        Case("probe-config-syntax", lambda w: ["probe", "linear", str(w.write("p.yaml", "checkpoint: [x\n"))],
             message="not valid YAML"),
        Case("probe-config-latin1", lambda w: ["probe", "linear", str(w.write("p.yaml", b"name: \xe9\n"))],
             message="not UTF-8"),
        Case("probe-config-alias-bomb", lambda w: ["probe", "linear", str(w.write(
            "p.yaml", "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))))],
             message="aliases"),
        Case("probe-config-method-mismatch", lambda w: ["probe", "dense", str(w.write_yaml(
            "p.yaml", {"method": "linear", "checkpoint": str(w.teacher), "data": {"path": str(w.data)}}))],
             message="probe linear"),
        Case("probe-finetune-resume-nothing", lambda w: ["probe", "finetune", "--checkpoint", str(w.teacher),
                                                         "--data", str(w.data), "--out-dir", w.out(), "--resume",
                                                         "--device", "cpu"], message="nothing to resume"),
        Case("probe-compare-exists", existing_compare, message="--force"),
        Case("probe-compare-batch-zero", lambda w: compare(w, "--batch-size", "0"), message="--batch-size"),
        Case("probe-compare-split-unknown", lambda w: compare(w, "--split", "nosuch"), message="nosuch"),
        Case("probe-compare-student-missing", lambda w: ["probe", "compare", "--teacher", str(w.teacher), "--student",
                                                         str(w.case_dir / "s.pt"), "--data", str(w.data),
                                                         "--out-dir", str(w.case_dir / "cmp")], message="s.pt"),
        Case("probe-unknown-method", lambda w: ["probe", "knn"], message="knn"),
        Case("probe-dense-no-segmentation", lambda w: ["probe", "dense", "--checkpoint", str(w.teacher), "--data",
                                                       str(w.data), "--out-dir", w.out(), "--device", "cpu"],
             message="segmentation"),
        Case("probe-linear-modality-unknown", lambda w: linear(w, "--modality", "xyz"), message="xyz"),
        Case("probe-linear-modality-absent", lambda w: linear(w, "--modality", "depth"), message="depth"),
        Case("probe-linear-input-size-negative", lambda w: linear(w, "--input-size", "-3"), message="-3"),
        Case("probe-linear-stats-bad", lambda w: linear(w, "--stats", "mine"), message="mine"),
        Case("probe-linear-split-unknown", lambda w: linear(w, "--test-split", "nosuch"), message="nosuch"),
    ]


# ----------------------------------------------------------------------------- quickstart

def _quickstart_cases() -> list[Case]:
    return [
        Case("quickstart-threads-zero", lambda w: ["quickstart", "--out-dir", w.out("q"), "--threads", "0"],
             message="--threads"),
        Case("quickstart-out-dir-is-file", lambda w: ["quickstart", "--out-dir", str(w.write("q", b"x")), "--tiny"],
             message="q"),
        Case("quickstart-foreign-folder", lambda w: ["quickstart", "--out-dir", str(_foreign(w)), "--tiny"],
             message="not empty"),
        Case("quickstart-seed-text", lambda w: ["quickstart", "--seed", "abc"], message="abc"),
        Case("quickstart-device-bad", lambda w: ["quickstart", "--out-dir", w.out("q"), "--tiny", "--device", "tpu"],
             message="tpu"),
        Case("quickstart-unknown-option", lambda w: ["quickstart", "--fast"], message="--fast"),
        Case("quickstart-out-dir-under-file", lambda w: ["quickstart", "--out-dir", str(w.write("f", b"x")) + "/q",
                                                         "--tiny"], message="f/q"),
    ]


def _foreign(w: World) -> Path:
    folder = w.case_dir / "q"
    folder.mkdir()
    (folder / "mine.txt").write_text("not a quickstart folder")
    return folder


# ----------------------------------------------------------------------------- FIFOs where a file is expected

def _fifo(w: World, name: str) -> Path:
    """A named pipe: reading it blocks until a writer comes, so a reader that opens it hangs."""
    path = w.case_dir / name
    os.mkfifo(path)
    return path


def _fifo_cases() -> list[Case]:
    def with_data(cfg, path):
        return _set_dotted(cfg, "data.path", str(path))

    return [
        Case("teach-fifo-config", lambda w: ["teach", str(_fifo(w, "c.yaml"))], message="c.yaml"),
        Case("teach-fifo-data", lambda w: ["teach", str(w.write_yaml("c.yaml", with_data(_teach(w), _fifo(w, "d.h5"))))],
             message="not a regular file"),
        Case("distill-fifo-teacher", _distill_with_teacher(lambda w: _fifo(w, "t.pt")), message="t.pt"),
        Case("inspect-fifo", lambda w: ["inspect", str(_fifo(w, "x.h5"))], message="not a regular file"),
        Case("prepare-fifo-archive", lambda w: ["prepare", "imagefolder", str(_fifo(w, "d.tar")), "--out",
                                                str(w.case_dir / "o.h5")], message="not a folder or a regular file"),
        Case("prepare-fifo-cifar-batch", lambda w: ["prepare", "cifar10", str(_cifar_fifo(w)), "--out",
                                                    str(w.case_dir / "o.h5")], message="data_batch_1"),
        Case("prepare-fifo-nyu", lambda w: ["prepare", "nyu", str(_fifo(w, "n.mat")), "--out", str(w.case_dir / "o.h5")],
             message="n.mat"),
        Case("probe-fifo-checkpoint", lambda w: ["probe", "linear", "--checkpoint", str(_fifo(w, "c.pt")), "--data",
                                                 str(w.data), "--out-dir", w.out()], message="c.pt"),
        Case("probe-fifo-config", lambda w: ["probe", "linear", str(_fifo(w, "p.yaml"))], message="p.yaml"),
    ]


def _cifar_fifo(w: World) -> Path:
    root = _cifar(w)
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    batch.unlink()
    os.mkfifo(batch)
    return root


# ----------------------------------------------------------------------------- the table

def all_cases() -> list[Case]:
    """Every case of the table, ids unique."""
    cases = (_value_cases("teach", _teach, {**BAD_RUN_VALUES, **BAD_TEACH_ONLY})
             + _value_cases("distill", _distill, {**BAD_RUN_VALUES, **BAD_DISTILL_ONLY})
             + _config_file_cases("teach", _teach) + _config_file_cases("distill", _distill)
             + _distill_cases() + _prepare_cases() + _inspect_cases() + _probe_cases() + _quickstart_cases()
             + _fifo_cases())
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "duplicate fuzz case ids"
    return cases


CASES = all_cases()
