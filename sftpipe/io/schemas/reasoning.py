"""Reasoning traces in assistant content: `<think>…</think>` (DeepSeek-R1, Qwen3, SmolLM3).

A source's `reasoning:` says what ingest does with them: `keep` leaves the content as it came
(the default: a source's bytes are not reinterpreted unless asked), `split` moves a leading
`<think>` block into the turn's `reasoning`, `drop` removes both the block and any `reasoning`
the adapter found. Each turn changed is counted (`reasoning.split`, `reasoning.dropped`).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Literal

from sftpipe.core.records import Message

Mode = Literal["split", "keep", "drop"]
# A leading think block; an unclosed one (a trace cut off) is left alone: it is not a trace we can trust.
THINK = re.compile(r"\A\s*<think>(.*?)</think>\s*", re.S)


def apply(messages: list[Message], mode: Mode, changes: Counter) -> list[Message]:
    """`messages` with their reasoning split out, kept, or dropped; counts turns changed."""
    if mode == "keep":
        return messages
    out = messages
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        hit = THINK.match(m["content"])
        if hit is None and (mode == "split" or "reasoning" not in m):
            continue
        new: Message = {**m}  # type: ignore[typeddict-item]
        if hit is not None:
            new["content"] = m["content"][hit.end() :]
        if mode == "split" and hit is not None:
            trace = hit.group(1).strip()
            if trace:
                new["reasoning"] = (m["reasoning"] + "\n\n" + trace) if m.get("reasoning") else trace
            changes["reasoning.split"] += 1
        elif mode == "drop":
            new.pop("reasoning", None)
            changes["reasoning.dropped"] += 1
        if out is messages:
            out = list(messages)
        out[i] = new
    return out
