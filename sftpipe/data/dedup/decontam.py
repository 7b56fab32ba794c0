"""Decontamination: training records that share a long word n-gram with an evaluation set.

An evaluation set is any file sftpipe's readers take (JSON, JSONL, Parquet, CSV); every string in
each of its records (nested lists and dicts included: GSM8K's question and answer, MT-Bench's
`turns`) is tokenized like the dedup stage tokenizes conversations, and its n-grams are indexed.
A text shorter than `n` tokens cannot be matched and is counted as `too_short`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from sftpipe.core.errors import SftpipeError
from sftpipe.core.records import Drop
from sftpipe.data.dedup.minhash import shingles, tokenize
from sftpipe.io.readers import ReadError, files_in, read_file


class EvalSetError(SftpipeError, ValueError):
    """An evaluation set named in params cannot be used (missing, unreadable, too many sets)."""


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


class EvalIndex:
    """Sorted n-gram hashes of all evaluation sets, each hash with a bit mask of the sets holding it."""

    def __init__(self, sets: Mapping[str, str | Path], n: int):
        if len(sets) > 64:
            raise EvalSetError(f"dedup.decontaminate.sets: at most 64 sets (got {len(sets)})")
        self.n = n
        self.names = sorted(sets)
        self.stats: dict[str, dict] = {}
        hashes, masks = [], []
        for bit, name in enumerate(self.names):
            texts = self._texts(name, sets[name])
            grams = np.zeros(0, dtype=np.uint64)
            too_short = 0
            if texts:
                tok, off = tokenize(texts)
                long_enough = np.diff(off) >= n
                too_short = int((~long_enough).sum())
                g, goff = shingles(tok, off, n)
                keep = np.repeat(long_enough, np.diff(goff))
                grams = np.unique(g[keep])
            self.stats[name] = {"texts": len(texts), "too_short": too_short, "ngrams": len(grams)}
            hashes.append(grams)
            masks.append(np.full(len(grams), 1 << bit, dtype=np.uint64))
        h = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)
        m = np.concatenate(masks) if masks else np.zeros(0, dtype=np.uint64)
        order = np.argsort(h, kind="stable")
        h, m = h[order], m[order]
        self.hashes, first = np.unique(h, return_index=True)
        self.masks = np.bitwise_or.reduceat(m, first) if len(h) else m

    @staticmethod
    def _texts(name: str, path: str | Path) -> list[str]:
        texts: list[str] = []
        try:
            for f in files_in(path):
                for _, row in read_file(f):
                    if not isinstance(row, Drop):
                        texts.extend(s for s in _strings(row) if s.strip())
        except ReadError as exc:
            raise EvalSetError(f"dedup.decontaminate.sets.{name}: {exc}") from None
        return texts

    def __bool__(self) -> bool:
        return bool(self.names)

    def match(self, tok: np.ndarray, off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per text: (bit mask of the sets it shares an n-gram with, how many of its n-grams match)."""
        n_docs = len(off) - 1
        mask = np.zeros(n_docs, dtype=np.uint64)
        count = np.zeros(n_docs, dtype=np.int64)
        if not len(self.hashes):
            return mask, count
        g, goff = shingles(tok, off, self.n)
        long_enough = np.repeat(np.diff(off) >= self.n, np.diff(goff))
        pos = np.minimum(np.searchsorted(self.hashes, g), len(self.hashes) - 1)
        hit = (self.hashes[pos] == g) & long_enough
        docs = np.repeat(np.arange(n_docs), np.diff(goff))[hit]
        np.bitwise_or.at(mask, docs, self.masks[pos[hit]])
        np.add.at(count, docs, 1)
        return mask, count

    def set_names(self, mask: int) -> list[str]:
        return [name for bit, name in enumerate(self.names) if mask >> bit & 1]
