"""The one exception type that the CLI turns into a one-line message (no traceback)."""


class FsbenchError(Exception):
    """A problem with the user's input (a flag, a file, a dataset) that they can fix.

    The message must name the problem and, where there is one, the file.
    """
