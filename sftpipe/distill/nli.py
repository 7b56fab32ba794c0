"""The contradiction gate: an NLI cross-encoder reads (passage, one sentence of the response) and
says how likely the passage contradicts it; a pair whose most contradicted sentence is above
`max_contradiction` is dropped (reason `contradicts_passage`).

Off by default: no NLI model installs here, and the base model cannot see a negation (the
grounding gate's per-token gain catches a changed word the passage predicts strongly, not "It is
not true that ..."). Any Hugging Face sequence-classification folder whose labels name a
contradiction serves, e.g. cross-encoder/nli-deberta-v3-xsmall (70M) or
MoritzLaurer/DeBERTa-v3-base-mnli-fever-anli; the label order is read from its config.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from pydantic import model_validator

from sftpipe.core.config import Section
from sftpipe.distill.controls import sentences
from sftpipe.distill.grounding import folder_identity
from sftpipe.distill.llm import RequestCache, through_cache
from sftpipe.distill.slices import DistillError


class NliParams(Section):
    """`distill.nli`: drop pairs a natural-language-inference model finds contradicted."""

    model: str | None = None
    """NLI cross-encoder folder (Hugging Face format, a `contradiction` label); null = off."""
    max_contradiction: float = 0.5
    """Drop a pair (reason `contradicts_passage`) when one of its response's sentences is
    contradicted by the passage with a probability above this."""
    batch_size: int = 16
    """(passage, sentence) pairs per forward pass."""

    @model_validator(mode="after")
    def _check(self) -> NliParams:
        if not 0 < self.max_contradiction < 1:
            raise ValueError("max_contradiction must be between 0 and 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        return self

    @property
    def enabled(self) -> bool:
        return self.model is not None


def contradiction_label(id2label: dict) -> int:
    """The index of the label that means contradiction, whatever the model's label order."""
    found = [int(i) for i, name in id2label.items() if str(name).lower().startswith("contradict")]
    if len(found) != 1:
        raise DistillError(
            f"distill.nli.model: its labels {sorted(map(str, id2label.values()))} name no single "
            "contradiction label (use an NLI model: entailment / neutral / contradiction)"
        )
    return found[0]


def check_model(params: NliParams) -> None:
    if params.model is not None and not (Path(params.model) / "config.json").is_file():
        raise DistillError(
            f"distill.nli.model: no model in {params.model} (a local folder; download it once with "
            "`hf download <model id> --local-dir <folder>`, or set distill.nli.model: null)"
        )


class Classifier:
    """The NLI model, loaded once."""

    def __init__(self, params: NliParams):
        check_model(params)
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        assert params.model is not None
        self.params = params
        self.tok = AutoTokenizer.from_pretrained(params.model)
        self.model = AutoModelForSequenceClassification.from_pretrained(params.model, dtype=torch.float32)
        self.model.eval()
        self.label = contradiction_label(self.model.config.id2label)

    def contradiction(self, pairs: list[tuple[str, str]]) -> list[float]:
        """P(contradiction) of each (premise, hypothesis); a long premise loses its end."""
        import torch

        out: list[float] = []
        size = self.params.batch_size
        for start in range(0, len(pairs), size):
            batch = pairs[start : start + size]
            enc = self.tok(
                [p for p, _ in batch],
                [h for _, h in batch],
                truncation="only_first",
                max_length=min(512, self.tok.model_max_length),
                padding=True,
                return_tensors="pt",
            )
            with torch.no_grad():
                probs = self.model(**enc).logits.float().softmax(-1)[:, self.label]
            out.extend(round(float(p), 4) for p in probs)
        return out


def contradictions(
    params: NliParams, items: Iterable[tuple[str, str]], cache: RequestCache | None = None
) -> list[float]:
    """Per (passage, response): the largest P(contradiction) over the response's sentences.
    Pairs already in `cache` are not scored again."""
    items = list(items)
    if not items:
        return []
    assert params.model is not None
    check_model(params)
    ident = folder_identity("nli", params.model)
    keys = [RequestCache.key(ident, {"content": c, "response": r}) for c, r in items]

    def compute(todo: list[int]) -> list[dict]:
        print(f"distill nli: scoring {len(todo)} pairs with {params.model}", file=sys.stderr)
        said = [sentences(items[i][1]) or [items[i][1]] for i in todo]
        flat = [(items[i][0], s) for i, sents in zip(todo, said, strict=True) for s in sents]
        probs = iter(Classifier(params).contradiction(flat))
        return [{"contradiction": max(next(probs) for _ in sents)} for sents in said]

    return [got["contradiction"] for got in through_cache(cache, keys, compute)]
