"""ShareGPT: `conversations` of `{from, value}`; tool calls as `function_call` / `observation`.

In LLaMA-Factory's form a `function_call` turn's value is a JSON call `{name, arguments}` (or a
list of them, for parallel calls), optionally after a `<think>` block: it becomes an assistant turn
with `tool_calls`, whose content is that block (or empty); an `observation` is the `tool` turn
answering it; the row's `tools` (a JSON string or a list) becomes the record's `tools`.

Unknown roles drop the whole conversation with a reason: guessing a speaker corrupts the labels.
"""

import re

from sftpipe.core.records import Message, Role, message
from sftpipe.io.schemas import calls
from sftpipe.io.schemas.base import Converted, Drop, list_field, orig_id, provenance

FIELDS = ("conversations",)
# How LLaMA-Factory's OpenAI converter joins consecutive tool results into one observation (its
# templates render each between <tool_response> tags).
RESULTS_JOIN = "\n</tool_response>\n<tool_response>\n"
THOUGHT = re.compile(r"\A\s*(<think>.*?</think>)\s*", re.S)
ROLE_MAP: dict[str, Role] = {
    "human": "user", "user": "user",
    "gpt": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
    "assistant": "assistant", "model": "assistant", "function_call": "assistant",
    "system": "system",
    "observation": "tool", "tool": "tool",
}  # fmt: skip


def _turn(i: int, turn: object) -> Message:
    if not isinstance(turn, dict):
        raise Drop("wrong_type", f"turn {i} is {type(turn).__name__}, expected an object")
    speaker = turn.get("from")
    role = ROLE_MAP.get(speaker) if speaker is not None else None
    if role is None:
        raise Drop("unknown_role", f"turn {i} is from {turn.get('from')!r}")
    return message(role, turn.get("value") or "")


def convert(row: dict) -> list[Converted]:
    conv = list_field(row, "conversations")
    try:
        msgs: list[Message] = [{"role": ROLE_MAP[t["from"]], "content": t["value"] or ""} for t in conv]
    except (KeyError, TypeError):
        msgs = [_turn(i, t) for i, t in enumerate(conv)]  # slow path: find and name the bad turn
    if any(type(m["content"]) is not str for m in msgs):
        bad = next(i for i, m in enumerate(msgs) if type(m["content"]) is not str)
        raise Drop("wrong_type", f"turn {bad} value is {type(msgs[bad]['content']).__name__}")
    if not msgs:
        raise Drop("empty_conversation")
    tools = calls.tools(row.get("tools")) if "tools" in row else None
    if any(t["from"] == "function_call" for t in conv):
        msgs = _with_calls(conv, msgs)
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        msgs.insert(0, message("system", system))
    if tools is None:
        return [(orig_id(row), msgs, provenance(row))]
    return [(orig_id(row), msgs, provenance(row), tools)]


def _with_calls(conv: list, msgs: list[Message]) -> list[Message]:
    """`function_call` turns as assistant tool calls, and their observations linked to them. A call
    right after an assistant's text joins that turn (how sftpipe's export once wrote a turn that both
    says something and calls). One observation after N parallel calls that holds N results joined
    as LLaMA-Factory joins them (RESULTS_JOIN) is N tool turns."""
    out: list[Message] = []
    for i, turn in enumerate(conv):
        if turn["from"] != "function_call":
            m = msgs[i]
            n = len(out[-1].get("tool_calls", ())) if out and m["role"] == "tool" else 0
            parts = m["content"].split(RESULTS_JOIN) if n > 1 else [m["content"]]
            out += [{**m, "content": p} for p in parts] if len(parts) == n > 1 else [m]
            continue
        # LLaMA-Factory's FunctionFormatter takes a `<think>` block before the JSON: it stays the
        # turn's text, which the source's `reasoning:` mode then keeps, splits or drops.
        thought = THOUGHT.match(msgs[i]["content"])
        text = thought.group(1) if thought else ""
        raw = msgs[i]["content"][thought.end() :] if thought else msgs[i]["content"]
        value = calls.parse_json(raw, f"turn {i} function_call")
        found = [
            calls.tool_call(c, i, k) for k, c in enumerate(value if isinstance(value, list) else [value])
        ]
        last = out[-1] if out else None
        if not text and last is not None and last["role"] == "assistant" and "tool_calls" not in last:
            last["tool_calls"] = found
        else:
            out.append({"role": "assistant", "content": text, "tool_calls": found})
    return calls.link_results(out)
