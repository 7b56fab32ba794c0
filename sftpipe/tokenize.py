"""Tokenization with label masks from character offsets, batched in the fast tokenizer.

`encode(tokenizer, rendered)` tokenizes many rendered texts in one `encode_batch` call (Rust,
every core; the GIL is released) and turns each text's trained character spans into labels:
a token is trained when it overlaps a trained span, so no character of a response is ever left
out, even when a byte-level BPE token straddles the template/response boundary. Everything else
is -100. Texts are encoded without added special tokens: a renderer's text is exactly what the
model sees, BOS included when the tokenizer wants one (see `bos_prefix`).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from sftpipe.templates import Rendered

IGNORE = -100


class TokenizerError(ValueError):
    """The tokenizer folder is missing or unusable; the message says which and why."""


class Encoded(NamedTuple):
    input_ids: list[int]
    spans: list[tuple[int, int]]
    """Tokens `[a, b)` of each trained character span (an assistant turn and its end-of-turn token)."""
    train_on_prompt: bool = False

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """The trained tokens: the spans, or everything with train_on_prompt."""
        return [(0, len(self.input_ids))] if self.train_on_prompt else [s for s in self.spans if s[1] > s[0]]

    @property
    def labels(self) -> list[int]:
        labels = [IGNORE] * len(self.input_ids)
        for a, b in self.ranges:
            labels[a:b] = self.input_ids[a:b]
        return labels

    @property
    def n_trained(self) -> int:
        return sum(b - a for a, b in self.ranges)

    @property
    def first_trained(self) -> int:
        """First token of the first assistant turn: the prompt's length in tokens."""
        return self.spans[0][0] if self.spans else len(self.input_ids)


def load_tokenizer(path: str | Path):
    """A fast tokenizer from a Hugging Face folder (offsets need the Rust implementation)."""
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise TokenizerError(f"{path}: no such tokenizer folder (run the base_model stage first)")
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"{path}: cannot load a tokenizer: {exc}") from None
    if not tok.is_fast:
        raise TokenizerError(f"{path}: {type(tok).__name__} is not a fast tokenizer (no tokenizer.json)")
    return tok


def ensure_pad_token(tokenizer) -> bool:
    """Give the tokenizer a pad token if it has none (GPT-2): its EOS. Returns whether it was set.

    Padding is always masked with -100 and the attention mask, so reusing EOS is safe; the trained
    EOS positions are real tokens and keep their labels.
    """
    if tokenizer.pad_token is not None:
        return False
    tokenizer.pad_token = tokenizer.eos_token
    return True


def bos_prefix(tokenizer) -> str:
    """The BOS text to put before a rendered text when the tokenizer itself would add it."""
    bos = tokenizer.bos_token
    if not bos or tokenizer.bos_token_id is None:
        return ""
    with_special = tokenizer.backend_tokenizer.encode("a", add_special_tokens=True).ids
    return bos if with_special[:1] == [tokenizer.bos_token_id] else ""


def _token_range(enc, start: int, end: int) -> tuple[int, int]:
    """Tokens `[a, b)` overlapping characters `[start, end)` (empty, at the right place, if none)."""
    a = enc.char_to_token(start)
    last = enc.char_to_token(end - 1) if end > start else None
    if a is None or last is None:
        # Empty span, or a normalizer dropped these characters (not byte-level BPE): scan offsets.
        offsets = enc.offsets
        hit = [i for i, (s, e) in enumerate(offsets) if s < end and e > start]
        if hit:
            return hit[0], hit[-1] + 1
        at = sum(1 for s, _ in offsets if s < start)
        return at, at
    # One character split over several byte tokens: char_to_token names only the first.
    n = len(enc)  # not len(enc.ids): that builds the whole id list
    while last + 1 < n and enc.token_to_chars(last + 1)[0] < end:
        last += 1
    return a, last + 1


def encode(tokenizer, rendered: list[Rendered], train_on_prompt: bool = False) -> list[Encoded]:
    """Token ids and the token range of every trained span, for each rendered text, in order."""
    encodings = tokenizer.backend_tokenizer.encode_batch([r.text for r in rendered], add_special_tokens=False)
    return [
        Encoded(enc.ids, [_token_range(enc, s, e) for s, e in r.spans], train_on_prompt)
        for enc, r in zip(encodings, rendered, strict=True)
    ]
