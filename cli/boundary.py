"""The error boundary every command runs inside: how any failure ends a `crossmodal` process.

    expected failure (CrossmodalError, a usage error, an OSError such as a full disk)
                         -> one line `error: ...` on stderr, exit 2
    Ctrl-C (SIGINT)      -> `error: interrupted`, exit 130, after every `finally` cleaned up
    SIGTERM              -> `error: terminated`, exit 143, likewise (SIGTERM is turned into an
                            exception so the same cleanup runs as for Ctrl-C)
    unexpected exception -> one line naming the exception and the file holding the full
                            traceback, exit 1 (a bug: please report it with that file)
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import click

EXIT_ERROR = 2  # the user's input or environment: fix it and rerun
EXIT_BUG = 1  # an unexpected exception
EXIT_SIGINT = 128 + signal.SIGINT  # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143
NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2
CRASH_DIR_ENV = "CROSSMODAL_CRASH_DIR"  # where tracebacks of unexpected exceptions go (default: the temp folder)


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException like KeyboardInterrupt, so `except Exception` cannot swallow it."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no message)"


def error_line(message: str) -> None:
    """Print `error: MESSAGE` on stderr, as one line."""
    click.echo(f"error: {_one_line(message)}", err=True)


def write_crash_report(exc: BaseException) -> Path:
    """Write the full traceback of `exc` to a new file under CROSSMODAL_CRASH_DIR (or the temp folder)."""
    folder = Path(os.environ.get(CRASH_DIR_ENV) or tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    fd, name = tempfile.mkstemp(prefix=f"crossmodal-crash-{stamp}-{os.getpid()}-", suffix=".txt", dir=folder)
    with os.fdopen(fd, "w") as f:
        f.write(f"crossmodal {' '.join(sys.argv)}\n\n")
        f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return Path(name)


def _os_error_message(e: OSError) -> str:
    """'<file>: <reason>' for an OSError that reached the boundary (full disk, permissions, ...)."""
    reason = e.strerror or str(e)
    where = e.filename
    hint = ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "; free some space and rerun (a training run continues with --resume)"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "; choose a folder you can write to"
    return f"{where}: {reason}{hint}" if where else f"{reason}{hint}"


@contextlib.contextmanager
def sigterm_raises():
    """While inside, SIGTERM raises Terminated in the main thread (a second SIGTERM kills at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # cleanup that hangs can still be stopped
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_guarded(main, ctx_hint: str = "crossmodal") -> int:
    """Call `main()` inside the boundary; return the process exit status (see the module doc)."""
    from crossmodal.errors import CrossmodalError

    try:
        with sigterm_raises():
            result = main()
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except NO_ARGS_IS_HELP as e:  # `crossmodal` or `crossmodal prepare` alone: the help is the answer
        e.show()
        return e.exit_code
    except click.exceptions.UsageError as e:
        command = e.ctx.command_path if e.ctx is not None else ctx_hint
        error_line(f"{e.format_message()} (see `{command} --help`)")
        return EXIT_ERROR
    except click.ClickException as e:
        error_line(e.format_message())
        return EXIT_ERROR
    except CrossmodalError as e:
        error_line(str(e))
        return EXIT_ERROR
    except (KeyboardInterrupt, click.exceptions.Abort):
        error_line("interrupted")
        return EXIT_SIGINT
    except Terminated:
        error_line("terminated (SIGTERM)")
        return EXIT_SIGTERM
    except OSError as e:
        error_line(_os_error_message(e))
        return EXIT_ERROR
    except Exception as e:  # a bug: one line here, the whole story in a file
        try:
            where = f"full traceback in {write_crash_report(e)}"
        except OSError:
            where = "the traceback could not be written to a file"
        error_line(f"internal error {type(e).__name__}: {_one_line(e)[:200]}; {where}; please report it")
        return EXIT_BUG
