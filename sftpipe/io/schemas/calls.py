"""Tool calling, in the canonical shape every adapter maps to.

- a call: `{"id", "type": "function", "function": {"name", "arguments": {...}}}`; the arguments
  are a JSON object (a JSON string is parsed), as Hugging Face chat templates expect them;
- a record's `tools`: OpenAI's `{"type": "function", "function": {name, description, parameters}}`
  per function (a bare `{name, description, parameters}` is wrapped), from a list or a JSON string;
- tool results are linked to the calls they answer: a `tool` turn without a `tool_call_id` takes
  the next unanswered call of the assistant turn before it, in order (ShareGPT's `observation`
  and typed-part data carry no ids).

Calls without an id get `call_<turn>_<k>`: stable, and unique within the conversation.
"""

from __future__ import annotations

import orjson

from sftpipe.core.records import Message, ToolCall
from sftpipe.io.schemas.base import Drop


def parse_json(value: object, what: str) -> object:
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise Drop("bad_tool_call", f"{what} is not valid JSON: {exc}") from None
    return value


def tool_call(value: object, turn: int, k: int) -> ToolCall:
    """One call from OpenAI's `{id?, type?, function: {name, arguments}}`, or a bare
    `{name, arguments}` (ShareGPT `function_call`, typed `tool_call` parts, legacy `function_call`),
    either as an object or a JSON string."""
    what = f"turn {turn} tool call {k}"
    call = parse_json(value, what)
    if not isinstance(call, dict):
        raise Drop("bad_tool_call", f"{what} is {type(call).__name__}, expected an object")
    fn = call.get("function", call)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise Drop("bad_tool_call", f"{what} has no function name")
    args = parse_json(fn.get("arguments", fn.get("parameters", {})), f"{what} arguments")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise Drop("bad_tool_call", f"{what} arguments are {type(args).__name__}, expected an object")
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        call_id = f"call_{turn}_{k}"
    return {"id": call_id, "type": "function", "function": {"name": fn["name"], "arguments": args}}


def tool_calls(values: object, turn: int) -> list[ToolCall]:
    if not isinstance(values, list):
        raise Drop("bad_tool_call", f"turn {turn} tool_calls is {type(values).__name__}, expected a list")
    return [tool_call(v, turn, k) for k, v in enumerate(values)]


def tools(value: object) -> list[dict] | None:
    """A record's function schemas in OpenAI form, or None when there are none."""
    if value is None or value == "" or value == []:
        return None
    parsed = parse_json(value, "'tools'")
    if not isinstance(parsed, list) or not all(isinstance(t, dict) for t in parsed):
        raise Drop("bad_tools", f"'tools' is {type(parsed).__name__}, expected a list of objects")
    out = []
    for i, t in enumerate(parsed):
        fn = t.get("function", t) if t.get("type", "function") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise Drop("bad_tools", f"tool {i} is not a function with a name")
        out.append({"type": "function", "function": fn})
    return out or None


def link_results(messages: list[Message]) -> list[Message]:
    """Give each `tool` turn without an id the id and name of the call it answers."""
    pending: list[ToolCall] = []
    names: dict[str, str] = {}
    for m in messages:
        if m["role"] == "assistant":
            pending = list(m.get("tool_calls") or ())
            names.update((c["id"], c["function"]["name"]) for c in pending)
        elif m["role"] == "tool":
            if "tool_call_id" not in m and pending:
                m["tool_call_id"] = pending[0]["id"]
            call_id = m.get("tool_call_id")
            pending = [c for c in pending if c["id"] != call_id]
            if "name" not in m and call_id in names:
                m["name"] = names[call_id]
        else:
            pending = []
    return messages
