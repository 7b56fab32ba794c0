"""Plain `text` records: one assistant turn with `meta.kind = "text"`, trained on in full."""

from sftpipe.core.records import message
from sftpipe.io.schemas.base import Converted, orig_id, provenance, text_field

FIELDS = ("text",)


def convert(row: dict) -> list[Converted]:
    meta = {**provenance(row), "kind": "text"}
    return [(orig_id(row), [message("assistant", text_field(row, "text"))], meta)]
