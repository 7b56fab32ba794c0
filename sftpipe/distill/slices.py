"""Knowledge slices for distill: read and checked, then cut into chunks of at most `chunk_chars`
on paragraph, sentence and word boundaries."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sftpipe.core.errors import SftpipeError
from sftpipe.core.hashing import hex_digest
from sftpipe.core.records import Drop
from sftpipe.io.readers import ReadError, read_file


class DistillError(SftpipeError, ValueError):
    """Bad slices or prompt templates: one line naming the file, the line and the problem."""


@dataclass(frozen=True)
class Chunk:
    id: str  # "<slice id>" or "<slice id>#<k>" when the slice was split
    slice_id: str
    content: str
    metadata: dict


def chunk_text(text: str, limit: int) -> list[str]:
    """Split `text` into chunks of at most `limit` characters, on paragraph boundaries; a paragraph
    longer than `limit` is split between sentences, a sentence between words, a word anywhere."""
    pieces: list[str] = []
    for para in re.split(r"\n\s*\n", text.strip()):
        para = para.strip()
        if para:
            pieces.extend([para] if len(para) <= limit else _split_long(para, limit))
    return _pack(pieces, limit, "\n\n")


def _split_long(para: str, limit: int) -> list[str]:
    out: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+", para):
        if len(sentence) <= limit:
            out.append(sentence)
            continue
        words: list[str] = []
        for word in sentence.split():
            words.extend(word[i : i + limit] for i in range(0, len(word), limit))
        out.extend(_pack(words, limit, " "))
    return _pack(out, limit, " ")


def _pack(pieces: list[str], limit: int, sep: str) -> list[str]:
    chunks: list[str] = []
    for piece in pieces:
        if chunks and len(chunks[-1]) + len(sep) + len(piece) <= limit:
            chunks[-1] += sep + piece
        else:
            chunks.append(piece)
    return chunks


def read_slices(path: str | Path) -> list[dict]:
    """The slices of `path` as {"id", "content", "metadata"}; an id is a content hash when absent."""
    slices: list[dict] = []
    seen: dict[str, str] = {}  # id -> where the slice is
    if not Path(path).is_file():
        raise DistillError(f"distill.slices: no such file {path}")
    try:
        rows = list(read_file(Path(path)))
    except ReadError as exc:
        raise DistillError(f"distill.slices: {exc}") from None
    for where, row in rows:
        pos = f"{where['file']}: line {where.get('line', where.get('index'))}"
        if isinstance(row, Drop):
            raise DistillError(f"{pos}: {row.reason}: {row.detail}")
        content, sid, meta = row.get("content"), row.get("id"), row.get("metadata") or {}
        if not isinstance(content, str) or not content.strip():
            raise DistillError(f"{pos}: 'content' must be a non-empty string")
        if not isinstance(meta, dict):
            raise DistillError(f"{pos}: 'metadata' must be an object")
        if sid is not None and (not isinstance(sid, str | int) or isinstance(sid, bool) or str(sid) == ""):
            raise DistillError(f"{pos}: 'id' must be a non-empty string or an integer")
        sid = str(sid) if sid is not None else "slice-" + hex_digest(content, size=6)
        if sid in seen:
            raise DistillError(f"{pos}: id {sid!r} repeats the slice at {seen[sid]}")
        seen[sid] = pos
        slices.append({"id": sid, "content": content, "metadata": meta})
    return slices


def chunks_of(slices: list[dict], limit: int) -> list[Chunk]:
    out = []
    for s in slices:
        parts = chunk_text(s["content"], limit)
        for k, part in enumerate(parts, 1):
            out.append(Chunk(s["id"] if len(parts) == 1 else f"{s['id']}#{k}", s["id"], part, s["metadata"]))
    return out
