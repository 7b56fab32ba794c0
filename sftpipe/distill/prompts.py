"""The prompts distill sends: the generator's and the judges' default templates, the templates
read and checked, their {placeholders} filled, and the JSON schemas of the replies."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftpipe.distill.slices import DistillError

if TYPE_CHECKING:
    from sftpipe.distill.run import DistillParams

DIMENSIONS = ("accuracy", "completeness", "logicality", "helpfulness", "safety")


_FIELD = re.compile(r"\{(content|instruction|input|response)\}")


SYSTEM_PROMPT = (
    "You write training data for a helpful AI assistant. Reply with one JSON object with the keys "
    '"instruction" (a question or task a learner would give about the passage), "input" (extra '
    'context the task needs, or "") and "response" (a correct, complete answer based on the passage).'
)


PROMPT = "Passage:\n{content}\n\nWrite the JSON object for one new question about this passage."


JUDGE_SYSTEM_PROMPT = (
    "You are a strict reviewer of training data for an AI assistant. Score the response from 0 (very "
    "bad) to 10 (excellent) on accuracy (agrees with the passage), completeness, logicality, "
    "helpfulness and safety. Reply with one JSON object: a one-sentence rationale and the five scores."
)


JUDGE_PROMPT = (
    "Passage:\n{content}\n\nInstruction:\n{instruction}\n\nInput:\n{input}\n\nResponse:\n{response}"
)


def template(params: DistillParams, judge: bool) -> str:
    text, file = (
        (params.judge_prompt, params.judge_prompt_file) if judge else (params.prompt, params.prompt_file)
    )
    key = "judge_prompt_file" if judge else "prompt_file"
    if file is not None:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise DistillError(f"distill.{key}: cannot read {file}: {exc.strerror}") from None
    needed = {"instruction", "response"} if judge else {"content"}
    if missing := needed - set(_FIELD.findall(text)):
        where = f"distill.{key} ({file})" if file else f"distill.{'judge_prompt' if judge else 'prompt'}"
        raise DistillError(f"{where}: the template lacks {', '.join('{' + m + '}' for m in sorted(missing))}")
    return text


def fill(text: str, values: dict[str, str]) -> str:
    """Replace the known {placeholders} only, so JSON examples in a template keep their braces."""
    return _FIELD.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def pair_schema(max_response_chars: int) -> dict:
    return {
        "type": "object",
        "properties": {
            "instruction": {"type": "string", "minLength": 10, "maxLength": 300},
            "input": {"type": "string", "maxLength": 400},
            "response": {"type": "string", "minLength": 20, "maxLength": max_response_chars},
        },
        "required": ["instruction", "input", "response"],
    }


def verdict_schema(dimensions: Iterable[str] = DIMENSIONS) -> dict:
    # Rationale first: a model that explains before it scores scores more consistently. Scores are
    # enums because llama.cpp's schema grammar ignores minimum/maximum.
    score = {"type": "integer", "enum": list(range(11))}
    props: dict[str, Any] = {"rationale": {"type": "string", "minLength": 10, "maxLength": 160}}
    props.update(dict.fromkeys(dimensions, score))
    return {"type": "object", "properties": props, "required": ["rationale", *dimensions]}


def rubric(rubrics: dict[str, str]) -> str:
    """The lines appended to the judge system prompt for `distill.rubrics` (none by default: the
    default prompt describes the five default dimensions itself)."""
    if not rubrics:
        return ""
    lines = "\n".join(f"- {name}: {text}" for name, text in rubrics.items())
    return f"\n\nScore each of these dimensions from 0 to 10, each a key of the JSON object:\n{lines}"
