"""The grounding gate: how much the passage raises the base model's likelihood of the response.

gain = mean log-probability per response token given (passage, question) minus the same given the
question alone, in nats. A response drawn from the passage gains a lot; one the model would write
anyway (boilerplate, an answer about something else) gains about nothing. It needs no judge and
no sampling, so it is stable: the same pair always gets the same gain.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from pathlib import Path

from pydantic import model_validator

from sftpipe.core.config import Section
from sftpipe.core.hashing import sha256_hex
from sftpipe.distill.llm import RequestCache
from sftpipe.distill.slices import DistillError
from sftpipe.model.scoring import token_losses

WITH = "Passage:\n{content}\n\nQuestion: {question}\n\nAnswer:"
WITHOUT = "Question: {question}\n\nAnswer:"


class GroundingParams(Section):
    """`distill.grounding`: the base model's log-likelihood gain from the passage."""

    enabled: bool = True
    """Score every pair with the base model and drop those below min_gain (reason `ungrounded`)."""
    model: str = "models/base"
    """Causal LM folder (Hugging Face format) that scores; models/base is the base_model stage's output."""
    min_gain: float = 1.5
    """Keep a pair when the passage raises its response's mean log-likelihood by at least this
    (nats/token); 1.5 separates the labelled pairs of tests/distill/data (see benchmarks/RESULTS.md)."""
    max_tokens: int = 1024
    """Longest scored text in tokens (a longer passage loses its start)."""

    @model_validator(mode="after")
    def _check(self) -> GroundingParams:
        if self.max_tokens < 64:
            raise ValueError("max_tokens must be at least 64")
        return self


def _question(pair: dict) -> str:
    return pair["instruction"] + (f"\n{pair['input']}" if pair.get("input") else "")


def check_model(params: GroundingParams) -> None:
    if not (Path(params.model) / "config.json").is_file():
        raise DistillError(
            f"distill.grounding.model: no model in {params.model} (run `dvc repro base_model`, "
            "or set distill.grounding.enabled: false)"
        )


class Scorer:
    """The base model, loaded once; `gains` scores pairs in batches."""

    BATCH = 8

    def __init__(self, params: GroundingParams):
        check_model(params)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.params = params
        self.tok = AutoTokenizer.from_pretrained(params.model)
        self.model = AutoModelForCausalLM.from_pretrained(params.model, dtype=torch.float32)
        self.model.eval()

    def _row(self, prompt: str, response: str) -> tuple[list[int], list[int]]:
        """The prompt's tokens (its end, when long) then the response's (at most half the
        budget); only the response is scored."""
        answer = self.tok(" " + response, add_special_tokens=False)["input_ids"]
        answer = answer[: self.params.max_tokens // 2]
        context = self.tok(prompt, add_special_tokens=False)["input_ids"]
        context = context[-(self.params.max_tokens - len(answer)) :]
        return context + answer, [-100] * len(context) + answer

    def gains(self, items: list[tuple[str, dict]]) -> list[float]:
        """How much each passage raises the mean log-probability of its pair's response."""
        rows: dict[str, list] = {"input_ids": [], "labels": []}
        for content, pair in items:
            question = _question(pair)
            for prompt in (
                WITH.format(content=content, question=question),
                WITHOUT.format(question=question),
            ):
                ids, labels = self._row(prompt, pair["response"])
                rows["input_ids"].append(ids)
                rows["labels"].append(labels)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        losses = token_losses(self.model, rows, self.BATCH, pad, "cpu", desc="grounding")
        logprobs = [-s / n if n else math.nan for s, n in losses]
        # Rounded so that float noise across machines and thread counts cannot flip a verdict's bytes.
        return [round(logprobs[2 * i] - logprobs[2 * i + 1], 3) for i in range(len(items))]


def model_identity(folder: str) -> str:
    """What the cache keys a gain on: the model's config and the size of each weights file."""
    root = Path(folder)
    check_model(GroundingParams(model=folder))
    sizes = sorted((p.name, p.stat().st_size) for p in root.glob("*.safetensors"))
    config = sha256_hex((root / "config.json").read_bytes())
    return f"grounding:{config}:{sizes}"


def gains(
    params: GroundingParams, items: Iterable[tuple[str, dict]], cache: RequestCache | None = None
) -> list[float]:
    """The gain of every (passage, pair); gains already in `cache` are not computed again, so
    re-running the stage loads no model."""
    items = list(items)
    ident = model_identity(params.model) if items else ""
    keys = [
        RequestCache.key(ident, {"content": c, "pair": p, "max_tokens": params.max_tokens}) for c, p in items
    ]
    found: list[float | None] = [None] * len(items)
    if cache is not None:
        for i, key in enumerate(keys):
            if (hit := cache.get(key)) is not None:
                found[i] = hit["gain"]
    todo = [i for i, g in enumerate(found) if g is None]
    if todo:
        print(f"distill grounding: scoring {len(todo)} pairs with {params.model}", file=sys.stderr)
        for i, gain in zip(todo, Scorer(params).gains([items[i] for i in todo]), strict=True):
            found[i] = gain
            if cache is not None:
                cache.put(keys[i], {"gain": gain})
    return [g for g in found if g is not None]
