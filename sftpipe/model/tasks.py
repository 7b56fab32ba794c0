"""Task accuracy on local evaluation sets, base vs trained: one scoring rule per kind.

- `gsm8k`: greedy answer to the question; correct when its last number equals the number after
  `####` in the reference answer (GSM8K's own convention).
- `choice` (MMLU-style): no generation; the choice with the highest log-likelihood (summed over its
  tokens) after the question wins.
- `exact`: greedy answer; correct when its first non-empty line equals the reference after
  normalization (case, surrounding whitespace and punctuation).

A task file is JSONL (or a JSON array). Fields, first present wins: question from
`question|prompt|input|instruction`, reference from `answer|target|output`, choices from
`choices|options`; a choice answer is an index, a letter (A, B, ...) or the choice's text. The first
`max_examples` records in file order are used, so every run and experiment scores the same items.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from sftpipe.core.config import Section
from sftpipe.core.errors import SftpipeError


class TaskError(SftpipeError, ValueError):
    """An evaluation task file cannot be read as its kind says; names the file and record."""


class TaskSpec(Section):
    """One local evaluation set."""

    path: str
    """Local JSONL/JSON file (keep it under data/raw/eval/ and in dedup.decontaminate.sets)."""
    kind: Literal["gsm8k", "choice", "exact"] = "exact"
    """Scoring: gsm8k (final number), choice (log-likelihood of each choice), exact (exact match)."""
    max_examples: int | None = 100
    """Score the first this many records of the file; null = all."""
    max_new_tokens: int = 256
    """Greedy answer length limit for gsm8k and exact (unused by choice)."""


QUESTION = ("question", "prompt", "input", "instruction")
ANSWER = ("answer", "target", "output")
CHOICES = ("choices", "options")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _field(rec: dict, names: tuple[str, ...], where: str):
    for name in names:
        if name in rec and rec[name] is not None:
            return rec[name]
    raise TaskError(f"{where}: no {'/'.join(names)} field")


def load_items(name: str, spec: TaskSpec) -> list[dict]:
    """{"id", "question", "answer"[, "choices"]} per record: the first `max_examples` of the file."""
    path = Path(spec.path)
    if not path.is_file():
        raise TaskError(f"evaluate.tasks.{name}.path: {path} is not a file")
    text = path.read_text(encoding="utf-8")
    try:
        records = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except json.JSONDecodeError as exc:
        raise TaskError(f"{path}: invalid JSON: {exc}") from None
    items = []
    for i, rec in enumerate(records[: spec.max_examples]):
        where = f"{path}: record {i + 1}"
        item: dict = {"id": f"{name}/{i}", "question": str(_field(rec, QUESTION, where))}
        answer = _field(rec, ANSWER, where)
        if spec.kind == "choice":
            choices = [str(c) for c in _field(rec, CHOICES, where)]
            item["choices"] = choices
            item["answer"] = choice_index(answer, choices, where)
        else:
            item["answer"] = str(answer)
        items.append(item)
    return items


def choice_index(answer, choices: list[str], where: str = "") -> int:
    """The correct choice's index from an index, a letter or the choice's own text."""
    if isinstance(answer, int) and 0 <= answer < len(choices):
        return answer
    text = str(answer).strip()
    if len(text) == 1 and text.upper() in "ABCDEFGHIJ"[: len(choices)]:
        return "ABCDEFGHIJ".index(text.upper())
    if text in choices:
        return choices.index(text)
    if text.isdigit() and int(text) < len(choices):
        return int(text)
    raise TaskError(f"{where}: answer {answer!r} is none of the {len(choices)} choices")


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", "").rstrip("."))
    except ValueError:
        return None


def gsm8k_reference(answer: str) -> float | None:
    """The number after `####` (the whole answer's last number when there is no marker)."""
    return last_number(answer.rsplit("####", 1)[-1])


def gsm8k_correct(prediction: str, answer: str) -> bool:
    got, want = last_number(prediction), gsm8k_reference(answer)
    return got is not None and want is not None and abs(got - want) < 1e-6


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().strip(".,;:!?\"'`").strip().lower()


def exact_correct(prediction: str, answer: str) -> bool:
    lines = [ln for ln in prediction.splitlines() if ln.strip()]
    return bool(lines) and normalize(lines[0]) == normalize(answer)


def score_generated(kind: str, prediction: str, answer: str) -> bool:
    return gsm8k_correct(prediction, answer) if kind == "gsm8k" else exact_correct(prediction, answer)


def decontaminated(tasks: dict[str, TaskSpec], sets: dict | None) -> dict[str, bool]:
    """Whether each task's file is one of dedup.decontaminate.sets (same resolved path)."""
    known = {Path(str(p)).resolve() for p in (sets or {}).values()}
    return {name: Path(spec.path).resolve() in known for name, spec in tasks.items()}
