"""Progress bars that reach whoever is watching: a live bar on a terminal; in a log (CI, `dvc
queue logs`, a redirected `dvc repro`) a line every 15 s once a stage has run 15 s, so a long stage
is never silent and a short one (or a one-line error) prints nothing extra."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

LOG_EVERY_S = 15.0


def settings(mininterval: float = 0.1) -> dict[str, Any]:
    """tqdm keyword arguments for this process's stderr; `mininterval` applies on a terminal."""
    if sys.stderr.isatty():
        return {"file": sys.stderr, "mininterval": mininterval}
    return {"file": sys.stderr, "mininterval": LOG_EVERY_S, "delay": LOG_EVERY_S, "ascii": True}


def bar(iterable: Any = None, *, mininterval: float = 0.1, **kwargs: Any) -> tqdm:
    """`tqdm(iterable, **kwargs)` with the settings above."""
    return tqdm(iterable, **settings(mininterval), **kwargs)
