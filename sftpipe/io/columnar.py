"""Parquet tables larger than memory: read the few small columns a decision needs, then write the
chosen rows, in the chosen order, without holding the heavy ones (text, tokens) all at once.

    ids = read_column(path, "id")
    rows = np.argsort(ids)                     # any order, repeats allowed
    write_rows(path, rows, "sorted.parquet")   # same bytes as pq.write_table(table.take(rows), ...)

`write_rows` is an external bucket sort: one pass over the input sends each wanted row to the
bucket of its output position (temporary Arrow IPC files), then each bucket is sorted in memory
and appended. Buckets hold whole row groups, so the file is what one `pq.write_table` would give.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sftpipe.core.hashing import hex_digest
from sftpipe.core.jsonio import scratch
from sftpipe.core.progress import bar

ROW_GROUP = 16384  # rows per Parquet row group of the split/mix outputs
BUCKET_BYTES = 1 << 30  # uncompressed bytes of rows held in memory at a time
BATCH = 8192  # rows per read batch


def batches(src: str | Path | pa.Table, columns: list[str]):
    """`columns` of a Parquet file batch by batch (or of a table in memory, in one go)."""
    if isinstance(src, pa.Table):
        yield src.select(columns)
        return
    yield from _batches(pq.ParquetFile(src), columns)


def _batches(pf: pq.ParquetFile, columns: list[str] | None = None):
    # one iter_batches per row group: a single one over the whole file keeps what it has read
    # (about its compressed size) until the file is closed (pyarrow 25)
    for rg in range(pf.metadata.num_row_groups):
        yield from pf.iter_batches(batch_size=BATCH, row_groups=[rg], columns=columns)


def num_rows(src: str | Path | pa.Table) -> int:
    return src.num_rows if isinstance(src, pa.Table) else pq.read_metadata(src).num_rows


def read_column(path: str | Path, name: str) -> list:
    """One (small) column as Python values."""
    return pq.read_table(path, columns=[name])[name].to_pylist()


def text_hashes(path: str | Path, column: str = "text") -> list[str]:
    """blake2b-96 hex digest of every value of a (large) string column, read batch by batch."""
    out: list[str] = []
    for batch in _batches(pq.ParquetFile(path), [column]):
        out.extend(hex_digest(t, size=12) for t in batch[column].to_pylist())
    return out


def _row_bytes(pf: pq.ParquetFile) -> float:
    meta = pf.metadata
    total = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return total / max(1, meta.num_rows)


def write_rows(
    src: str | Path,
    rows: np.ndarray,
    dest: str | Path,
    extra: dict[str, pa.Array] | None = None,
    desc: str = "write",
) -> None:
    """Write rows `rows` of Parquet file `src` (indices, any order, repeats allowed) to `dest` in
    that order, with `extra` columns (one value per written row) appended; zstd, row groups of
    ROW_GROUP rows, no schema metadata."""
    write_many(src, {dest: (rows, extra)}, desc)


def write_many(
    src: str | Path,
    outputs: dict[str | Path, tuple[np.ndarray, dict[str, pa.Array] | None]],
    desc: str = "write",
) -> None:
    """`write_rows` for several outputs (dest -> (rows, extra)) in one pass over `src`: each batch
    is read and decoded once, whatever the number of outputs. Outputs that fit the memory budget
    (BUCKET_BYTES in all) stay in memory; the others go through bucket files."""
    pf = pq.ParquetFile(src)
    schema = pf.schema_arrow.remove_metadata()
    row_bytes = max(1.0, _row_bytes(pf))
    budget: float = BUCKET_BYTES  # less the (fractional) bytes of each output kept in memory
    first = Path(next(iter(outputs)))
    with scratch(first.parent, "rows") as tmp:
        plans = []
        for k, (dest, (rows, extra)) in enumerate(outputs.items()):
            rows = np.asarray(rows, dtype=np.int64)
            per_bucket = max(1, int(BUCKET_BYTES / row_bytes) // ROW_GROUP) * ROW_GROUP
            in_memory = len(rows) * row_bytes <= budget
            if in_memory:
                budget -= len(rows) * row_bytes
                per_bucket = max(per_bucket, len(rows))
            plans.append(
                _Plan(Path(dest), rows, extra or {}, per_bucket, None if in_memory else Path(tmp) / str(k))
            )
        _bucket(pf, plans, desc)
        for plan in plans:
            out_schema = schema
            for name, values in plan.extra.items():
                out_schema = out_schema.append(pa.field(name, values.type))
            with pq.ParquetWriter(plan.dest, out_schema, compression="zstd") as writer:
                if not len(plan.rows):
                    writer.write_table(out_schema.empty_table())
                for b in range(-(-len(plan.rows) // plan.per_bucket)):
                    table = plan.load(b)
                    table = table.take(pc.sort_indices(table["__pos"])).drop_columns(["__pos"])
                    for name, values in plan.extra.items():
                        table = table.append_column(name, values.slice(b * plan.per_bucket, table.num_rows))
                    writer.write_table(table.replace_schema_metadata(None), row_group_size=ROW_GROUP)


class _Plan:
    """One output of `write_many`: its rows, and where the rows of each of its buckets wait: in
    memory, or (with a `spill` path prefix) in Arrow IPC files."""

    def __init__(self, dest: Path, rows: np.ndarray, extra: dict, per_bucket: int, spill: Path | None):
        self.dest, self.rows, self.extra, self.per_bucket, self.spill = dest, rows, extra, per_bucket, spill
        self.by_row = np.argsort(rows, kind="stable")  # output positions in input-row order
        self.sorted_rows = rows[self.by_row]
        self.held: dict[int, list[pa.RecordBatch]] = {}
        self.sinks: dict[int, pa.ipc.RecordBatchFileWriter] = {}

    def _file(self, b: int) -> str:
        return f"{self.spill}-{b}.arrow"

    def add(self, batch: pa.RecordBatch, offset: int) -> None:
        lo, hi = np.searchsorted(self.sorted_rows, [offset, offset + batch.num_rows])
        if hi == lo:
            return
        pos = self.by_row[lo:hi]
        taken = batch.take(pa.array(self.sorted_rows[lo:hi] - offset)).append_column("__pos", pa.array(pos))
        bucket = pos // self.per_bucket
        for b in np.unique(bucket).tolist():
            if self.spill is None:
                self.held.setdefault(b, []).append(taken)
                continue
            if b not in self.sinks:
                options = pa.ipc.IpcWriteOptions(compression="lz4")
                self.sinks[b] = pa.ipc.new_file(self._file(b), taken.schema, options=options)
            self.sinks[b].write_batch(taken.filter(pa.array(bucket == b)))

    def load(self, b: int) -> pa.Table:
        if self.spill is None:
            return pa.Table.from_batches(self.held.pop(b))
        with pa.OSFile(self._file(b)) as f:
            return pa.ipc.open_file(f).read_all()


def _bucket(pf: pq.ParquetFile, plans: list[_Plan], desc: str) -> None:
    """One pass over the input sending each wanted row of every output, with its output position
    `__pos`, to the bucket of that position."""
    offset = 0
    progress = bar(total=pf.metadata.num_rows, desc=desc, unit=" row")
    for batch in _batches(pf):
        for plan in plans:
            plan.add(batch, offset)
        offset += batch.num_rows
        progress.update(batch.num_rows)
    progress.close()
    for plan in plans:
        for sink in plan.sinks.values():
            sink.close()
