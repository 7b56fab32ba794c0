"""What every stage script shares: one-line errors instead of tracebacks for bad input or params."""

from __future__ import annotations

import sys
from collections.abc import Callable

from sftpipe.accounting import AccountingError
from sftpipe.config import ParamsError
from sftpipe.readers import ReadError

# Errors whose message already says what is wrong and where; anything else is a bug and keeps
# its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ParamsError, ReadError, AccountingError)


def register(*errors: type[BaseException]) -> None:
    global USER_ERRORS
    USER_ERRORS = USER_ERRORS + errors


def run(main: Callable[[], object]) -> None:
    try:
        main()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
