"""Records already in sftpipe's canonical form (e.g. the distill stage's output, or an earlier export), `tools` included."""

from sftpipe.io.schemas import calls
from sftpipe.io.schemas.base import Converted, list_field, text_field
from sftpipe.io.schemas.messages import convert_messages

FIELDS = ("id", "source", "messages", "meta")


def convert(row: dict) -> list[Converted]:
    local = text_field(row, "id").split("/", 1)[-1]
    messages = convert_messages(list_field(row, "messages"))
    meta = row.get("meta")
    return [(local, messages, dict(meta) if isinstance(meta, dict) else {}, calls.tools(row.get("tools")))]
