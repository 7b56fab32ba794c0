"""Control pairs: known-good and deliberately bad pairs built from the slices themselves, scored
with the real pairs but never exported, so every run measures whether each judge (and the
grounding gate) can tell good from bad (`auc`).

Per chunk, the good controls answer with the passage's own sentences (`lead`: the first two,
`tail`: the last two); the bad ones are an answer from another slice (`other_slice`), the lead cut
mid-sentence (`truncated`), the lead with its claims negated (`contradicted`) and an answer about
something else entirely (`off_topic`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sftpipe.core.hashing import digest
from sftpipe.distill.slices import Chunk

GOOD = ("lead", "tail")
BAD = ("other_slice", "truncated", "contradicted", "off_topic")

_ASK = {
    "lead": "Summarize what the passage says.",
    "tail": "What does the passage conclude?",
}

OFF_TOPIC = (
    "As an AI, I have to take a few extra steps before I can answer, but our team will get back to you.",
    "Our service is available 24/7, and our friendly staff are always happy to help with your booking.",
    "To bake bread, mix flour, water, yeast and salt, knead the dough and bake it for forty minutes.",
    "The Eiffel Tower is in Paris; it was finished in 1889 and is about 330 metres tall.",
)

# (pattern, replacement): the first that matches a sentence negates it; the order puts the
# common verbs of explanatory text first.
_NEGATIONS = (
    (r"\bis\b", "is not"),
    (r"\bare\b", "are not"),
    (r"\bshould\b", "should never"),
    (r"\bcan\b", "cannot"),
    (r"\bmust\b", "must never"),
    (r"\bbefore\b", "after"),
    (r"\bafter\b", "before"),
    (r"\bmore\b", "less"),
    (r"\bonly\b", "never"),
    (r"\balways\b", "never"),
    (r"\boften\b", "rarely"),
)


@dataclass(frozen=True)
class Control:
    chunk: Chunk
    kind: str
    label: int  # 1 good, 0 bad
    pair: dict

    @property
    def key(self) -> str:
        return f"{self.chunk.id}/control-{self.kind}"


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s]


def negate(text: str) -> str:
    """`text` with each sentence's first negatable word turned around (a contradiction that reads
    like the original); a sentence with none is prefixed with "It is not true that"."""
    out = []
    for sentence in sentences(text):
        for pattern, replacement in _NEGATIONS:
            new = re.sub(pattern, replacement, sentence, count=1)
            if new != sentence:
                out.append(new)
                break
        else:
            out.append("It is not true that " + sentence[:1].lower() + sentence[1:])
    return " ".join(out)


def truncate(text: str) -> str:
    words = text.split()
    return " ".join(words[: max(3, len(words) * 2 // 5)]).rstrip(".,;:!?")


def control_pairs(chunks: list[Chunk]) -> list[Control]:
    """Good and bad controls for every chunk, in chunk order (`other_slice` needs another slice)."""
    out: list[Control] = []
    for i, chunk in enumerate(chunks):
        sents = sentences(chunk.content)
        lead = " ".join(sents[:2])
        answers = {"lead": lead, "tail": " ".join(sents[-2:]) if len(sents) > 2 else ""}
        other = next(
            (c for c in chunks[i + 1 :] + chunks[:i] if c.slice_id != chunk.slice_id), None
        )  # the next chunk of another slice
        pick = int.from_bytes(digest(chunk.id, size=2), "big")
        bad = {
            "other_slice": " ".join(sentences(other.content)[:2]) if other else "",
            "truncated": truncate(lead),
            "contradicted": negate(lead),
            "off_topic": OFF_TOPIC[pick % len(OFF_TOPIC)],
        }
        for kind, answer in [*answers.items(), *bad.items()]:
            if answer:
                ask = _ASK["tail" if kind == "tail" else "lead"]
                pair = {"instruction": ask, "input": "", "response": answer}
                out.append(Control(chunk, kind, int(kind in GOOD), pair))
    return out


def auc(good: list[float], bad: list[float]) -> float | None:
    """The chance that a good pair scores above a bad one (ties count half); None without both."""
    if not good or not bad:
        return None
    wins = sum((g > b) + 0.5 * (g == b) for g in good for b in bad)
    return round(wins / (len(good) * len(bad)), 4)
