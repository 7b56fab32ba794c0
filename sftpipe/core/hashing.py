"""The hashes that outputs keep (ids, split and sampling keys, content digests), in one place so
that none of them changes by accident: a changed hash silently moves records between splits."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def digest(*parts: str | bytes, size: int = 16) -> bytes:
    """blake2b of the parts joined by U+001F (a single part is hashed as it is)."""
    blob = b"\x1f".join(p.encode() if isinstance(p, str) else p for p in parts)
    return hashlib.blake2b(blob, digest_size=size).digest()


def hex_digest(*parts: str | bytes, size: int = 16) -> str:
    return digest(*parts, size=size).hex()


def sha256_hex(blob: bytes) -> str:
    """sha256, for digests that name content outside the pipeline's own keys (request caches,
    tokenizer and params fingerprints): the algorithm everyone can recompute."""
    return hashlib.sha256(blob).hexdigest()


def file_md5(paths: Iterable[str | Path]) -> str:
    """md5 of the files' bytes, one after the other (DVC's file hash)."""
    return file_digest(paths, "md5")


def file_digest(paths: Iterable[str | Path], algorithm: str = "sha256") -> str:
    """Hex digest of the files' bytes, one after the other, read in 4 MB chunks."""
    h = hashlib.new(algorithm)
    for path in paths:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()
