"""One exception type for every user-facing failure (the CLI prints it on one line and exits 2),
and the CLI's other habits the package shares: notes on one line, SIGTERM handled like Ctrl-C."""
from __future__ import annotations

import contextlib
import re
import signal
import sys
import threading


class LesrcnnError(Exception):
    """A bad input, file or option; the message is complete and fits on one line."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds (temporary files) as on Ctrl-C."""


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-up
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block SIGTERM raises :class:`Terminated`, so that ``with`` blocks unwind as on
    Ctrl-C (temporary files removed, finished work kept); only in the main thread, and only where
    SIGTERM has no handler yet (an enclosing block's, or an embedding application's)."""
    ours = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    if ours:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        if ours:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def one_line(text: object) -> str:
    """``text`` with control characters escaped (a file name may hold a newline), so an error
    message stays one line on the terminal and for whatever parses stderr."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def first_line(e: BaseException) -> str:
    """The first telling line of an exception's message (a library's may be an essay; OpenVINO's
    starts with "Exception from file.cpp:N:" lines), or its type's name."""
    lines = [t for t in str(e).splitlines()
             if t.strip() and not re.fullmatch(r"Exception from \S+:\d+:", t.strip())]
    return (lines[0].strip() if lines else type(e).__name__)[:300]


def note(line: str) -> None:
    """``lesrcnn: line`` on stderr, one line, above a progress bar if one is shown."""
    from tqdm import tqdm

    tqdm.write(one_line(f"lesrcnn: {line}"), file=sys.stderr)
