"""ingest: one source -> canonical records, with every input record accounted for."""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from sftpipe.accounting import Tally
from sftpipe.jsonio import JsonlWriter, atomic_path
from sftpipe.readers import Bad
from sftpipe.records import make_record
from sftpipe.schemas import CONVERTERS, Drop, detect, oasst
from sftpipe.sources import SourceSpec, rows


class IngestError(ValueError):
    """Bad input under `on_bad_record: error` (or `on_truncated: error`): one line, file and position."""


def _position(where: dict) -> str:
    pos = f"line {where['line']}" if "line" in where else f"record {where.get('index')}"
    return f"{where.get('file')}: {pos}"


class _Ingest:
    def __init__(self, name: str, spec: SourceSpec, out: JsonlWriter, tally: Tally):
        self.name, self.spec, self.out, self.tally = name, spec, out, tally
        self.format = spec.format
        self.ids: dict[str, int] = {}

    def bad(self, where: dict, reason: str, detail: str, row=None, switch: str = "on_bad_record") -> None:
        if getattr(self.spec, switch) == "error":
            raise IngestError(f"source {self.name}: {_position(where)}: {reason}: {detail}")
        self.tally.drop(reason, row, **where, detail=detail)

    def convert(self, row: dict) -> list[tuple]:
        if self.format == "oasst":
            return oasst.convert(row, mode=self.spec.mode, langs=self.spec.langs)
        return CONVERTERS[self.format](row)

    def unique_id(self, rec_id: str) -> str:
        # Repeated ids (exact copies hashed alike, or a source's own repeats) stay distinct and
        # stable by input order; the dedup stage decides which copy survives.
        n = self.ids.get(rec_id, 0) + 1
        self.ids[rec_id] = n
        return rec_id if n == 1 else f"{rec_id}~{n}"

    def row(self, where: dict, row: dict | Bad) -> None:
        self.tally.seen()
        if isinstance(row, Bad):
            return self.bad(where, row.reason, row.detail, switch=row.fatal_when)
        if self.format is None:
            self.format = detect(row)
            if self.format is None:
                return self.bad(where, "unknown_schema", f"no known schema has fields {sorted(row)[:8]}", row)
        try:
            converted = self.convert(row)
        except Drop as exc:
            return self.bad(where, exc.reason, exc.detail, row)
        self.tally.expand(len(converted) - 1)
        langs = self.spec.langs
        for orig_id, messages, meta in converted:
            if langs and isinstance(meta.get("lang"), str) and meta["lang"] not in langs:
                self.tally.drop("lang", {"messages": messages, "meta": meta}, **where)
                continue
            meta = {**meta, "format": self.format}
            if self.spec.license:
                meta["license"] = self.spec.license
            record = make_record(self.name, messages, meta, orig_id)
            record["id"] = self.unique_id(record["id"])
            self.out.write(record)
            self.tally.kept()


def ingest(name: str, spec: SourceSpec, out_dir: str | Path) -> Tally:
    """Write `records.jsonl` and `rejected.jsonl` for source `name` into `out_dir` (atomically)."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        with JsonlWriter(tmp / "records.jsonl") as out, JsonlWriter(tmp / "rejected.jsonl") as rejected:
            tally = Tally(rejected)
            job = _Ingest(name, spec, out, tally)
            progress = tqdm(desc=f"ingest {name}", unit=" rec", mininterval=1, disable=None)
            for where, row in rows(name, spec):
                if spec.max_samples is not None and tally.n_in >= spec.max_samples:
                    break
                job.row(where, row)
                progress.update()
            progress.close()
        if tally.n_in == 0:
            if spec.on_bad_record == "error":
                raise IngestError(f"source {name}: the input has no records (empty file?)")
            print(f"warning: source {name}: the input has no records", file=sys.stderr)
        tally.format = job.format  # type: ignore[attr-defined]
        tally.check()
    return tally
