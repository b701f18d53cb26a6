"""The config validator: YAML files checked against typed dataclasses, with one-line errors.

`load_config(path, schema, overrides)` reads the YAML with `yaml.safe_load` (UTF-8, size-capped), merges
the recipes it extends (`base:`), applies `--set a.b=c` overrides, and checks every key and value against
the schema's type hints and BOUNDS, raising a one-line ConfigError that names the file, the dotted key
and what to do (the nearest valid key for a typo). Supported field types: bool, int, float (ints
accepted, and strings such as "5e-4" that YAML 1.1 does not read as numbers), str, Literal[...]
(a choice), Optional[X], list[X], dict[str, X], nested dataclasses (lists of them too) and Any.

The schemas are not here: the sections every task shares are in crossmodal.sections, and each task's
schema sits with its task, e.g. crossmodal.tasks.teach::

    @dataclass
    class TeachConfig(RunConfig):
        model: ModelConfig = field(default_factory=ModelConfig)

Fields whose default is `REQUIRED` must appear in the file (or in an override).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, TypeVar, Union

import yaml

from crossmodal.errors import ConfigError, did_you_mean, require_file
from crossmodal.tempfiles import atomic_write_text

REQUIRED: Any = "???"  # sentinel default: the key must be given

T = TypeVar("T")


@dataclass(frozen=True)
class Bound:
    """The numbers a config key accepts (None = unbounded); a section lists its keys' bounds in BOUNDS.

    A bound on a list or mapping applies to each of its items (milestones, loss weights)."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False  # low itself is excluded
    high_open: bool = False

    def allows(self, value) -> bool:
        """True when `value` lies within the bound (NaN never does)."""
        if value != value:  # NaN
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def describe(self) -> str:
        """'>= 1', '> 0', 'in [0, 1)'."""
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"


def at_least(low: float) -> Bound:
    """Bound: value >= low."""
    return Bound(low=low)


def above(low: float) -> Bound:
    """Bound: value > low."""
    return Bound(low=low, low_open=True)


FRACTION = Bound(0, 1, high_open=True)  # [0, 1)


# ----------------------------------------------------------------------------- loading


MAX_CONFIG_BYTES = 1 << 20  # a config is a page of YAML; anything this large is not one
MAX_CONFIG_NODES = 100_000  # values after expanding YAML aliases (an "alias bomb" expands to billions)


def read_yaml(path: str | Path):
    """Parse a YAML config file safely: UTF-8, at most MAX_CONFIG_BYTES, aliases expanding to few values.

    Raises ConfigError naming the file (and the line of a syntax error)."""
    path = Path(path)
    require_file(path, ConfigError, "no such config file", "pass a YAML config file")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or e})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; a config is a short YAML file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save the config as UTF-8") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str):
    """yaml.safe_load `text`, refusing syntax errors and alias bombs with a ConfigError naming `source`."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"{source}: not valid YAML{line}: {getattr(e, 'problem', None) or e}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a config") from None
    _check_size(raw, source)
    return raw


def _check_size(raw, source: str) -> None:
    """ConfigError when `raw`, with aliases expanded, holds more than MAX_CONFIG_NODES values (or loops)."""
    stack, seen = [raw], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_CONFIG_NODES:
            raise ConfigError(f"{source}: expands to more than {MAX_CONFIG_NODES:,} values (YAML aliases?); "
                              f"write the config out plainly")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def load_config(path: str | Path, schema_cls: type[T], overrides: Iterable = ()) -> T:
    """Read YAML `path`, apply `overrides` ('a.b=c' strings or (key, value) pairs), validate into `schema_cls`."""
    path = Path(path)
    raw = read_config_file(path, schema_cls)
    for key, value in (parse_override(o) for o in overrides):
        where = f"--set {key}"
        converted = _convert(check_key_path(schema_cls, key, where), value, where, key)  # errors name the override
        _check_override_bound(schema_cls, key, converted, where)
        set_dotted(raw, key, value, where)
    if "name" in _fields(schema_cls) and not raw.get("name"):
        raw["name"] = path.stem
    return from_dict(schema_cls, raw, source=str(path))


BASE_KEY = "base"  # a config may name a recipe it extends: `base: ../recipes/cifar100.yaml`
MAX_BASE_DEPTH = 8


def read_config_file(path: str | Path, schema_cls: type, _chain: tuple = ()) -> dict:
    """The mapping config file `path` holds, with the recipe it extends (its `base:` key) merged under it.

    `base` is a path relative to the file naming it; a base may extend another. Sections (the
    nested dataclasses: data, optim, ...) merge key by key, the extending file winning; any other
    value, a list or a mapping such as `losses`, replaces the base's whole. Each file's keys and
    values are checked against `schema_cls` on their own, so an error names the file that holds the
    culprit; the extending file's keys and the required keys are checked once everything is merged."""
    path = Path(path)
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    base = raw.pop(BASE_KEY, None)
    if _chain:  # a recipe: checked here so errors name it (the extending file is checked once merged)
        check_partial(schema_cls, raw, str(path))
    if base is None:
        return raw
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: {BASE_KEY!r} must be the path of the config it extends, got {_show(base)}")
    base_path = path.parent / base
    chain = _chain + (path.resolve(),)
    if base_path.resolve() in chain:
        raise ConfigError(f"{path}: {BASE_KEY} {base!r} extends itself (through {' -> '.join(p.name for p in chain)})")
    if len(chain) > MAX_BASE_DEPTH:
        raise ConfigError(f"{path}: more than {MAX_BASE_DEPTH} nested bases; flatten the recipe")
    if not base_path.exists():
        raise ConfigError(f"{path}: {BASE_KEY} {base!r}: no such file ({base_path}; relative to the config's folder)")
    return merge_sections(schema_cls, read_config_file(base_path, schema_cls, chain), raw)


def check_partial(cls, data: dict, source: str, prefix: str = "") -> None:
    """Check the keys and values `data` holds against dataclass `cls`, without asking for required keys."""
    fields = _fields(cls)
    _check_known_keys(fields, data, source, prefix)
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            check_partial(tp, value, source, prefix + name + ".")
        else:
            check_bound(cls, name, _convert(tp, value, source, prefix + name), source, prefix + name)


def _check_known_keys(fields: dict, data: dict, source: str, prefix: str) -> None:
    """ConfigError naming the first key of `data` that is not a field (with the nearest field as a hint)."""
    for key in data:
        if key not in fields:
            raise ConfigError(f"{source}: unknown key {prefix + str(key)!r}{_hint(key, fields, prefix)}")


def merge_sections(cls, base: dict, child: dict) -> dict:
    """`base` updated by `child`: sections (nested dataclasses) merge key by key, other values replace."""
    hints = typing.get_type_hints(cls)
    merged = dict(base)
    for key, value in child.items():
        tp = hints.get(key)
        if (tp is not None and dataclasses.is_dataclass(tp) and isinstance(value, dict)
                and isinstance(merged.get(key), dict)):
            merged[key] = merge_sections(tp, merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(override) -> tuple[str, Any]:
    """'a.b=c' -> ('a.b', yaml.safe_load('c')); a (key, value) pair passes through."""
    if isinstance(override, tuple):
        return override
    key, sep, text = str(override).partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected KEY=VALUE, e.g. --set optim.lr=0.1")
    value = parse_yaml(text, f"--set {override!r}") if text.strip() else None
    return key.strip(), value


def from_dict(cls: type[T], data: dict, source: str = "<config>", prefix: str = "") -> T:
    """Validate mapping `data` against dataclass `cls` and build it (errors name `source` and the dotted key)."""
    fields = _fields(cls)
    if not isinstance(data, dict):
        where = repr(prefix.rstrip(".")) if prefix else "the top level"
        raise ConfigError(f"{source}: {where} must be a mapping, got {_show(data)}")
    _check_known_keys(fields, data, source, prefix)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], source, prefix + name)
            check_bound(cls, name, kwargs[name], source, prefix + name)
        elif dataclasses.is_dataclass(hints[name]):  # an absent section: its own required keys still count
            kwargs[name] = from_dict(hints[name], {}, source, prefix + name + ".")
        elif f.default is REQUIRED:
            raise ConfigError(f"{source}: missing required key {prefix + name!r}")
    return cls(**kwargs)


def check_bound(cls, name: str, value, source: str, key: str) -> None:
    """ConfigError naming `source` and `key` when `value` (or an item of it) is outside cls.BOUNDS[name]."""
    bound = getattr(cls, "BOUNDS", {}).get(name)
    if bound is None:
        return
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else [(None, value)]
    for sub, item in items:
        if isinstance(item, (int, float)) and not isinstance(item, bool) and not bound.allows(item):
            where = key if sub is None else f"{key}.{sub}"
            raise ConfigError(f"{source}: {where!r} must be {bound.describe()}, got {item!r}")


def config_to_dict(cfg) -> dict:
    """A config dataclass -> plain dict of YAML-safe values (what config.yaml holds)."""
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    atomic_write_text(Path(path), text)


# ----------------------------------------------------------------------------- helpers


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _hint(key, valid: Iterable[str], prefix: str) -> str:
    return did_you_mean(key, valid, prefix, cutoff=0.5) or f" (valid keys here: {', '.join(valid)})"


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


def _check_override_bound(schema_cls, key: str, value, where: str) -> None:
    """Check an override's value against the bound of the field it sets (or of the field holding it)."""
    tp, owner, name = schema_cls, None, None
    for part in key.split("."):
        if dataclasses.is_dataclass(_strip_optional(tp)):
            owner, name = _strip_optional(tp), part
        tp = _child_type(tp, part, where, "")
    if owner is None:
        return
    check_bound(owner, name, value, where, key)  # a whole list or mapping, or one item of it


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
