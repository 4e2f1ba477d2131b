"""The one exception type that the CLI turns into a one-line message (no traceback)."""


class FsbenchError(Exception):
    """A problem with the user's input (a flag, a file, a dataset) that they can fix.

    The message must name the problem and, where there is one, the file.
    """


def one_line(error: FsbenchError) -> str:
    """The error's message on one line.

    An FsbenchError raised in a DataLoader worker (a corrupt image found while loading) reaches the
    main process re-created with the worker's traceback as its message; its last line is the original
    "fsbench.errors.FsbenchError: <message>".
    """
    lines = [line for line in str(error).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    prefix = f"{FsbenchError.__module__}.{FsbenchError.__name__}: "
    last = lines[-1].strip()
    return last[len(prefix):] if last.startswith(prefix) else last
