"""Temporary files: named after their writer's pid, removed by the next write once that writer is dead."""
from __future__ import annotations

import os
import subprocess
import sys

from crossmodal.tempfiles import atomic_write_text, temp_path, temp_prefix


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_next_write_removes_temporaries_of_dead_writers_only(tmp_path):
    target = tmp_path / "x.json"
    host_prefix = temp_prefix(target).rsplit("-", 1)[0]  # '.x.json.<host>'
    dead = tmp_path / f"{host_prefix}-{dead_pid()}.abc123.tmp"
    alive = tmp_path / f"{host_prefix}-{os.getppid()}.abc123.tmp"  # our parent: alive
    mine = temp_path(target)
    other_host = tmp_path / f".x.json.elsewhere-{dead_pid()}.abc123.tmp"  # another machine's: never ours to judge
    other_file = tmp_path / f"{temp_prefix(tmp_path / 'y.json').rsplit('-', 1)[0]}-{dead_pid()}.abc123.tmp"
    for path in (dead, alive, mine, other_host, other_file):
        path.write_text("partial")
    atomic_write_text(target, "{}")
    assert target.read_text() == "{}"
    assert not dead.exists()
    assert alive.exists() and mine.exists() and other_host.exists() and other_file.exists()


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")
    try:
        from crossmodal.tempfiles import atomic_write

        with atomic_write(target, "w") as f:
            f.write("half")
            raise OSError(28, "No space left on device")
    except OSError:
        pass
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_atomic_writes_get_the_mode_the_umask_gives_and_never_change_the_umask(tmp_path):
    """The output's mode is 0o666 less the umask, as open() would give it; the umask is not read or changed
    (it was once changed and restored at import, which races with other threads creating files)."""
    import stat

    from crossmodal.tempfiles import atomic_write_text

    before = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
        assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600
        assert os.umask(0o077) == 0o077  # still what this test set
    finally:
        os.umask(before)
