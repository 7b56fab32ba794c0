"""OpenAI chat `messages`: a list of `{role, content}`; content may be a string or a list of typed
parts. Tool calling and reasoning map to the canonical record:

- assistant `tool_calls` (OpenAI), or a legacy `function_call`; `tool` turns with `tool_call_id`
  and `name` (a legacy `function` role is a tool turn);
- reasoning from `reasoning_content`, `reasoning` or `thinking` on the message;
- typed parts (LLaMA-Factory, OpenAI): `text` (its `text` or `value`), `reasoning`/`thinking`,
  `tool_call` (`{name, arguments}` as JSON); any other part type drops the record as
  `non_text_content` (an image cannot be trained on as text);
- the record's `tools` column: a list or a JSON string of function schemas.
"""

from typing import cast

from sftpipe.core.records import ROLES, Message, Role, message
from sftpipe.io.schemas import calls
from sftpipe.io.schemas.base import Converted, Drop, list_field, orig_id, provenance

FIELDS = ("messages",)
ALIASES = {"developer": "system", "function": "tool"}
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
_TEXT, _REASONING = ("text",), ("reasoning", "thinking")


def _part_text(p: dict) -> str:
    value = p.get("text", p.get("value", ""))
    return value if isinstance(value, str) else str(value)


def _content(value, i: int, out: Message) -> str:
    """The text of a content value; typed reasoning and tool-call parts go into `out`."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if not (isinstance(value, list) and all(isinstance(p, dict) for p in value)):
        raise Drop("wrong_type", f"message {i} content is {type(value).__name__}")
    texts, traces, found = [], [], []
    for p in value:
        kind = p.get("type", "text")
        if kind in _TEXT:
            texts.append(_part_text(p))
        elif kind in _REASONING:
            traces.append(_part_text(p))
        elif kind == "tool_call":
            found.append(p.get("value", p.get("tool_call", p)))
        else:
            raise Drop("non_text_content", f"message {i} has a {kind!r} part")
    if traces:
        out["reasoning"] = "\n\n".join(traces)
    if found:
        out["tool_calls"] = [calls.tool_call(c, i, k) for k, c in enumerate(found)]
    return "".join(texts)


def _extras(m: dict, i: int, out: Message) -> None:
    """Tool calls, tool result links and reasoning given as keys of the message."""
    if out["role"] == "assistant":
        if m.get("tool_calls"):
            out["tool_calls"] = out.get("tool_calls", []) + calls.tool_calls(m["tool_calls"], i)
        elif isinstance(m.get("function_call"), dict | str) and m["function_call"]:
            out["tool_calls"] = out.get("tool_calls", []) + [calls.tool_call(m["function_call"], i, 0)]
        trace = next((m[k] for k in REASONING_KEYS if isinstance(m.get(k), str) and m[k]), None)
        if trace is not None and "reasoning" not in out:
            out["reasoning"] = trace
    elif out["role"] == "tool":
        for key in ("tool_call_id", "name"):
            if isinstance(m.get(key), str) and m[key]:
                out[key] = m[key]  # type: ignore[literal-required]


def convert_messages(msgs: list, role_key: str = "role", content_key: str = "content") -> list[Message]:
    out: list[Message] = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise Drop("wrong_type", f"message {i} is {type(m).__name__}, expected an object")
        raw = m.get(role_key)
        role = ALIASES.get(raw, raw) if raw is not None else None
        if role not in ROLES:
            raise Drop("unknown_role", f"message {i} has role {role!r}")
        msg = message(cast(Role, role), "")
        msg["content"] = _content(m.get(content_key), i, msg)
        if len(m) > 2 or msg.keys() != {"role", "content"}:
            _extras(m, i, msg)
        if msg["role"] != "assistant" and ("reasoning" in msg or "tool_calls" in msg):
            raise Drop("misplaced_part", f"message {i} ({role}) has a reasoning or tool-call part")
        out.append(msg)
    if not out:
        raise Drop("empty_conversation")
    return calls.link_results(out)


def convert(row: dict) -> list[Converted]:
    converted: Converted = (
        orig_id(row),
        convert_messages(list_field(row, "messages")),
        provenance(row),
        calls.tools(row.get("tools")),
    )
    return [converted]
