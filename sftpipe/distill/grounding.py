"""The grounding gate: how much the passage raises the base model's likelihood of the response.

gain = mean log-probability per response token given (passage, question) minus the same given the
question alone, in nats. A response drawn from the passage gains a lot; one the model would write
anyway (boilerplate, an answer about something else) gains about nothing. It needs no judge and
no sampling, so it is stable: the same pair always gets the same gain.

The same two forward passes give two more signals, for what a mean gain cannot see in a copy of
the passage (benchmarks/distill_signals.py measures them):
- `end_logprob`: the log-probability, with the passage, of ending the turn right after the
  response (the chat template's end-of-turn token): an answer cut mid-sentence rarely ends there;
- `min_token_gain`: the smallest per-token gain: a token the passage makes much *less* likely (an
  inserted "not", "after" for the passage's "before") is one the passage contradicts.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from pathlib import Path

from pydantic import model_validator

from sftpipe.core.config import Section
from sftpipe.core.hashing import sha256_hex
from sftpipe.distill.llm import RequestCache, through_cache
from sftpipe.distill.slices import DistillError
from sftpipe.model.scoring import each_token_loss

WITH = "Passage:\n{content}\n\nQuestion: {question}\n\nAnswer:"
WITHOUT = "Question: {question}\n\nAnswer:"


class GroundingParams(Section):
    """`distill.grounding`: the base model's log-likelihood gain from the passage."""

    enabled: bool = True
    """Score every pair with the base model; drop those below min_gain (reason `ungrounded`),
    min_end_logprob (`incomplete`) or min_token_gain (`contradicts_passage`)."""
    model: str = "models/base"
    """Causal LM folder (Hugging Face format) that scores; models/base is the base_model stage's output."""
    min_gain: float = 1.5
    """Keep a pair when the passage raises its response's mean log-likelihood by at least this
    (nats/token); 1.5 separates the labelled pairs of tests/distill/data (see benchmarks/RESULTS.md)."""
    min_end_logprob: float | None = -15.0
    """Drop a pair (reason `incomplete`) when the base model's log-probability of ending the turn
    right after its response, given passage and question, is below this (nats; null = off)."""
    min_token_gain: float | None = -4.0
    """Drop a pair (reason `contradicts_passage`) when the passage makes one of its response's
    tokens this much less likely (the smallest per-token gain, nats; null = off)."""
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


def end_of_turn(tok) -> int:
    """The token that ends an assistant turn in the tokenizer's chat template (`<|im_end|>` for
    SmolLM2), found by rendering one; the EOS token when there is no template."""
    mark = "\u2063sftpipe-end\u2063"
    try:
        chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": mark}]
        after = tok.apply_chat_template(chat, tokenize=False).split(mark, 1)[1]
    except (ValueError, IndexError, TypeError, AttributeError):  # no template, or an odd one
        after = ""
    ids = tok(after.strip(), add_special_tokens=False)["input_ids"] if after.strip() else []
    return ids[0] if ids else tok.eos_token_id


class Scorer:
    """The base model, loaded once; `signals` scores pairs in batches."""

    BATCH = 8

    def __init__(self, params: GroundingParams):
        check_model(params)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.params = params
        self.tok = AutoTokenizer.from_pretrained(params.model)
        self.model = AutoModelForCausalLM.from_pretrained(params.model, dtype=torch.float32)
        self.model.eval()
        self.end = end_of_turn(self.tok)

    def _row(self, prompt: str, response: str) -> tuple[list[int], list[int], bool]:
        """The prompt's tokens (its end, when long), the response's (at most half the budget), then
        the end-of-turn token; only the response and the end are scored. True when the response
        was cut (then its end is not the response's own)."""
        answer = self.tok(" " + response, add_special_tokens=False)["input_ids"]
        cut = len(answer) > self.params.max_tokens // 2
        answer = answer[: self.params.max_tokens // 2] + [self.end]
        context = self.tok(prompt, add_special_tokens=False)["input_ids"]
        context = context[-(self.params.max_tokens - len(answer)) :]
        return context + answer, [-100] * len(context) + answer, cut

    def signals(self, items: list[tuple[str, dict]]) -> list[dict[str, float | None]]:
        """Per (passage, pair): `gain`, `end_logprob` (None when the response was cut to the
        budget) and `min_token_gain`, rounded so that float noise across machines and thread
        counts cannot flip a verdict's bytes."""
        rows: dict[str, list] = {"input_ids": [], "labels": []}
        cuts = []
        for content, pair in items:
            question = _question(pair)
            for prompt in (
                WITH.format(content=content, question=question),
                WITHOUT.format(question=question),
            ):
                ids, labels, cut = self._row(prompt, pair["response"])
                rows["input_ids"].append(ids)
                rows["labels"].append(labels)
            cuts.append(cut)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        losses = each_token_loss(self.model, rows, self.BATCH, pad, "cpu", desc="grounding")
        return [_signals(losses[2 * i], losses[2 * i + 1], cut) for i, cut in enumerate(cuts)]


def _signals(with_: list[float], without: list[float], cut: bool) -> dict[str, float | None]:
    """The signals from the per-token losses of one pair's two rows (the last token: the end)."""
    gains = [b - a for a, b in zip(with_[:-1], without[:-1], strict=True)]
    if not gains:
        return {"gain": math.nan, "end_logprob": None, "min_token_gain": None}
    return {
        "gain": round(sum(gains) / len(gains), 3),
        "end_logprob": None if cut else round(-with_[-1], 3),
        "min_token_gain": round(min(gains), 3),
    }


def folder_identity(kind: str, folder: str) -> str:
    """What a cache keys a local model's scores on: its config, tokenizer config and chat template
    (which names the end-of-turn token), and the size of each weights file."""
    root = Path(folder)
    sizes = sorted(
        (p.name, p.stat().st_size) for pattern in ("*.safetensors", "*.bin") for p in root.glob(pattern)
    )
    texts = [root / n for n in ("config.json", "tokenizer_config.json", "chat_template.jinja")]
    config = sha256_hex(b"".join(p.read_bytes() for p in texts if p.is_file()))
    return f"{kind}:{config}:{sizes}"


def signals(
    params: GroundingParams, items: Iterable[tuple[str, dict]], cache: RequestCache | None = None
) -> list[dict[str, float | None]]:
    """The signals (`Scorer.signals`) of every (passage, pair); those already in `cache` are not
    computed again, so re-running the stage loads no model."""
    items = list(items)
    if items:
        check_model(params)
    ident = folder_identity("grounding", params.model) if items else ""
    keys = [
        RequestCache.key(ident, {"content": c, "pair": p, "max_tokens": params.max_tokens, "signals": 2})
        for c, p in items
    ]

    def compute(todo: list[int]) -> list[dict]:
        print(f"distill grounding: scoring {len(todo)} pairs with {params.model}", file=sys.stderr)
        return Scorer(params).signals([items[i] for i in todo])

    return through_cache(cache, keys, compute)
