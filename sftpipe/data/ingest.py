"""ingest: one source -> canonical records, with every input record accounted for."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Literal, TypeAlias

from sftpipe.core.accounting import Tally
from sftpipe.core.engine import Engine, Part, ordered_map, split_lines
from sftpipe.core.errors import SftpipeError
from sftpipe.core.jsonio import JsonlWriter, atomic_path
from sftpipe.core.progress import bar
from sftpipe.core.records import Message, Record, make_record
from sftpipe.io.readers import files_in, jsonl_row
from sftpipe.io.schemas import CONVERTERS, Drop, detect, oasst, reasoning
from sftpipe.io.sources import SourceSpec, rows

LINES_PER_PART = 2048


class IngestError(SftpipeError, ValueError):
    """Drop input under `on_bad_record: error` (or `on_truncated: error`): one line, file and position."""


def _position(where: dict) -> str:
    pos = f"line {where['line']}" if "line" in where else f"record {where.get('index')}"
    return f"{where.get('file')}: {pos}"


_Item: TypeAlias = tuple[Literal["lang"], list[Message], dict] | tuple[Literal["rec"], Record]
"""One converted conversation: dropped by the lang filter (with its messages and meta), or a record."""


class _Convert:
    """Raw row -> outcome, with no state shared between rows, so it can run on any worker:
    ("drop", where, Drop, row) or ("ok", where, n_converted, items), each item ("lang", messages,
    meta) for a record the lang filter drops, or ("rec", record)."""

    def __init__(self, name: str, spec: SourceSpec, fmt: str | None):
        self.name, self.spec, self.format = name, spec, fmt

    def __call__(self, where: dict, row: dict | Drop) -> tuple:
        if isinstance(row, Drop):
            return "drop", where, row, None
        if self.format is None:  # `_Ingest.row` detects the schema of any row that is not a Drop
            raise ValueError("_Convert: a row to convert, but no schema")
        try:
            if self.format == "oasst":
                if oasst.is_flat(row):  # one message of a tree: the driver gathers the tree
                    return "flat", where, row
                converted = oasst.convert(row, mode=self.spec.mode, langs=self.spec.langs)
            else:
                converted = CONVERTERS[self.format](row)
        except Drop as drop:
            return "drop", where, drop, row
        return self.records(where, converted)

    def records(self, where: dict, converted: list) -> tuple:
        langs = self.spec.langs
        items: list[_Item] = []
        changes: Counter[str] = Counter()
        for orig_id, messages, meta, *tools in converted:
            if langs and isinstance(meta.get("lang"), str) and meta["lang"] not in langs:
                items.append(("lang", messages, meta))
                continue
            messages = reasoning.apply(messages, self.spec.reasoning, changes)
            meta = {**meta, "format": self.format}
            if self.spec.license:
                meta["license"] = self.spec.license
            items.append(
                ("rec", make_record(self.name, messages, meta, orig_id, tools[0] if tools else None))
            )
        return "ok", where, len(converted), items, changes


def _convert_part(convert: _Convert, part: Part) -> list[tuple]:
    return [convert(*jsonl_row(part.path, lineno, line)) for lineno, line in part.lines()]


class _Ingest:
    """The sequential half: accounting, unique ids and writing, in input order."""

    def __init__(self, name: str, spec: SourceSpec, out: JsonlWriter, tally: Tally, scratch: Path):
        self.name, self.spec, self.out, self.tally, self.scratch = name, spec, out, tally, scratch
        self.format: str | None = spec.format
        self.ids: dict[str, int] = {}  # id -> the last suffix given to a repeat of it
        self.taken: set[str] = set()
        self._convert: _Convert | None = None
        self.trees: oasst.Trees | None = None  # OASST flat rows, gathered until the input ends

    def bad(self, where: dict, drop: Drop, row=None) -> None:
        if getattr(self.spec, drop.fatal_when) == "error":
            raise IngestError(f"source {self.name}: {_position(where)}: {drop.reason}: {drop.detail}")
        self.tally.drop(drop.reason, row, **where, detail=drop.detail)

    def unique_id(self, rec_id: str) -> str:
        # Repeated ids (exact copies hashed alike, or a source's own repeats) stay distinct and
        # stable by input order; the dedup stage decides which copy survives.
        # A suffixed id may itself be a source's id (x, x~2, x): skip suffixes already taken.
        if rec_id not in self.taken:
            self.taken.add(rec_id)
            return rec_id
        n = self.ids.get(rec_id, 1) + 1
        while f"{rec_id}~{n}" in self.taken:
            n += 1
        self.ids[rec_id] = n
        self.taken.add(f"{rec_id}~{n}")
        return f"{rec_id}~{n}"

    def row(self, where: dict, row: dict | Drop) -> None:
        """Detect the schema on the first good row, then convert and apply."""
        if self.format is None and not isinstance(row, Drop):
            self.format = detect(row)
            if self.format is None:
                self.tally.seen()
                return self.bad(
                    where, Drop("unknown_schema", f"no known schema has fields {sorted(row)[:8]}"), row
                )
        if self._convert is None or self._convert.format != self.format:
            self._convert = _Convert(self.name, self.spec, self.format)
        self.apply(self._convert(where, row))

    def apply(self, outcome: tuple) -> None:
        """Account for one outcome of `_Convert` (or a raw ("row", where, row) to convert here)."""
        if outcome[0] == "row":
            return self.row(*outcome[1:])
        if outcome[0] == "flat":
            if self.trees is None:
                self.trees = oasst.Trees(self.scratch)
            return self.trees.add(*outcome[1:])
        self.tally.seen()
        if outcome[0] == "drop":
            return self.bad(*outcome[1:])
        _, where, n, items, changes = outcome
        self.tally.expand(n - 1)
        self.write(where, items, changes)

    def write(self, where: dict, items: list, changes: Counter) -> None:
        for rule, count in changes.items():
            self.tally.change(rule, count)
        for kind, *item in items:
            if kind == "lang":
                messages, meta = item
                self.tally.drop("lang", {"messages": messages, "meta": meta}, **where)
                continue
            record = item[0]
            record["id"] = self.unique_id(record["id"])
            self.out.write(record)
            self.tally.kept()

    # Reasons a flat OASST row is dropped that are bad input (`on_bad_record: error` stops on them);
    # the rest are the tree's own filtering and selection.
    BAD_FLAT = frozenset({"bad_message", "duplicate_message", "orphan", "cycle"})

    def finish_trees(self, limit: int | None = None) -> None:
        """Rebuild the gathered OASST trees; every row is kept (a conversation ends on it) or dropped.

        With a `limit`, trees are taken in the order their first row came until they have given
        that many conversations; the rest are not taken, as rows past `max_samples` in any other
        source (a conversation of the last tree past the limit is dropped as `max_samples`)."""
        if self.trees is None:
            return
        convert = _Convert(self.name, self.spec, "oasst")
        for tree in self.trees:
            if limit is not None and limit <= 0:
                break
            rows = [row for _, row in tree]
            converted, fate = oasst.resolve(rows, self.spec.mode, self.spec.langs)
            if limit is not None:
                for cut in converted[limit:]:
                    self.tally.seen()
                    self.tally.drop("max_samples", {"messages": cut[1], "meta": cut[2]}, **tree[0][0])
                converted = converted[:limit]
                limit -= len(converted)
            for k, (where, row) in enumerate(tree):
                if k in fate:
                    self.tally.seen()
                    if fate[k] in self.BAD_FLAT:
                        self.bad(where, Drop(fate[k], f"message {row.get('message_id')!r}"), row)
                    else:
                        self.tally.drop(fate[k], row, **where)
            if converted:  # a conversation stands for the row it ends on: one input each
                self.tally.seen(len(converted))
                _, where, _, items, changes = convert.records(tree[0][0], converted)
                self.write(where, items, changes)
        self.trees.close()


def _line_files(spec: SourceSpec, engine: Engine) -> list[str] | None:
    """The source's files when all are plain JSONL that workers can cut into parts, else None.
    A URL is read by the workers themselves only on Ray: locally it is downloaded once."""
    if spec.path:
        files = files_in(spec.path)
        plain = all(str(f).lower().endswith(".jsonl") for f in files)
        return [str(f) for f in files] if plain else None
    if spec.url and engine == "ray" and spec.url.split("?", 1)[0].lower().endswith(".jsonl"):
        return [spec.url]
    return None


def _first_format(files: list[str]) -> str | None:
    """The schema of the first line when it is a row of a known schema (the parallel path needs
    the schema before any worker starts; anything less clear takes the sequential path)."""
    if not files:
        return None
    import fsspec

    with fsspec.open(files[0], "rb") as fh:  # only the first line: no pass over the whole file
        line = fh.readline()
    if not line.strip():
        return None
    _, row = jsonl_row(files[0], 1, line)
    return None if isinstance(row, Drop) else detect(row)


def _outcomes(name: str, spec: SourceSpec, job: _Ingest, engine: Engine, workers: int):
    """Outcomes in input order: converted on workers when the source is plain JSONL of a known
    schema, else raw rows for `job` to convert here."""
    files = _line_files(spec, engine) if engine == "ray" or workers > 1 else None
    fmt = spec.format or (_first_format(files) if files else None)
    if files is None or fmt is None:
        for where, row in rows(name, spec):
            yield "row", where, row
        return
    job.format = fmt
    parts = [p for f in files for p in split_lines(f, LINES_PER_PART)]
    setup_args = (name, spec, fmt)
    for outcomes in ordered_map(
        _convert_part, parts, setup=_Convert, setup_args=setup_args, engine=engine, workers=workers
    ):
        yield from outcomes


def ingest(
    name: str, spec: SourceSpec, out_dir: str | Path, engine: Engine = "local", workers: int = 1
) -> Tally:
    """Write `records.jsonl` and `rejected.jsonl` for source `name` into `out_dir` (atomically).

    Plain JSONL is converted on `workers` processes (or Ray); the output is the same either way."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        with JsonlWriter(tmp / "records.jsonl") as out, JsonlWriter(tmp / "rejected.jsonl") as rejected:
            tally = Tally(rejected)
            job = _Ingest(name, spec, out, tally, scratch=tmp)
            progress = bar(desc=f"ingest {name}", unit=" rec", mininterval=1)
            for outcome in _outcomes(name, spec, job, engine, workers):
                # OASST flat rows are one message each: max_samples counts the conversations their
                # trees give (finish_trees), and a tree's rows may come anywhere, so all are read.
                if spec.max_samples is not None and tally.n_in >= spec.max_samples:
                    break
                job.apply(outcome)
                progress.update()
            job.finish_trees(None if spec.max_samples is None else spec.max_samples - tally.n_in)
            progress.close()
        if tally.n_in == 0:
            if spec.on_bad_record == "error":
                raise IngestError(f"source {name}: the input has no records (empty file?)")
            print(f"warning: source {name}: the input has no records", file=sys.stderr)
        elif tally.n_out == 0:
            reasons = ", ".join(f"{n} {r}" for r, n in tally.dropped.most_common(3))
            where = spec.path or spec.url or spec.hub or f"{spec.package}:{spec.file}"
            msg = f"source {name}: {where}: 0 of {tally.n_in} records kept ({reasons}; see rejected.jsonl)"
            if spec.on_empty == "error":
                raise IngestError(f"{msg}; set sources.{name}.on_empty: warn to accept that")
            print(f"warning: {msg}", file=sys.stderr)
        tally.format = job.format  # type: ignore[attr-defined]
        tally.check()
    return tally
