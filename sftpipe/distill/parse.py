"""Replies of the LLMs read: a generator's pair, a judge's scores (from JSON anywhere in the text,
under the usual aliases), and a judge's weighted score."""

from __future__ import annotations

import ast
import contextlib
import json
import math
import re
from collections.abc import Iterable
from typing import Any

from sftpipe.core.records import Drop
from sftpipe.distill.llm import Reply
from sftpipe.distill.prompts import DIMENSIONS


def json_objects(text: str) -> list[dict]:
    """Every JSON object found in a model's answer, in order: the whole text, fenced blocks, and
    objects embedded in prose (also Python-style dicts with single quotes); lists are unpacked."""
    found: list[Any] = []
    candidates = [text.strip()] + re.findall(r"```(?:json|JSON)?\s*(.*?)```", text, re.S)
    for cand in candidates:
        with contextlib.suppress(ValueError):
            found.append(json.loads(cand, strict=False))
    decoder = json.JSONDecoder(strict=False)  # small models put raw newlines inside strings
    for m in re.finditer(r"[{\[]", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except ValueError:
            if text[m.start()] == "{" and (block := _balanced(text, m.start())):
                try:
                    obj = ast.literal_eval(block)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    continue
            else:
                continue
        found.append(obj)
    out: list[dict] = []
    for obj in found:
        for item in obj if isinstance(obj, list) else [obj]:
            if isinstance(item, dict) and item not in out:
                out.append(item)
    return out


def _balanced(text: str, start: int) -> str | None:
    depth, quote, escaped = 0, None, False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            escaped = not escaped and ch == "\\"
            if ch == quote and not escaped:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return None


_ALIASES = {
    "instruction": ("instruction", "question", "prompt", "query", "task"),
    "input": ("input", "context"),
    "response": ("response", "answer", "output", "completion"),
}


def _field(obj: dict, name: str) -> Any:
    lower = {str(k).strip().lower(): v for k, v in obj.items()}
    return next((lower[a] for a in _ALIASES[name] if a in lower), None)


def parse_pair(reply: Reply) -> dict:
    """A pair {"instruction", "input", "response"} from a generator reply; else Drop(why not)."""
    if not reply.ok:
        raise Drop("generation_failed")
    if reply.finish_reason == "length":  # the generator was stopped: whatever parses is cut short
        raise Drop("truncated")
    objects = json_objects(reply.content)
    nested = [v for o in objects for v in o.values() if isinstance(v, dict)]
    for obj in objects + nested:
        ins, inp, resp = _field(obj, "instruction"), _field(obj, "input"), _field(obj, "response")
        if isinstance(ins, str) and isinstance(resp, str) and ins.strip() and resp.strip():
            inp = inp.strip() if isinstance(inp, str) else ""
            return {"instruction": ins.strip(), "input": inp, "response": resp.strip()}
    raise Drop("invalid_pair" if objects else "no_json")


def parse_verdict(reply: Reply, dimensions: Iterable[str] = DIMENSIONS) -> dict:
    """{"scores": {dimension: 0-10}, "rationale"} from a judge reply; else Drop(why not)."""
    if not reply.ok:
        raise Drop(f"request_failed:{reply.error}")
    objects = json_objects(reply.content)
    for obj in objects + [v for o in objects for v in o.values() if isinstance(v, dict)]:
        lower = {str(k).strip().lower(): v for k, v in obj.items()}
        scores = {d: _score(lower.get(d.lower())) for d in dimensions}
        if all(v is not None for v in scores.values()):
            rationale = next((v for o in objects for k, v in o.items() if k.lower() == "rationale"), "")
            return {"scores": scores, "rationale": rationale if isinstance(rationale, str) else ""}
    if not objects:
        raise Drop("truncated" if reply.finish_reason == "length" else "no_json")
    raise Drop("bad_scores")


def _score(value: Any) -> float | None:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 10:
        return None
    return int(value) if float(value).is_integer() else float(value)


def weighted(scores: dict, weights: dict[str, float]) -> float:
    return round(sum(weights[d] * scores[d] for d in weights) / sum(weights.values()), 4)


_NUMBER = re.compile(r"[0-9]{1,2}")  # ASCII digits only: str.isdigit() also takes "²"
_KEY_BEFORE = re.compile(r'"([A-Za-z_][\w ]*)"\s*:\s*$')


def expected_scores(logprobs: tuple, dimensions: Iterable[str]) -> dict[str, float]:
    """Per dimension, the expected score over 0-10 at the token where the judge wrote its value:
    the probabilities of the digit alternatives there, renormalised. Steadier than the one number
    sampled. A "1" that the judge followed with "0" counts as 10. Dimensions not found are left out."""
    wanted = {d.lower(): d for d in dimensions}
    out: dict[str, float] = {}
    text = ""
    for i, (token, top) in enumerate(logprobs):
        key = _KEY_BEFORE.search(text)
        text += token
        name = wanted.get(key.group(1).strip().lower()) if key else None
        if name is None or name in out or not _NUMBER.match(token.strip()):
            continue
        ten = token.strip() == "1" and i + 1 < len(logprobs) and logprobs[i + 1][0].startswith("0")
        mass: dict[int, float] = {}
        for alt, logprob in top.items():
            alt = alt.strip()
            if _NUMBER.fullmatch(alt) and int(alt) <= 10:
                value = 10 if ten and alt == "1" else int(alt)
                mass[value] = mass.get(value, 0.0) + math.exp(logprob)
        if total := sum(mass.values()):
            out[name] = round(sum(v * p for v, p in mass.items()) / total, 4)
    return out
