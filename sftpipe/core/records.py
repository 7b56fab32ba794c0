"""The canonical record, the one type every stage reads and writes.

    {"id": "<source>/<original id or content hash>", "source": "<name>",
     "messages": [{"role": "system"|"user"|"assistant"|"tool", "content": "..."}],
     "meta": {...provenance; later: cluster, scores}}

Records are plain dicts so they stream through JSON and Arrow without a conversion layer.
"""

from __future__ import annotations

import hashlib

import orjson

ROLES = ("system", "user", "assistant", "tool")


def content_hash(messages: list[dict], n: int = 16) -> str:
    """Stable hash of a conversation's roles and texts (hex, `n` characters)."""
    blob = orjson.dumps([[m["role"], m["content"]] for m in messages])
    return hashlib.blake2b(blob, digest_size=16).hexdigest()[:n]


def make_record(
    source: str, messages: list[dict], meta: dict | None = None, orig_id: str | None = None
) -> dict:
    """Build a canonical record; its id is `<source>/<orig_id>`, or a content hash when there is none."""
    local = str(orig_id) if orig_id not in (None, "") else content_hash(messages)
    return {"id": f"{source}/{local}", "source": source, "messages": messages, "meta": meta or {}}


def message(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def turns(record: dict, role: str) -> list[str]:
    """The contents of every turn of `role`."""
    return [m["content"] for m in record["messages"] if m["role"] == role]
