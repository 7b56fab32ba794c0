"""Streaming readers for local files: JSON, JSONL (optionally gzipped), Parquet, CSV.

Each yields `(where, row)` pairs: `where` locates the row for error messages and rejected files
(`{"file", "line"}` or `{"file", "index"}`), and `row` is a dict or a `Drop` describing why the
raw input could not become a row. Readers never stop at a bad row they can step over: a JSON
array is streamed element by element (a bad element is one drop), a damaged gzip stream keeps
what came before the damage, and whatever else a file does to a parser ends in one `ReadError`
line naming the file and the line, record or byte reached.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import itertools
import re
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import orjson

from sftpipe.core.errors import SftpipeError
from sftpipe.core.records import Drop

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".csv")
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


# What a damaged gzip stream raises part-way: EOFError (truncated), zlib.error (corrupt deflate
# data), BadGzipFile (bad header, CRC or length).
_GZIP_DAMAGE = (EOFError, zlib.error, gzip.BadGzipFile)
# What a file this project cannot parse raises from deep inside a library; `read_file` turns each
# into one line naming the file and where it stopped.
_READ_FAILURES: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, ValueError, RecursionError)


def read_file(path: Path, display: str | None = None) -> Iterator[tuple[dict, dict | Drop]]:
    """Rows of one local file; `display` is the name used in messages (e.g. the original URL).

    Anything the file does to the parsers becomes a `ReadError` naming the file and the line,
    record or byte reached; a compressed stream damaged part-way keeps every complete record
    before the damage and ends in one `truncated` (or `damaged`) drop."""
    import pyarrow as pa

    name = display or str(path)
    reader = {"jsonl": _jsonl, "json": _json, "parquet": _parquet, "csv": _csv}[kind_of(path)]
    at: dict = {}  # the reader's position, for the message if it fails
    try:
        yield from reader(path, name, at)
    except ReadError:
        raise
    except (*_READ_FAILURES, pa.ArrowException) as exc:
        where = ", ".join(f"{k} {v}" for k, v in at.items())
        raise ReadError(f"{name}: {where + ': ' if where else ''}{_problem(exc)}") from None


def _problem(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    if isinstance(exc, gzip.BadGzipFile | zlib.error | EOFError):
        return f"not a readable gzip file ({text or type(exc).__name__})"
    if isinstance(exc, RecursionError):
        return "nested too deeply to read"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _damage(exc: BaseException, after: str) -> Drop:
    """The drop that ends a compressed stream damaged after some records were read."""
    if isinstance(exc, EOFError):
        return Drop("truncated", f"compressed data ends {after}", "on_truncated")
    why = " ".join(str(exc).split())[:200] or type(exc).__name__
    return Drop("damaged", f"compressed data damaged {after} ({why})", "on_truncated")


def _jsonl(path: Path, name: str, at: dict) -> Iterator[tuple[dict, dict | Drop]]:
    with _open_bytes(path) as fh:
        lineno, nbytes = 0, 0
        try:
            for lineno, line in enumerate(fh, 1):
                at["line"] = lineno
                nbytes += len(line)
                if (line[3:] if lineno == 1 and line.startswith(BOM) else line).strip():
                    yield jsonl_row(name, lineno, line)
        except _GZIP_DAMAGE as exc:
            if nbytes == 0:  # nothing to recover: not gzip at all, or damaged from the start
                raise
            after = f"after line {lineno} (byte {nbytes} of the decompressed data)"
            yield {"file": name, "line": lineno + 1}, _damage(exc, after)


def jsonl_row(name: str, lineno: int, line: bytes) -> tuple[dict, dict | Drop]:
    """One non-blank JSONL line as `(where, row)`."""
    if lineno == 1 and line.startswith(BOM):
        line = line[3:]
    # Without its line ending: parallel parts hand lines over without it, and orjson's error
    # positions (in rejected.jsonl) must not depend on which path read the line.
    return {"file": name, "line": lineno}, _parse(line.rstrip(b"\r\n"))


# Deeper than this, orjson cannot write a row back out (its encoder stops at 255 levels).
MAX_DEPTH = 254


def _parse(raw: bytes, at: str = "") -> dict | Drop:
    """One JSON object from `raw` bytes, or the Drop saying why not; `at` prefixes details with
    the position of `raw` in its file."""
    try:
        row = orjson.loads(raw)  # it validates UTF-8 too: the decode below only says which error
    except orjson.JSONDecodeError as exc:  # lone surrogates and nesting past 1,024 levels included
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            return Drop("not_utf8", f"{at}byte {bad.start}: {bad.reason}")
        return Drop("invalid_json", f"{at}{exc}")
    if not isinstance(row, dict):
        return Drop("not_an_object", f"a {type(row).__name__}")
    return _writable(raw, row, at)


def _writable(raw: bytes, row: dict, at: str) -> dict | Drop:
    """`row` unless it is nested too deeply for orjson to write back out."""
    # Counting brackets is a memchr: only rows that might be too deep pay for the real check.
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH:
        try:
            orjson.dumps(row)
        except orjson.JSONEncodeError:
            return Drop("too_deep", f"{at}nested deeper than {MAX_DEPTH} levels")
    return row


def _json(path: Path, name: str, at: dict) -> Iterator[tuple[dict, dict | Drop]]:
    with _open_bytes(path) as fh:
        chunks = _Chunks(fh)
        head = chunks.first()
        while not head.strip(_WS_B) and not chunks.eof:
            head += chunks.read()
        start = len(head) - len(head.lstrip(_WS_B))
        if start == len(head):  # empty, or only whitespace
            return
        if head[start : start + 1] == b"[":
            yield from _array(chunks, head, start, name, at)
            return
        data = head + chunks.rest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReadError(f"{name}: byte {exc.start}: not UTF-8 ({exc.reason})") from None
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


_WS_B = b" \t\r\n"
CHUNK = 1 << 23


class _Chunks:
    """Blocks of a (possibly gzipped) file, the BOM removed; a damaged compressed stream ends the
    blocks early and is kept in `damage` for the reader to account for."""

    def __init__(self, fh):
        self.fh, self.damage, self.eof, self.first_read = fh, None, False, True

    def read(self, size: int = CHUNK) -> bytes:
        # Small reads (read1: one decompression step each), so damage loses at most the block
        # being decompressed, never the megabytes already read.
        blocks: list[bytes] = []
        got = 0
        while got < size and not self.eof:
            try:
                block = self.fh.read1(min(1 << 16, size - got))
            except _GZIP_DAMAGE as exc:
                self.damage, block = exc, b""
                if not blocks and self.first_read:
                    raise  # nothing read at all: not gzip, or damaged from its first byte
            self.first_read = False
            self.eof = not block
            blocks.append(block)
            got += len(block)
        return b"".join(blocks)

    def first(self) -> bytes:
        block = self.read()
        return block[3:] if block.startswith(BOM) else block

    def rest(self) -> bytes:
        return b"".join(iter(self.read, b""))


# Tokens that shape a JSON array: strings (skipped whole, so brackets inside them do not count),
# brackets, and (at the top level only) the commas between elements. An unclosed string matches
# as a lone quote: the block ends inside it.
_TOKEN_TOP = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|"|[\[\]{},]', re.S)
_TOKEN_IN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|"|[\[\]{}]', re.S)


def _array(chunks: _Chunks, buf: bytes, pos: int, name: str, at: dict) -> Iterator[tuple[dict, dict | Drop]]:
    """Elements of a top-level JSON array (`buf[pos]` is its '['), streamed: each element's bytes
    are found by scanning strings and brackets, then parsed alone by orjson. Memory holds one
    block and one element; a bad element is one drop and the elements after it still count; a
    file that ends early keeps every complete element and drops the tail as `truncated`."""
    base, depth, i = 0, 1, 0  # base: file offset of buf[0] (after a BOM)
    pos += 1
    elem = pos  # where the current element starts in buf
    while True:
        if pos == elem and (fast := _whole_object(buf, elem)):  # the common case, at orjson's speed
            row, end, after = fast
            yield {"file": name, "index": i}, _writable(buf[elem:end], row, f"record {i}: ")
            at["record"], i, elem = i, i + 1, after
            if buf[after - 1] == _CLOSE[1]:  # that was the array's ']'
                if buf[after:].strip(_WS_B) or chunks.rest().strip(_WS_B):
                    yield (
                        {"file": name, "index": i},
                        Drop("invalid_json", f"data after the array's end at byte {base + after}"),
                    )
                return
            pos = after
            continue
        token = (_TOKEN_TOP if depth == 1 else _TOKEN_IN).search(buf, pos)
        if token is None or token.end() - token.start() == 1 and buf[token.start()] == _QUOTE:
            # The block ends (or ends inside a string): read on, keeping the current element.
            more = chunks.read(max(CHUNK, len(buf) - elem))
            if not more:
                break
            pos = (token.start() if token else len(buf)) - elem
            buf, base, elem = buf[elem:] + more, base + elem, 0
            continue
        ch, pos = buf[token.start()], token.end()
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth == 0:  # the array's own ']'
                if buf[elem : token.start()].strip(_WS_B):
                    yield _element(buf[elem : token.start()], base + elem, i, name, at)
                    i += 1
                if buf[pos:].strip(_WS_B) or chunks.rest().strip(_WS_B):
                    yield (
                        {"file": name, "index": i},
                        Drop("invalid_json", f"data after the array's end at byte {base + pos}"),
                    )
                return
        elif ch == _COMMA:
            yield _element(buf[elem : token.start()], base + elem, i, name, at)
            i, elem = i + 1, pos
    yield from _array_end(chunks, buf[elem:], base + elem, depth == 1 and token is None, i, name)


def _array_end(
    chunks: _Chunks, tail: bytes, offset: int, maybe_whole: bool, i: int, name: str
) -> Iterator[tuple[dict, dict | Drop]]:
    """The file ended before the array's ']': `tail` is what there is of element `i`."""
    start = offset + len(tail) - len(tail.lstrip(_WS_B))
    if maybe_whole and tail.strip(_WS_B):
        where, row = _element(tail, offset, i, name, {})
        if not isinstance(row, Drop):  # a complete last element, only the ']' missing
            yield where, row
            i, tail, start = i + 1, b"", offset + len(tail)
    if tail.strip(_WS_B):
        after = f"inside record {i}, which starts at byte {start}"
    else:
        after = f"where the array lacks its ']' (byte {start})"
    if chunks.damage is not None:
        yield {"file": name, "index": i}, _damage(chunks.damage, after)
    elif tail.strip(_WS_B):
        yield {"file": name, "index": i}, Drop("truncated", f"file ends {after}", "on_truncated")
    else:
        yield (
            {"file": name, "index": i},
            Drop("truncated", f"array ends without ']' at byte {start}", "on_truncated"),
        )


# An object's possible end: a '}' followed by the ',' or ']' that ends an array element.
_OBJECT_END = re.compile(rb"\}[ \t\r\n]*[,\]]")
_TRIES = 12  # gallop steps: up to 4,095 possible ends inside one element
_NON_WS = re.compile(rb"[^ \t\r\n]")


def _whole_object(buf: bytes, elem: int) -> tuple[dict, int, int] | None:
    """If the element at `elem` is an object that orjson parses whole: (row, end of the object,
    position after its ',' or ']'). The end is one of the next possible ends in the block, found
    by galloping then bisecting over them: a slice ending too early fails as "unexpected end of
    data", one ending too late as "unexpected content after document", and a slice that parses
    is exactly the object (its closing brace is the matching one). So this finds what the scanner
    would; anything else (a bad element, one running past the block) is left to the scanner."""
    first = _NON_WS.search(buf, elem)
    if first is None or buf[first.start()] != _OPEN[0]:
        return None
    start = first.start()
    # Arrays of records mostly repeat their first key: a '}' followed by ',' and the next
    # element's opening `{"<that key>"` is the likeliest end, so it is tried first.
    key = _FIRST_KEY.match(buf, start)
    if key and (likely := _next_like(key.group(1)).search(buf, key.end())):
        try:
            return orjson.loads(buf[start : likely.start() + 1]), likely.start() + 1, likely.start(1)
        except orjson.JSONDecodeError:
            pass
    ends: list[re.Match] = []
    found = _OBJECT_END.finditer(buf, start)

    def attempt(k: int) -> dict | str:
        while len(ends) <= k:
            m = next(found, None)
            if m is None:
                return "short"  # past the block's last possible end
            ends.append(m)
        try:
            return orjson.loads(buf[start : ends[k].start() + 1])
        except orjson.JSONDecodeError as exc:
            return "long" if exc.msg.startswith("unexpected content after") else "short"

    lo, k = -1, 0  # every end at or before `lo` is too early
    for _ in range(_TRIES):
        got = attempt(k)
        if isinstance(got, dict):
            return got, ends[k].start() + 1, ends[k].end()
        if got == "long":
            break
        if k >= len(ends):
            return None
        lo, k = k, 2 * k + 1
    else:
        return None
    hi = k  # too late; bisect (lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        got = attempt(mid)
        if isinstance(got, dict):
            return got, ends[mid].start() + 1, ends[mid].end()
        if got == "long":
            hi = mid
        else:
            lo = mid
    return None


_FIRST_KEY = re.compile(rb'\{[ \t\r\n]*("[^"\\]{1,64}")[ \t\r\n]*:')


@functools.lru_cache(maxsize=16)
def _next_like(key: bytes) -> re.Pattern[bytes]:
    """A '}' then ',' then an object whose first key is `key`; group 1 starts right after the ','."""
    return re.compile(rb"\}[ \t\r\n]*,()[ \t\r\n]*\{[ \t\r\n]*" + re.escape(key) + rb"[ \t\r\n]*:")


_QUOTE, _COMMA = ord('"'), ord(",")
_OPEN, _CLOSE = (ord("{"), ord("[")), (ord("}"), ord("]"))


def _element(raw: bytes, offset: int, i: int, name: str, at: dict) -> tuple[dict, dict | Drop]:
    """Array element `i`, whose bytes `raw` start at file byte `offset`."""
    lead = len(raw) - len(raw.lstrip(_WS_B))
    at["record"], at["byte"] = i, offset + lead
    where = {"file": name, "index": i}
    if not raw.strip(_WS_B):
        return where, Drop("invalid_json", f"record {i} at byte {offset + lead} is empty")
    return where, _parse(raw.strip(_WS_B), at=f"record {i} at byte {offset + lead}: ")


def _parquet(path: Path, name: str, at: dict) -> Iterator[tuple[dict, dict | Drop]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise ReadError(f"{name}: not a readable Parquet file ({_problem(exc)})") from None
    i = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            at["record"] = i
            yield {"file": name, "index": i}, row
            i += 1


def _csv(path: Path, name: str, at: dict) -> Iterator[tuple[dict, dict | Drop]]:
    """CSV rows as dicts keyed by the header. A field may be any size; a row that does not parse,
    has more fields than the header or holds non-UTF-8 bytes is one drop; `line` is where the
    row starts (a quoted field may span lines)."""
    csv.field_size_limit(_FIELD_LIMIT)
    with _open_bytes(path) as raw:
        # surrogateescape keeps non-UTF-8 bytes as lone surrogates: the row that holds them is
        # dropped, not the whole file.
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text)
        header: list[str] | None = None
        start = 1
        while True:
            at["line"] = start
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                where = {"file": name, "line": start}
                start = reader.line_num + 1
                yield where, Drop("invalid_csv", str(exc))
                continue
            except _GZIP_DAMAGE as exc:
                if header is None:
                    raise
                yield {"file": name, "line": start}, _damage(exc, f"at line {start}")
                return
            where, start = {"file": name, "line": start}, reader.line_num + 1
            if not fields:  # a blank line
                continue
            try:
                "".join(fields).encode("utf-8")
            except UnicodeEncodeError as exc:
                if header is None:
                    raise ReadError(f"{name}: line 1: the header is not UTF-8") from None
                yield where, Drop("not_utf8", f"field text {exc.start}: bytes that are not UTF-8")
                continue
            if header is None:
                header = fields
            elif len(fields) > len(header):
                yield where, Drop("wrong_type", f"{len(fields) - len(header)} more fields than the header")
            else:  # missing trailing fields are None, as csv.DictReader gives them
                yield where, dict(itertools.zip_longest(header, fields[: len(header)]))


# csv's default field limit (131,072 characters) would fail a whole file on one long field; the
# clean stage's length rules are where long texts are judged.
_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)
