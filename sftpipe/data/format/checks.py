"""Sanity checks on tokenized rows, shared by format (each row it keeps) and export (each row of
the splits it writes): the properties a trainer relies on. A failed check is counted by name,
with the id of the first row that failed it; the stage fails, writing nothing, when any did."""

from __future__ import annotations

from collections import Counter

import pyarrow.compute as pc

from sftpipe.core.errors import SftpipeError


class SanityError(SftpipeError, AssertionError):
    """A sanity check on the rows failed; the stage wrote nothing."""


class Problems:
    """Rows that failed each check, and the first such row's id; merges in row order."""

    __slots__ = ("counts", "first")

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.first: dict[str, str] = {}

    def add(self, name: str, row_id: str) -> None:
        self.counts[name] += 1
        self.first.setdefault(name, row_id)

    def merge(self, later: Problems) -> None:
        """Add the problems of rows that come after these ones."""
        self.counts.update(later.counts)
        for name, row_id in later.first.items():
            self.first.setdefault(name, row_id)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def report(self) -> dict:
        return {
            "problems": dict(sorted(self.counts.items())),
            "first_problem_id": dict(sorted(self.first.items())),
        }

    def message(self, stage: str) -> str:
        r = self.report()
        return f"{stage}: sanity checks failed: {r['problems']} (first ids: {r['first_problem_id']})"


def blank(text: str) -> bool:
    """Nothing but whitespace (or nothing at all)."""
    return not text.strip()


def blank_column(texts) -> list[bool]:
    """`blank` of each string of an Arrow array, without making Python strings of them."""
    return pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(texts)), 0).to_pylist()


def check_row(
    problems: Problems, row_id: str, *, n_tokens: int, n_trained: int, max_length: int,
    prompt_blank: bool, completion_blank: bool, is_text: bool, n_labels: int | None = None,
) -> None:  # fmt: skip
    """The checks every row gets: it fits, it trains something, it has a completion and (unless it
    is a plain-text record, which has no prompt) a prompt; a label per token when `n_labels` is
    given (format builds the labels from the tokens, export reads both back)."""
    if n_tokens > max_length:
        problems.add("over_max_length", row_id)
    if not n_trained:
        problems.add("nothing_trained", row_id)
    if completion_blank:
        problems.add("empty_completion", row_id)
    if not is_text and prompt_blank:
        problems.add("empty_prompt", row_id)
    if n_labels is not None and n_labels != n_tokens:
        problems.add("labels_length", row_id)


def check_decoded(problems: Problems, row_id: str, decoded: str, text: str) -> None:
    """A sampled row's tokens, decoded, give back the text they were made from."""
    if decoded != text:
        problems.add("decode_mismatch", row_id)
