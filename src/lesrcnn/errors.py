"""One exception type for every user-facing failure: the CLI prints it on one line and exits 2."""


class LesrcnnError(Exception):
    """A bad input, file or option; the message is complete and fits on one line."""
