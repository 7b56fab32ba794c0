"""Schema adapters: each turns one input row into canonical `(orig_id, messages, meta)` tuples.

`detect` picks a schema from the fields of a row; a source's `format:` forces one instead.
"""

from __future__ import annotations

from collections.abc import Callable

from sftpipe.io.schemas import (
    alpaca,
    canonical,
    dolly,
    messages,
    oasst,
    prompt_response,
    self_instruct,
    sharegpt,
    text,
)
from sftpipe.io.schemas.base import Converted, Drop

CONVERTERS: dict[str, Callable[..., list[Converted]]] = {
    "canonical": canonical.convert,
    "messages": messages.convert,
    "sharegpt": sharegpt.convert,
    "oasst": oasst.convert,
    "self_instruct": self_instruct.convert,
    "dolly": dolly.convert,
    "alpaca": alpaca.convert,
    "prompt_response": prompt_response.convert,
    "text": text.convert,
}
FORMATS = tuple(CONVERTERS)

# Most specific first: self-instruct and dolly rows also carry `instruction`.
_DETECT: list[tuple[str, Callable[[dict], bool]]] = [
    ("canonical", lambda r: all(f in r for f in canonical.FIELDS)),
    ("messages", lambda r: "messages" in r),
    ("sharegpt", lambda r: "conversations" in r),
    (
        "oasst",
        lambda r: (
            "message_tree_id" in r and "prompt" in r or all(f in r for f in oasst.FIELDS) or oasst.is_flat(r)
        ),
    ),
    ("self_instruct", lambda r: all(f in r for f in self_instruct.FIELDS)),
    ("dolly", lambda r: all(f in r for f in dolly.FIELDS)),
    ("alpaca", lambda r: all(f in r for f in alpaca.FIELDS)),
    ("prompt_response", prompt_response.matches),
    ("text", lambda r: "text" in r),
]


def detect(row: dict) -> str | None:
    """The schema whose fields `row` has, or None."""
    return next((name for name, test in _DETECT if test(row)), None)


__all__ = ["CONVERTERS", "FORMATS", "Drop", "detect"]
