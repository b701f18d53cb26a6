"""Run configs: YAML files validated against typed dataclasses.

A config schema is a tree of dataclasses. `load_config(path, TeachConfig, overrides)` reads the
YAML with `yaml.safe_load`, applies `--set a.b=c` overrides, and checks every key and value
against the type hints, raising a one-line ConfigError that names the file, the dotted key and
what to do (the nearest valid key for a typo). Supported field types: bool, int, float (ints
accepted, and strings such as "5e-4" that YAML 1.1 does not read as numbers), str, Literal[...]
(a choice), Optional[X], list[X], dict[str, X], nested dataclasses (lists of them too) and Any.

Adding a schema (e.g. distill's) is a new top-level dataclass reusing the sections here::

    @dataclass
    class DistillConfig(RunConfig):
        student: ModelConfig = field(default_factory=ModelConfig)
        teachers: list[TeacherConfig] = field(default_factory=list)
        losses: dict[str, float] = field(default_factory=dict)
        loss_params: dict[str, dict] = field(default_factory=dict)

Fields whose default is `REQUIRED` must appear in the file (or in an override).
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, TypeVar, Union

import yaml

from crossmodal.errors import ConfigError

REQUIRED: Any = "???"  # sentinel default: the key must be given

T = TypeVar("T")


# ----------------------------------------------------------------------------- sections


@dataclass
class AugmentConfig:
    """Paired augmentation of the training split (crossmodal.data.transforms.PairedAugment)."""

    crop: Optional[int] = None  # random crop to this size (after `padding`)
    padding: int = 0  # zero padding on each side before the random crop
    hflip: bool = False  # random horizontal flip
    random_resized_crop: Optional[int] = None  # RandomResizedCrop output size (ImageNet style)
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # area range of random_resized_crop


@dataclass
class DataConfig:
    """Which prepared file and splits to read, and how to load them."""

    path: str = REQUIRED  # prepared HDF5 file (crossmodal prepare)
    train_split: str = "train"
    test_split: str = "test"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    preload: bool = False  # read the whole split into memory once
    workers: int = 0  # DataLoader worker processes


@dataclass
class ModelConfig:
    """The network being trained and the modality it reads."""

    arch: str = REQUIRED  # crossmodal.models name ('resnet8x4') or 'timm:<name>'
    modality: str = "rgb"
    pretrained: bool = False  # timm models only: start from the hub's pretrained weights


@dataclass
class OptimConfig:
    """Optimiser, batch, schedule and regularisation (crossmodal.engine.optim)."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05  # for the global batch `batch_size` (never rescaled automatically)
    momentum: float = 0.9  # SGD momentum (AdamW: beta1 stays 0.9)
    nesterov: bool = False
    weight_decay: float = 5e-4
    batch_size: int = 64  # global batch: summed over DDP processes
    epochs: int = 240
    schedule: Literal["step", "cosine", "constant"] = "step"
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])  # epochs (step schedule)
    gamma: float = 0.1  # step schedule factor at each milestone
    warmup_epochs: float = 0.0  # linear warmup, per iteration
    label_smoothing: float = 0.0
    grad_clip: Optional[float] = None  # max global gradient L2 norm


@dataclass
class EngineConfig:
    """Where and how the loop runs (crossmodal.engine.trainer)."""

    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    compile: bool = False  # torch.compile the model
    deterministic: bool = False  # torch.use_deterministic_algorithms + cuDNN flags
    sync_bn: bool = False  # SyncBatchNorm across DDP processes (CUDA only)
    max_steps_per_epoch: Optional[int] = None  # cap steps per epoch (CPU-sized runs)
    eval_every: int = 1  # evaluate every N epochs (and always after the last)
    save_every: int = 1  # write last.pt every N epochs (and always after the last)
    log_every: int = 50  # steps between progress-bar / TensorBoard updates
    progress: bool = True  # show the tqdm progress bar


@dataclass
class RunConfig:
    """Keys every run shares; a task's schema subclasses it and adds its sections."""

    name: str = ""  # run name; empty = the config file's stem
    seed: int = 0
    out_dir: str = "runs"  # the run writes to <out_dir>/<name>/
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)


@dataclass
class TeachConfig(RunConfig):
    """`crossmodal teach`: a supervised classifier on one modality."""

    model: ModelConfig = field(default_factory=ModelConfig)


# ----------------------------------------------------------------------------- loading


def load_config(path: str | Path, schema_cls: type[T], overrides: Iterable = ()) -> T:
    """Read YAML `path`, apply `overrides` ('a.b=c' strings or (key, value) pairs), validate into `schema_cls`."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{line}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    for key, value in (parse_override(o) for o in overrides):
        where = f"--set {key}"
        _convert(check_key_path(schema_cls, key, where), value, where, key)  # errors name the override
        set_dotted(raw, key, value, where)
    if "name" in _fields(schema_cls) and not raw.get("name"):
        raw["name"] = path.stem
    return from_dict(schema_cls, raw, source=str(path))


def parse_override(override) -> tuple[str, Any]:
    """'a.b=c' -> ('a.b', yaml.safe_load('c')); a (key, value) pair passes through."""
    if isinstance(override, tuple):
        return override
    key, sep, text = str(override).partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected KEY=VALUE, e.g. --set optim.lr=0.1")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {override!r}: the value is not valid YAML") from None
    return key.strip(), value


def from_dict(cls: type[T], data: dict, source: str = "<config>", prefix: str = "") -> T:
    """Validate mapping `data` against dataclass `cls` and build it (errors name `source` and the dotted key)."""
    fields = _fields(cls)
    if not isinstance(data, dict):
        where = repr(prefix.rstrip(".")) if prefix else "the top level"
        raise ConfigError(f"{source}: {where} must be a mapping, got {_show(data)}")
    for key in data:
        if key not in fields:
            raise ConfigError(f"{source}: unknown key {prefix + str(key)!r}{_hint(key, fields, prefix)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], source, prefix + name)
        elif dataclasses.is_dataclass(hints[name]):  # an absent section: its own required keys still count
            kwargs[name] = from_dict(hints[name], {}, source, prefix + name + ".")
        elif f.default is REQUIRED:
            raise ConfigError(f"{source}: missing required key {prefix + name!r}")
    return cls(**kwargs)


def config_to_dict(cfg) -> dict:
    """A config dataclass -> plain dict of YAML-safe values (what config.yaml holds)."""
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    atomic_write_text(Path(path), text)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    with atomic_write(path, "w") as f:
        f.write(text)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb"):
    """Yield a file opened on a temporary name beside `path`; on success fsync it and rename it over `path`.

    Readers (and a run killed mid-write) see either the old file or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the user's usual mode
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


# ----------------------------------------------------------------------------- helpers


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _hint(key, valid: Iterable[str], prefix: str) -> str:
    near = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.5)
    if near:
        return f"; did you mean {prefix + near[0]!r}?"
    return f" (valid keys here: {', '.join(valid)})"


def _show(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return f"a {origin.__name__} of " + ", ".join(_type_name(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _convert(tp, value, source: str, key: str):
    """Check `value` against type `tp` and return it converted (ints to float, nested dataclasses built)."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{source}: {key!r} must be {_type_name(tp)}, got {_show(value)}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, key + ".")
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, source, key)
            except ConfigError:
                pass
        raise bad
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise bad
        return [_convert(item_tp, v, source, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        key_tp, item_tp = typing.get_args(tp) or (str, Any)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad
        return {k: _convert(item_tp, v, source, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 5e-4 (no dot) as a string: accept what float() accepts
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"config field {key!r} has unsupported type {tp!r}")  # a schema bug, not a user error


def _child_type(tp, part: str, where: str, prefix: str):
    """The type one dotted step below `tp` (dataclass field, list index, dict key), or ConfigError."""
    tp = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        fields = _fields(tp)
        if part not in fields:
            raise ConfigError(f"{where}: unknown key {prefix + part!r}{_hint(part, fields, prefix)}")
        return typing.get_type_hints(tp)[part]
    if origin is list:
        if not part.isdigit():
            raise ConfigError(f"{where}: {prefix.rstrip('.')!r} is a list; address an item by number, e.g. {prefix}0")
        return (typing.get_args(tp) or (Any,))[0]
    if origin is dict or tp is dict:
        return (typing.get_args(tp) or (str, Any))[1]
    if tp is Any:
        return Any
    raise ConfigError(f"{where}: {prefix.rstrip('.')!r} is {_type_name(tp)}, it has no key {part!r}")


def _strip_optional(tp):
    if typing.get_origin(tp) is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def check_key_path(schema_cls, key: str, where: str):
    """The type of the field dotted `key` addresses in `schema_cls`; ConfigError (naming `where`) if none."""
    tp, prefix = schema_cls, ""
    for part in key.split("."):
        tp = _child_type(tp, part, where, prefix)
        prefix += part + "."
    return tp


def set_dotted(raw: dict, key: str, value, where: str) -> None:
    """Set `raw[a][b][c] = value` for key 'a.b.c', creating mappings on the way (list items by number)."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        if isinstance(node, list):
            node = _list_item(node, part, where)
            continue
        if not isinstance(node.get(part), (dict, list)):
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        index = int(last)
        _list_item(node, last, where)
        node[index] = value
    else:
        node[last] = value


def _list_item(node: list, part: str, where: str):
    index = int(part)
    if index >= len(node):
        raise ConfigError(f"{where}: the list has {len(node)} items, there is no item {index}")
    if node[index] is None:
        node[index] = {}
    return node[index]
