"""Tokenization with label masks from character offsets, batched in the fast tokenizer.

`encode(tokenizer, rendered)` tokenizes many rendered texts in one `encode_batch` call (Rust,
every core; the GIL is released) and turns each text's trained character spans into labels:
a token is trained when it overlaps a trained span, so no character of a response is ever left
out, even when a byte-level BPE token straddles the template/response boundary. Everything else
is -100. Texts are encoded without added special tokens: a renderer's text is exactly what the
model sees, BOS included when the tokenizer wants one (see `bos_prefix`).

For the common byte-level BPE tokenizers (GPT-2, SmolLM2, ...), `FastBPE` gives the same ids
through tiktoken's BPE (about 7x the throughput of `encode_batch` on one core, see
benchmarks/RESULTS.md) and the same trained ranges from token byte lengths. Tokenization is most
of format's time, so this is what makes a million conversations fit the budget.
"""

from __future__ import annotations

from itertools import chain, pairwise
from pathlib import Path
from typing import NamedTuple

import numpy as np

from sftpipe.core.errors import SftpipeError
from sftpipe.data.format.templates import Rendered

IGNORE = -100


class TokenizerError(SftpipeError, ValueError):
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


def encode(
    tokenizer, rendered: list[Rendered], train_on_prompt: bool = False, fast: FastBPE | None = None
) -> list[Encoded]:
    """Token ids and the token range of every trained span, for each rendered text, in order;
    through `fast` (`FastBPE.of(tokenizer)`) when given: the same result, sooner."""
    if fast is not None:
        return fast.encode(tokenizer, rendered, train_on_prompt)
    encodings = tokenizer.backend_tokenizer.encode_batch([r.text for r in rendered], add_special_tokens=False)
    return [
        Encoded(enc.ids, [_token_range(enc, s, e) for s, e in r.spans], train_on_prompt)
        for enc, r in zip(encodings, rendered, strict=True)
    ]


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte (as in its tokenizer.json)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = (b for b in range(256) if b not in keep)
    return {chr(b if b in keep else 256 + k): b for k, b in enumerate(extra)} | {chr(b): b for b in keep}


# GPT-2's pre-tokenizer regex, which the tokenizers library's ByteLevel(use_regex=True) applies
_BYTE_LEVEL_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class FastBPE:
    """A byte-level BPE tokenizer's encoding through tiktoken. Only built (`of`) for a definition
    whose every piece tiktoken reproduces: no normalizer, GPT-2's ByteLevel split, plain BPE with
    merges that create their tokens in id order, added tokens matched verbatim, offsets not
    trimmed. A text holding a byte the vocabulary lacks (which the tokenizers library silently
    drops) goes through the tokenizer itself."""

    def __init__(self, definition: dict):
        import tiktoken

        model = definition["model"]
        alphabet = _byte_level_alphabet()
        added = {a["content"]: a["id"] for a in definition["added_tokens"]}
        ranks = {bytes(alphabet[c] for c in t): i for t, i in model["vocab"].items() if t not in added}
        self.n_vocab = 1 + max([*ranks.values(), *added.values()])
        # tiktoken needs every byte; one the vocabulary lacks gets an id past it, and its text the slow path
        for k, b in enumerate(b for b in range(256) if bytes([b]) not in ranks):
            ranks[bytes([b])] = self.n_vocab + k
        self.encoding = tiktoken.Encoding(
            "sftpipe", pat_str=_BYTE_LEVEL_SPLIT, mergeable_ranks=ranks, special_tokens=added
        )
        self.n_bytes = np.zeros(self.n_vocab + 256, dtype=np.int64)  # bytes of each token
        for piece, i in ranks.items():
            self.n_bytes[i] = len(piece)
        for content, i in added.items():
            self.n_bytes[i] = len(content.encode())

    @classmethod
    def of(cls, tokenizer) -> FastBPE | None:
        """The fast path for `tokenizer` (a fast HF tokenizer), or None where it would differ."""
        import orjson  # 10x the stdlib's json on a 2 MB tokenizer.json (0.2 s of the stage's start-up)

        definition = orjson.loads(tokenizer.backend_tokenizer.to_str())
        return cls(definition) if _tiktoken_compatible(definition) else None

    def encode(self, tokenizer, rendered: list[Rendered], train_on_prompt: bool) -> list[Encoded]:
        if not rendered:
            return []
        enc = self.encoding
        ids = [enc.encode(r.text, allowed_special="all") for r in rendered]
        counts = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        first = np.zeros(len(ids) + 1, dtype=np.int64)  # each text's first token
        np.cumsum(counts, out=first[1:])
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(first[-1]))
        end = np.cumsum(self.n_bytes[flat])  # each token's end, in bytes from the first text's start
        start = end - self.n_bytes[flat]
        base = np.concatenate([[0], end])[first[:-1]]  # each text's first byte
        slow = set(
            np.unique(np.searchsorted(first, np.flatnonzero(flat >= self.n_vocab), "right") - 1).tolist()
        )
        bounds = [
            (k, base[k] + _byte_offset(r.text, s), base[k] + _byte_offset(r.text, e))
            for k, r in enumerate(rendered)
            if k not in slow
            for s, e in r.spans
        ]
        if bounds:
            ks, s_at, e_at = np.array(bounds, dtype=np.int64).T
            # trained tokens: from the first ending after the span starts, to the first starting at or after its end
            lo = (np.searchsorted(end, s_at, "right") - first[ks]).tolist()
            hi = (np.searchsorted(start, e_at, "left") - first[ks]).tolist()
        out, j = [], 0
        redo = iter(encode(tokenizer, [rendered[k] for k in sorted(slow)], train_on_prompt))
        for k, r in enumerate(rendered):
            if k in slow:
                out.append(next(redo))
                continue
            n = len(r.spans)
            out.append(Encoded(ids[k], list(zip(lo[j : j + n], hi[j : j + n], strict=True)), train_on_prompt))
            j += n
        return out


def _byte_offset(text: str, char: int) -> int:
    return char if text.isascii() else len(text[:char].encode())


def _tiktoken_compatible(d: dict) -> bool:
    model, pre, post = d.get("model") or {}, d.get("pre_tokenizer") or {}, d.get("post_processor") or {}
    if pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 1:
        pre = pre["pretokenizers"][0]
    vocab, merges = model.get("vocab") or {}, model.get("merges") or []
    merges = [m.split(" ", 1) if isinstance(m, str) else m for m in merges]
    made = [vocab.get(a + b) for a, b in merges]
    added = {a["content"] for a in d.get("added_tokens", [])}
    alphabet = _byte_level_alphabet()
    return (
        d.get("normalizer") is None
        and pre == {**pre, "type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
        and not (post.get("type") == "ByteLevel" and post.get("trim_offsets"))
        and model.get("type") == "BPE"
        and not model.get("dropout")
        and not model.get("byte_fallback")
        and not model.get("unk_token")
        and not model.get("continuing_subword_prefix")
        and not model.get("end_of_word_suffix")
        and None not in made
        and all(
            a is not None and b is not None and a < b for a, b in pairwise(made)
        )  # merge order = id order
        # every other token is one byte, or an added token: tiktoken takes any vocabulary word whole
        and len(vocab)
        == len(set(made)) + sum(1 for t in vocab if t in added or (len(t) == 1 and t in alphabet))
        and all(
            not (a.get("lstrip") or a.get("rstrip") or a.get("single_word") or a.get("normalized"))
            for a in d.get("added_tokens", [])
        )
    )
