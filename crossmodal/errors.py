"""User-facing errors: one line naming the file, key or value, and what to do."""


class CrossmodalError(Exception):
    """A problem with the user's input (file, config key, value). The CLI prints it as one line and exits 2."""


class DataError(CrossmodalError):
    """A raw source or prepared HDF5 file is missing, malformed or does not match the schema."""


class ConfigError(CrossmodalError):
    """A config key is unknown, has the wrong type, or has an invalid value."""


def did_you_mean(value, choices, prefix: str = "", cutoff: float = 0.6) -> str:
    """"; did you mean 'X'?" for the nearest of `choices` to `value` (shown as prefix + X), or "" when none is near."""
    import difflib

    near = difflib.get_close_matches(str(value), sorted(str(c) for c in choices), n=1, cutoff=cutoff)
    return f"; did you mean {prefix + near[0]!r}?" if near else ""


def require_file(path, error: type[CrossmodalError], missing: str, expected: str) -> None:
    """Raise `error` in one line naming `path` unless it is an existing regular file: "<path>: <missing>" when
    nothing is there, "<path>: not a regular file; <expected>" when it is a folder or a device."""
    from pathlib import Path

    if not Path(path).exists():
        raise error(f"{path}: {missing}")
    if not Path(path).is_file():
        raise error(f"{path}: not a regular file; {expected}")
