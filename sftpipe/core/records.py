"""The canonical record, the one type every stage reads and writes.

    {"id": "<source>/<original id or content hash>", "source": "<name>",
     "messages": [{"role": "system"|"user"|"assistant"|"tool", "content": "...",
                   "reasoning": "...",                 # assistant, optional: a thinking trace
                   "tool_calls": [{"id", "type": "function",
                                   "function": {"name", "arguments": {...}}}],   # assistant
                   "tool_call_id": "...", "name": "..."}],                       # tool results
     "tools": [<JSON-schema function>, ...],            # optional
     "meta": {...provenance; later: cluster, scores}}

The optional keys are present only when they hold something, so a plain conversation is exactly
`{"role", "content"}` per turn, as it always was.

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


class ToolCall(TypedDict):
    id: str
    type: Literal["function"]
    function: dict
    """`{"name": str, "arguments": dict}`: arguments as a JSON object, as chat templates expect."""


class Message(TypedDict):
    role: Role
    content: str
    reasoning: NotRequired[str]
    """Assistant: the thinking trace that came before the content."""
    tool_calls: NotRequired[list[ToolCall]]
    """Assistant: the function calls this turn makes (the content may then be empty)."""
    tool_call_id: NotRequired[str]
    """Tool: the id of the call this result answers."""
    name: NotRequired[str]
    """Tool: the name of the function that produced this result."""


EXTRAS = ("reasoning", "tool_calls", "tool_call_id", "name")
"""A message's optional keys, in the order `turn_text` reads them."""


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
    """Stable hash of a conversation's roles, texts, calls and reasoning (hex, `n` characters);
    a plain conversation hashes as it did before messages had optional keys."""
    blob = orjson.dumps(
        [
            [m["role"], m["content"], {k: m[k] for k in EXTRAS if k in m}]  # type: ignore[literal-required]
            if any(k in m for k in EXTRAS)
            else [m["role"], m["content"]]
            for m in messages
        ],
        option=orjson.OPT_SORT_KEYS,
    )
    return hex_digest(blob, size=16)[:n]


def calls_text(m: Message) -> str:
    """A turn's tool calls as text (`name(arguments JSON)` per line): what dedup, decontam and
    length rules see of them."""
    return "\n".join(
        f"{c['function'].get('name', '')}({orjson.dumps(c['function'].get('arguments', {}), option=orjson.OPT_SORT_KEYS).decode()})"
        for c in m.get("tool_calls") or ()
    )


def turn_text(m: Message) -> str:
    """Everything a turn says: reasoning, content and tool calls, joined by newlines."""
    if "reasoning" not in m and "tool_calls" not in m:
        return m["content"]
    return "\n".join(t for t in (m.get("reasoning", ""), m["content"], calls_text(m)) if t)


def has_output(m: Message) -> bool:
    """Whether a turn says anything: content, or a tool call (an assistant turn that only calls a
    function is not empty)."""
    return bool(m["content"].strip() or m.get("tool_calls"))


def make_record(
    source: str,
    messages: list[Message],
    meta: dict | None = None,
    orig_id: str | None = None,
    tools: list[dict] | None = None,
) -> Record:
    """Build a canonical record; its id is `<source>/<orig_id>`, or a content hash when there is none."""
    local = str(orig_id) if orig_id not in (None, "") else content_hash(messages)
    record: Record = {"id": f"{source}/{local}", "source": source, "messages": messages, "meta": meta or {}}
    if tools:
        record["tools"] = tools
    return record


def message(role: Role, content: str) -> Message:
    return {"role": role, "content": content}


def turns(record: Record, role: Role) -> list[str]:
    """The contents of every turn of `role`."""
    return [m["content"] for m in record["messages"] if m["role"] == role]
