"""split: whole clusters per split, stratified by source, stable, and zero overlap."""

import pyarrow.parquet as pq
import pytest

from sftpipe.core.config import ParamsError, validate
from sftpipe.data.split import SplitParams, assign, groups, overlap, split
from tests.conftest import format_table


def test_groups_join_clusters_and_identical_texts():
    ids = ["a", "b", "c", "d", "e"]
    clusters = ["x", "x", "y", "z", "w"]
    texts = ["t1", "t2", "t3", "t3", "t5"]
    assert groups(ids, clusters, texts) == [0, 0, 2, 2, 4]


def test_clusters_never_straddle_splits_and_shares_per_source():
    rows = [{"id": f"a/{i}", "source": "a", "cluster": f"a{i // 4}"} for i in range(400)]
    rows += [{"id": f"b/{i}", "source": "b"} for i in range(100)]
    table = format_table(rows)
    names = assign(table, SplitParams(val=0.1, test=0.2), seed=1)
    by_cluster = {}
    for cluster, name in zip(table["cluster"].to_pylist(), names, strict=True):
        by_cluster.setdefault(cluster, set()).add(name)
    assert all(len(s) == 1 for s in by_cluster.values())
    b = [n for n, s in zip(names, table["source"].to_pylist(), strict=True) if s == "b"]
    assert (b.count("test"), b.count("val"), b.count("train")) == (20, 10, 70)
    a = [n for n, s in zip(names, table["source"].to_pylist(), strict=True) if s == "a"]
    assert (a.count("test"), a.count("val")) == (80, 40)  # clusters of 4 fill the quotas exactly


def test_deterministic_and_stable_when_a_source_is_added():
    base = [{"id": f"a/{i}", "source": "a"} for i in range(200)]
    one = assign(format_table(base), SplitParams(), seed=7)
    assert one == assign(format_table(base), SplitParams(), seed=7)
    more = assign(
        format_table(base + [{"id": f"b/{i}", "source": "b"} for i in range(50)]), SplitParams(), seed=7
    )
    assert more[:200] == one
    assert assign(format_table(base), SplitParams(), seed=8) != one


def test_split_writes_sorted_parts_without_overlap(tmp_path):
    table = format_table([{"id": f"s/{i:03d}", "source": "s"} for i in range(100)])
    pq.write_table(table, tmp_path / "data.parquet")
    rows, parts = split(tmp_path / "data.parquet", SplitParams(val=0.1, test=0.1), seed=3)
    assert {n: len(r) for n, r in rows.items()} == {"train": 80, "val": 10, "test": 10}
    ids = table["id"].to_pylist()
    for name, r in rows.items():
        assert [ids[i] for i in r] == sorted(ids[i] for i in r) == parts[name]["id"]
    assert sorted(i for r in rows.values() for i in r.tolist()) == list(range(100))
    assert overlap(parts) == {"id": 0, "text": 0, "cluster": 0}


def test_a_text_in_two_splits_is_leakage(tmp_path):
    parts = {"train": {"id": ["a"], "text": ["h1"], "cluster": ["a"]},
             "test": {"id": ["b"], "text": ["h1"], "cluster": ["b"]}}  # fmt: skip
    assert overlap(parts) == {"id": 0, "text": 1, "cluster": 0}


def test_identical_texts_are_kept_together_even_without_dedup():
    rows = [{"id": f"s/{i}", "source": "s", "text": f"same {i % 10}"} for i in range(100)]
    names = assign(format_table(rows), SplitParams(val=0.2, test=0.2), seed=0)
    for k in range(10):
        assert len({names[i] for i in range(100) if i % 10 == k}) == 1


def test_bad_shares_fail_with_the_key():
    with pytest.raises(ParamsError, match="split: .*val \\+ test"):
        validate(SplitParams, {"val": 0.6, "test": 0.5}, "split")
