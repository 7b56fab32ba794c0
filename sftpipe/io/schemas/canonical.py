"""Records already in sftpipe's canonical form (e.g. the distill stage's output, or an earlier
export), `tools` included. The format stage's rows (and so split's, mix's and export's Parquet)
hold `messages` and `meta` as JSON strings, with a record's `tools` in `meta`: read back, they
give the record they were made from."""

import orjson

from sftpipe.io.schemas import calls
from sftpipe.io.schemas.base import Converted, Drop, list_field, text_field
from sftpipe.io.schemas.messages import convert_messages

FIELDS = ("id", "source", "messages", "meta")


def _decoded(row: dict, field: str) -> dict:
    """`row` with `field` parsed when it is a JSON string (a Parquet row of the format stage)."""
    if not isinstance(row.get(field), str):
        return row
    try:
        return {**row, field: orjson.loads(row[field])}
    except orjson.JSONDecodeError as exc:
        raise Drop("wrong_type", f"'{field}' is a string that is not JSON: {exc}") from None


def convert(row: dict) -> list[Converted]:
    row = _decoded(_decoded(row, "messages"), "meta")
    local = text_field(row, "id").split("/", 1)[-1]
    messages = convert_messages(list_field(row, "messages"))
    meta = dict(row["meta"]) if isinstance(row.get("meta"), dict) else {}
    tools = row.get("tools") if row.get("tools") is not None else meta.pop("tools", None)
    return [(local, messages, meta, calls.tools(tools))]
