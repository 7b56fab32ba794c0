"""The canonical record, the one type every stage reads and writes.

    {"id": "<source>/<original id or content hash>", "source": "<name>",
     "messages": [{"role": "system"|"user"|"assistant"|"tool", "content": "..."}],
     "meta": {...provenance; later: cluster, scores}}

Records are plain dicts so they stream through JSON and Arrow without a conversion layer;
`Record` and `Message` type them for readers and checkers at no run-time cost. `Drop` is the one
way every rule, adapter and reader says "not this, for this reason".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NotRequired, TypedDict

import orjson

from sftpipe.core.hashing import hex_digest

ROLES = ("system", "user", "assistant", "tool")
Role = Literal["system", "user", "assistant", "tool"]


class Message(TypedDict):
    role: Role
    content: str


class Record(TypedDict):
    id: str
    """`<source>/<original id or content hash>`, unique within the pipeline."""
    source: str
    messages: list[Message]
    meta: dict
    """Provenance (original id, license, lang, category) and what later stages add (cluster...)."""
    tools: NotRequired[list[dict]]


class Drop(Exception):
    """This record (or part of it) is removed: `reason` is the key counted in the stage report and
    `detail` says exactly what was wrong. Rules and adapters raise it; readers, which must go on
    reading, yield it in place of the row. `fatal_when` names the params switch (`on_bad_record`,
    `on_truncated`) that turns this drop into a stage error."""

    def __init__(self, reason: str, detail: str = "", fatal_when: str = "on_bad_record"):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail, self.fatal_when = reason, detail, fatal_when

    def __reduce__(self):  # survive pickling to and from worker processes
        return Drop, (self.reason, self.detail, self.fatal_when)


def content_hash(messages: Sequence[Message], n: int = 16) -> str:
    """Stable hash of a conversation's roles and texts (hex, `n` characters)."""
    blob = orjson.dumps([[m["role"], m["content"]] for m in messages])
    return hex_digest(blob, size=16)[:n]


def make_record(
    source: str, messages: list[Message], meta: dict | None = None, orig_id: str | None = None
) -> Record:
    """Build a canonical record; its id is `<source>/<orig_id>`, or a content hash when there is none."""
    local = str(orig_id) if orig_id not in (None, "") else content_hash(messages)
    return {"id": f"{source}/{local}", "source": source, "messages": messages, "meta": meta or {}}


def message(role: Role, content: str) -> Message:
    return {"role": role, "content": content}


def turns(record: Record, role: Role) -> list[str]:
    """The contents of every turn of `role`."""
    return [m["content"] for m in record["messages"] if m["role"] == role]
