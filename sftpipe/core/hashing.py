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


def file_md5(paths: Iterable[str | Path]) -> str:
    """md5 of the files' bytes, one after the other, read in 4 MB chunks."""
    h = hashlib.md5()
    for path in paths:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()
