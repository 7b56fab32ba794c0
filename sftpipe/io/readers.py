"""Streaming readers for local files: JSON, JSONL (optionally gzipped), Parquet, CSV.

Each yields `(where, row)` pairs: `where` locates the row for error messages and rejected files
(`{"file", "line"}` or `{"file", "index"}`), and `row` is a dict or a `Drop` describing why the
raw input could not become a row. Readers never stop at a bad row they can step over.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from json import JSONDecodeError, JSONDecoder
from pathlib import Path

import orjson

from sftpipe.core.errors import SftpipeError
from sftpipe.core.records import Drop

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".csv")
_WS = " \t\r\n"
BOM = b"\xef\xbb\xbf"


class ReadError(SftpipeError, ValueError):
    """Input that cannot be read at all; the message names the file and the position."""


def kind_of(path: str | Path) -> str:
    name = str(path).lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix.removesuffix(".gz").lstrip(".")
    raise ReadError(f"{path}: unsupported file type (expected one of {', '.join(SUFFIXES)})")


def files_in(path: str | Path) -> list[Path]:
    """A file, or every supported file under a folder, in sorted order."""
    path = Path(path)
    if not path.exists():
        raise ReadError(f"{path}: no such file or folder")
    if path.is_file():
        return [path]
    found = sorted(p for p in path.rglob("*") if p.is_file() and str(p).lower().endswith(SUFFIXES))
    if not found:
        raise ReadError(f"{path}: folder has no {', '.join(SUFFIXES)} files")
    return found


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if str(path).lower().endswith(".gz") else open(path, "rb")


def read_file(path: Path, display: str | None = None) -> Iterator[tuple[dict, dict | Drop]]:
    """Rows of one local file; `display` is the name used in messages (e.g. the original URL)."""
    name = display or str(path)
    reader = {"jsonl": _jsonl, "json": _json, "parquet": _parquet, "csv": _csv}[kind_of(path)]
    yield from reader(path, name)


def _jsonl(path: Path, name: str) -> Iterator[tuple[dict, dict | Drop]]:
    with _open_bytes(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if (line[3:] if lineno == 1 and line.startswith(BOM) else line).strip():
                yield jsonl_row(name, lineno, line)


def jsonl_row(name: str, lineno: int, line: bytes) -> tuple[dict, dict | Drop]:
    """One non-blank JSONL line as `(where, row)`."""
    if lineno == 1 and line.startswith(BOM):
        line = line[3:]
    where = {"file": name, "line": lineno}
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return where, Drop("not_utf8", f"byte {exc.start}: {exc.reason}")
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return where, Drop("invalid_json", str(exc))
    return where, row if isinstance(row, dict) else Drop("not_an_object", f"a {type(row).__name__}")


def _json(path: Path, name: str) -> Iterator[tuple[dict, dict | Drop]]:
    with _open_bytes(path) as fh:
        data = fh.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ReadError(f"{name}: byte {exc.start}: not UTF-8 ({exc.reason})") from None
    del data  # the decoded text is all we need; don't hold the file twice while iterating
    start = len(text) - len(text.lstrip(_WS))
    if start == len(text):
        return
    if text[start] == "[":
        yield from _array(text, start, name, lambda i: {"file": name, "index": i})
        return
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ReadError(f"{name}: invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ReadError(f"{name}: top level is a {type(obj).__name__}, expected an array or object")
    if obj and all(isinstance(v, list) for v in obj.values()):
        # An object of arrays, e.g. {"train": [...], "test": [...]}.
        for key, rows in obj.items():
            for i, row in enumerate(rows):
                where = {"file": name, "index": f"{key}[{i}]"}
                yield (
                    where,
                    row if isinstance(row, dict) else Drop("not_an_object", f"a {type(row).__name__}"),
                )
    else:
        yield {"file": name, "index": 0}, obj


def _array(text: str, pos: int, name: str, where_of) -> Iterator[tuple[dict, dict | Drop]]:
    """Elements of a JSON array one at a time, so a truncated tail loses only the last record."""
    decoder, n, i = JSONDecoder(), len(text), 0
    pos += 1
    while True:
        while pos < n and text[pos] in _WS:
            pos += 1
        if pos < n and text[pos] == "]":
            return
        if pos >= n:
            yield (
                where_of(i),
                Drop("truncated", f"array ends without ']' at byte {_byte(text, pos)}", "on_truncated"),
            )
            return
        try:
            row, pos = decoder.raw_decode(text, pos)
        except JSONDecodeError as exc:
            if text.rstrip(_WS).endswith("]"):
                raise ReadError(
                    f"{name}: record {i} at byte {_byte(text, pos)}: invalid JSON: {exc.msg}"
                ) from None
            # The file ends inside this record: everything before it is intact.
            yield (
                where_of(i),
                Drop(
                    "truncated",
                    f"file ends inside record {i}, which starts at byte {_byte(text, pos)}",
                    "on_truncated",
                ),
            )
            return
        yield where_of(i), row if isinstance(row, dict) else Drop("not_an_object", f"a {type(row).__name__}")
        i += 1
        while pos < n and text[pos] in _WS:
            pos += 1
        if pos < n and text[pos] == ",":
            pos += 1
        elif pos < n and text[pos] != "]":
            raise ReadError(f"{name}: record {i} at byte {_byte(text, pos)}: expected ',' or ']'")


def _byte(text: str, pos: int) -> int:
    return len(text[:pos].encode("utf-8"))


def _parquet(path: Path, name: str) -> Iterator[tuple[dict, dict | Drop]]:
    import pyarrow.parquet as pq

    i = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            yield {"file": name, "index": i}, row
            i += 1


def _csv(path: Path, name: str) -> Iterator[tuple[dict, dict | Drop]]:
    with _open_bytes(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        reader = csv.DictReader(text)
        try:
            for row in reader:
                where = {"file": name, "line": reader.line_num}
                if None in row:
                    yield where, Drop("wrong_type", f"{len(row[None])} more fields than the header")
                else:
                    yield where, row
        except UnicodeDecodeError as exc:
            raise ReadError(f"{name}: after line {reader.line_num}: not UTF-8 ({exc.reason})") from None
        except csv.Error as exc:
            raise ReadError(f"{name}: line {reader.line_num}: {exc}") from None
