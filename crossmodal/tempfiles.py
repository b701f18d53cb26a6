"""Writing outputs safely: atomic writes through temporary names a later run can attribute, and free-space checks.

Every output is first written as `.<name>.<host>-<pid>.<random>.tmp` in the output's folder and
renamed over `<name>` when complete (`atomic_write`), so readers, and a run killed mid-write, see
either the old file or the whole new one. A process killed with SIGKILL (or by the machine going
down) cannot remove its temporary file; the next write of the same output (and the next run
into the same run folder) removes the ones whose process, on this host, no longer exists.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import uuid
from pathlib import Path

from crossmodal.errors import DataError

FREE_SPACE_MARGIN = 0.05  # a write needs its estimated size plus 5 % ...
FREE_SPACE_SLACK = 64 << 20  # ... plus 64 MiB for metadata and whatever else writes meanwhile


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"


def temp_prefix(path: str | Path) -> str:
    """'.<name>.<host>-<pid>.': the start of this process's temporary names for `path`."""
    return f".{Path(path).name}.{_host()}-{os.getpid()}."


def temp_path(path: str | Path) -> Path:
    """A new temporary name beside `path` for this process (not created)."""
    path = Path(path)
    return path.parent / f"{temp_prefix(path)}{uuid.uuid4().hex[:12]}.tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete temporary files of `path` left by dead processes of this host; return what was removed."""
    path = Path(path)
    return _remove_stale(path.parent, re.escape(path.name))


def remove_stale_temporaries_in(folder: str | Path) -> list[Path]:
    """Delete the temporary files of every output in `folder` left by dead processes of this host."""
    return _remove_stale(Path(folder), r".+")


def _remove_stale(folder: Path, name_pattern: str) -> list[Path]:
    pattern = re.compile(rf"^\.{name_pattern}\.{re.escape(_host())}-(\d+)\.[A-Za-z0-9_]+\.tmp$")
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass  # gone meanwhile, or not ours to remove
    return removed


def check_free_space(path: str | Path, needed_bytes: int, what: str) -> None:
    """DataError naming `path` when its folder lacks `needed_bytes` plus the margin; no-op if unknown."""
    folder = Path(path).parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    required = int(needed_bytes * (1 + FREE_SPACE_MARGIN)) + FREE_SPACE_SLACK
    if free < required:
        raise DataError(f"{path}: {what} needs about {_mb(required)} MB (estimate plus margin) but {folder} has "
                        f"{_mb(free)} MB free; free some space or write elsewhere")


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f}"


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb"):
    """Yield a file opened on a temporary name beside `path`; on success fsync it and rename it over `path`.

    The temporary file is created with mode 0o666 less the process's umask, as open() would create `path`
    itself (the umask is applied by the kernel, never read or changed here).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)  # of a writer killed mid-write (SIGKILL): its pid is in the name
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # keep the original error, not the cleanup's
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    with atomic_write(path, "w") as f:
        f.write(text)
