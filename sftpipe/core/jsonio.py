"""Deterministic JSON/JSONL reading and writing, and atomic outputs.

Outputs use sorted keys and no timestamps, so the same input gives byte-identical files and DVC
never re-runs a downstream stage for nothing. Every output is written to a temporary sibling and
renamed into place at the end, so a killed stage leaves no half-written output behind.
"""

from __future__ import annotations

import contextlib
import glob
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


# Temporary folders live under <DVC project root>/SCRATCH, never beside an output: DVC hashes a
# stage's dependency folders whole, so a half-written temp folder left there by a killed stage
# changed the md5 of the next stage's input (and re-ran it for nothing once deleted).
SCRATCH = Path(".cache") / "tmp"
_swept: set[Path] = set()


def _project_root(path: Path) -> Path | None:
    for folder in (path, *path.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _sweep(root: Path) -> None:
    """Remove what killed processes left in `root`: each entry is named `<pid>.<...>`."""
    if root in _swept:
        return
    _swept.add(root)
    for entry in root.iterdir() if root.is_dir() else ():
        pid = entry.name.split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            _remove(entry)


def scratch_root(near: str | Path) -> Path:
    """Where temporary folders for work on `near` go: the project's SCRATCH folder when `near` is
    inside a DVC project and on the same filesystem (outputs are renamed into place from there),
    else `near`'s own folder (no DVC hashes it)."""
    near = Path(near).absolute()
    near.mkdir(parents=True, exist_ok=True)
    root = _project_root(near)
    if root is None:
        return near
    scratch = root / SCRATCH
    scratch.mkdir(parents=True, exist_ok=True)
    if os.stat(scratch).st_dev != os.stat(near).st_dev:
        return near
    _sweep(scratch)
    return scratch


def scratch_dir(near: str | Path, label: str) -> Path:
    """A new, empty temporary folder for work on `near` (see `scratch_root`); the caller removes
    it, and the next run removes it if this process is killed first."""
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}.{label}.", dir=scratch_root(near)))


@contextlib.contextmanager
def scratch(near: str | Path, label: str) -> Iterator[Path]:
    """`scratch_dir` as a context manager: removed on exit."""
    tmp = scratch_dir(near, label)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path (in the project's scratch folder); on success it replaces `path`,
    on error it is removed.

    Works for files and directories alike: the caller decides what to create at the yielded path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Older versions wrote `.<name>.*.tmp` beside the output; a killed run's one is junk now (DVC
    # locks a stage, so no live run of it writes there).
    for old in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        _remove(old)
    with scratch(path.parent, path.name) as tmp:
        target = tmp / path.name
        yield target
        if not target.exists():
            raise FileNotFoundError(f"nothing was written to {path}")
        _remove(path)
        os.replace(target, path)
