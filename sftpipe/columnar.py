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

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

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
    out = []
    for batch in _batches(pq.ParquetFile(path), [column]):
        out.extend(hashlib.blake2b(t.encode(), digest_size=12).hexdigest() for t in batch[column].to_pylist())
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
    pf = pq.ParquetFile(src)
    rows = np.asarray(rows, dtype=np.int64)
    extra = extra or {}
    schema = pf.schema_arrow.remove_metadata()
    for name, values in extra.items():
        schema = schema.append(pa.field(name, values.type))
    per_bucket = max(1, int(BUCKET_BYTES / max(1.0, _row_bytes(pf))) // ROW_GROUP) * ROW_GROUP
    n_buckets = max(1, -(-len(rows) // per_bucket))
    with tempfile.TemporaryDirectory(prefix=".rows-", dir=Path(dest).parent) as tmp:
        buckets = _bucket(pf, rows, per_bucket, Path(tmp), desc)
        with pq.ParquetWriter(dest, schema, compression="zstd") as writer:
            if not len(rows):
                writer.write_table(schema.empty_table())
            for b in range(n_buckets if len(rows) else 0):
                table = buckets(b)
                table = table.take(pc.sort_indices(table["__pos"])).drop_columns(["__pos"])
                for name, values in extra.items():
                    table = table.append_column(name, values.slice(b * per_bucket, table.num_rows))
                writer.write_table(table.replace_schema_metadata(None), row_group_size=ROW_GROUP)


def _bucket(pf: pq.ParquetFile, rows: np.ndarray, per_bucket: int, tmp: Path, desc: str):
    """One pass over the input sending each wanted row, with its output position `__pos`, to the
    bucket of that position; returns bucket number -> its rows (unsorted). A single bucket stays
    in memory; more go through Arrow IPC files in `tmp`."""
    by_row = np.argsort(rows, kind="stable")  # output positions in input-row order
    sorted_rows = rows[by_row]
    in_memory = len(rows) <= per_bucket
    held: dict[int, list[pa.RecordBatch]] = {}
    sinks: dict[int, pa.ipc.RecordBatchFileWriter] = {}
    options = pa.ipc.IpcWriteOptions(compression="lz4")
    offset = 0
    progress = tqdm(total=pf.metadata.num_rows, desc=desc, unit=" row", disable=None)
    for batch in _batches(pf):
        lo, hi = np.searchsorted(sorted_rows, [offset, offset + batch.num_rows])
        if hi > lo:
            pos = by_row[lo:hi]
            taken = batch.take(pa.array(sorted_rows[lo:hi] - offset)).append_column("__pos", pa.array(pos))
            bucket = pos // per_bucket
            for b in np.unique(bucket).tolist():
                part = taken if in_memory else taken.filter(pa.array(bucket == b))
                if in_memory:
                    held.setdefault(b, []).append(part)
                    continue
                if b not in sinks:
                    sinks[b] = pa.ipc.new_file(tmp / f"{b}.arrow", part.schema, options=options)
                sinks[b].write_batch(part)
        offset += batch.num_rows
        progress.update(batch.num_rows)
    progress.close()
    for sink in sinks.values():
        sink.close()

    def load(b: int) -> pa.Table:
        if in_memory:
            return pa.Table.from_batches(held.pop(b))
        with pa.OSFile(str(tmp / f"{b}.arrow")) as f:
            return pa.ipc.open_file(f).read_all()

    return load
