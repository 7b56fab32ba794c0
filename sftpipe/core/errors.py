"""One base for every error a user can fix: the stage runner prints its message as one line
(it already names the file, record or params key) instead of a traceback. Any other exception is
a bug and keeps its traceback."""


class SftpipeError(Exception):
    """Bad input, params or environment, explained in the message."""
