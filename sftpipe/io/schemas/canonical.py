"""Records already in sftpipe's canonical form (e.g. the distill stage's output, or an earlier export)."""

from sftpipe.io.schemas.base import list_field, text_field
from sftpipe.io.schemas.messages import convert_messages

FIELDS = ("id", "source", "messages", "meta")


def convert(row: dict) -> list[tuple]:
    local = text_field(row, "id").split("/", 1)[-1]
    meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
    return [(local, convert_messages(list_field(row, "messages")), dict(meta))]
