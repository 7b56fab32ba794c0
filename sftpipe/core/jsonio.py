"""Deterministic JSON/JSONL reading and writing, and atomic outputs.

Outputs use sorted keys and no timestamps, so the same input gives byte-identical files and DVC
never re-runs a downstream stage for nothing. Every output is written to a temporary sibling and
renamed into place at the end, so a killed stage leaves no half-written output behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

_OPTS = orjson.OPT_SORT_KEYS


def dumps(obj: Any) -> bytes:
    """One compact JSON line with sorted keys (no trailing newline)."""
    return orjson.dumps(obj, option=_OPTS)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Records of a JSONL file this project wrote (trusted input: errors raise with the line)."""
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: invalid JSON: {exc}") from None


def write_json(path: str | Path, obj: Any) -> None:
    """Pretty, sorted, newline-terminated JSON, written atomically (reports, metrics)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(orjson.dumps(obj, option=_OPTS | orjson.OPT_INDENT_2) + b"\n")


class JsonlWriter:
    """Append records as sorted-key JSON lines; use as a context manager inside `atomic_path`."""

    def __init__(self, path: str | Path):
        self._fh = open(path, "wb")  # noqa: SIM115 - closed in __exit__/close
        self.count = 0

    def write(self, obj: Any) -> None:
        self._fh.write(orjson.dumps(obj, option=_OPTS | orjson.OPT_APPEND_NEWLINE))
        self.count += 1

    def write_all(self, objs: Iterable[Any]) -> None:
        for obj in objs:
            self.write(obj)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_jsonl(path: str | Path, objs: Iterable[Any]) -> int:
    """Write all `objs` to `path` atomically; returns the count."""
    with atomic_path(path) as tmp, JsonlWriter(tmp) as out:
        out.write_all(objs)
        return out.count


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    Works for files and directories alike: the caller decides what to create at the yielded path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise FileNotFoundError(f"nothing was written to {path}")
        _remove(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
