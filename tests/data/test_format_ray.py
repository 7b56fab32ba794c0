"""The format stage on Ray Data: the same bytes as one local process (Ray starts once per session)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

import sftpipe.data.format.formatter as fmt
from sftpipe.data.format.formatter import format_file
from tests.data.test_format import MIX, MIX_PARAMS, outputs, real_mix


@pytest.mark.slow
def test_ray_writes_what_a_local_process_writes(tmp_path, corpora, gpt2_dir, monkeypatch, ray_engine):
    """Real data in 9 parts of 256 lines on two Ray actors: the Parquet file, the rejected records
    and the report are byte-identical to one local process's."""
    monkeypatch.setattr(fmt, "CHUNK", 256)  # reaches the actors through format_file's arguments
    src = real_mix(tmp_path, corpora)
    got = {}
    for engine, workers in (("local", 1), ("ray", 2)):
        out = tmp_path / engine
        tally, extra = format_file(src, gpt2_dir, MIX_PARAMS, out, engine=engine, workers=workers)
        got[engine] = outputs(out, tally, extra)
        assert (tally.n_in, tally.n_out, dict(tally.dropped), dict(tally.changed)) == MIX
        assert pq.ParquetFile(out / "data.parquet").num_row_groups == 9
    assert got["local"] == got["ray"]
