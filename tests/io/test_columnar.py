"""sftpipe.io.columnar: rows written in any order, through any number of buckets, are the bytes one
in-memory `pq.write_table` of the same rows gives."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftpipe.data.split import _hash
from sftpipe.io import columnar
from sftpipe.io.columnar import ROW_GROUP, read_column, text_hashes, write_many, write_rows


@pytest.fixture
def table_file(tmp_path):
    n = 3 * ROW_GROUP + 123
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "id": [f"s/{i:06d}" for i in range(n)],
            "text": ["x" * int(k) + str(i) for i, k in enumerate(rng.integers(0, 50, n))],
            "input_ids": pa.array(
                [list(range(int(k))) for k in rng.integers(0, 20, n)], pa.list_(pa.int32())
            ),
        }
    )
    path = tmp_path / "in.parquet"
    pq.write_table(table, path, row_group_size=1000)  # input row groups unlike the output's
    return path, pq.read_table(path)  # as read back (list items are named "element")


def expected(table: pa.Table, rows, extra=None) -> pa.Table:
    out = table.take(pa.array(rows, pa.int64()))
    for name, values in (extra or {}).items():
        out = out.append_column(name, values)
    return out


@pytest.mark.parametrize(
    "bucket_bytes", [columnar.BUCKET_BYTES, 1]
)  # one bucket in memory; one per row group
def test_rows_in_any_order_with_repeats_match_an_in_memory_write(
    tmp_path, table_file, bucket_bytes, monkeypatch
):
    monkeypatch.setattr(columnar, "BUCKET_BYTES", bucket_bytes)
    path, table = table_file
    rng = np.random.default_rng(1)
    rows = np.concatenate([rng.permutation(table.num_rows), rng.integers(0, table.num_rows, 5000)])
    copy = pa.array(np.arange(len(rows)) % 3, pa.int32())
    write_rows(path, rows, tmp_path / "out.parquet", extra={"copy": copy})
    pq.write_table(expected(table, rows, {"copy": copy}), tmp_path / "want.parquet", compression="zstd",
                   row_group_size=ROW_GROUP)  # fmt: skip
    assert (tmp_path / "out.parquet").read_bytes() == (tmp_path / "want.parquet").read_bytes()
    assert pq.ParquetFile(tmp_path / "out.parquet").metadata.num_row_groups == -(-len(rows) // ROW_GROUP)


@pytest.mark.parametrize("bucket_bytes", [columnar.BUCKET_BYTES, 40_000, 1])  # all, some, none in memory
def test_several_outputs_in_one_pass_match_in_memory_writes(tmp_path, table_file, bucket_bytes, monkeypatch):
    """A split's three outputs (a big one, two small ones, disjoint, in any order) from one pass."""
    monkeypatch.setattr(columnar, "BUCKET_BYTES", bucket_bytes)
    path, table = table_file
    order = np.random.default_rng(2).permutation(table.num_rows)
    rows = {"train": order[:-400], "val": order[-400:-150], "test": order[-150:]}
    write_many(path, {tmp_path / f"{name}.parquet": (r, None) for name, r in rows.items()})
    for name, r in rows.items():
        pq.write_table(
            expected(table, r), tmp_path / "want.parquet", compression="zstd", row_group_size=ROW_GROUP
        )
        assert (tmp_path / f"{name}.parquet").read_bytes() == (tmp_path / "want.parquet").read_bytes(), name


def test_no_rows_write_an_empty_file_with_the_schema(tmp_path, table_file):
    path, table = table_file
    write_rows(
        path, np.zeros(0, np.int64), tmp_path / "out.parquet", extra={"copy": pa.array([], pa.int32())}
    )
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.num_rows == 0 and out.column_names == ["id", "text", "input_ids", "copy"]


def test_columns_and_text_hashes_read_without_the_heavy_columns(table_file):
    path, table = table_file
    assert read_column(path, "id") == table["id"].to_pylist()
    assert text_hashes(path) == [_hash(t) for t in table["text"].to_pylist()]
