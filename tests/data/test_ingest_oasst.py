"""OASST1 as the hub ships it: flat message rows, rebuilt into trees whatever their order."""

import random

import orjson
import pytest

from sftpipe.core.jsonio import read_jsonl
from sftpipe.data.ingest import IngestError, ingest
from sftpipe.io.schemas import detect
from sftpipe.io.sources import SourceSpec


def _row(mid, parent, tree="t", role="prompter", text="x", **kw):
    return {"message_id": mid, "parent_id": parent, "message_tree_id": tree, "role": role, "text": text,
            "lang": "en", "deleted": False, "review_result": True, "rank": None, **kw}  # fmt: skip


def _write(path, rows):
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("mode", "n_out", "fmt"), [("best", 100, None), ("all", 564, None), ("best", 100, "oasst")]
)
def test_flat_rows_equal_the_trees(corpora, tmp_path, mode, n_out, fmt):
    spec = SourceSpec(path=str(corpora / "oasst1_en_100_flat.jsonl"), mode=mode, format=fmt)
    flat = ingest("o", spec, tmp_path / "f")
    tree = ingest("o", SourceSpec(path=str(corpora / "oasst1_en_100_tree.jsonl"), mode=mode), tmp_path / "t")
    assert (flat.format, flat.n_in, flat.n_out) == ("oasst", 1167, n_out)
    assert sum(flat.dropped.values()) == 1167 - n_out and set(flat.dropped) <= {
        "oasst.context",
        "oasst.not_selected",
    }
    got = (tmp_path / "f" / "records.jsonl").read_bytes()
    assert got == (tmp_path / "t" / "records.jsonl").read_bytes()  # same trees, paths, langs, order
    recs = list(read_jsonl(tmp_path / "f" / "records.jsonl"))
    assert len({r["meta"]["tree_id"] for r in recs}) == 100 and tree.n_out == n_out
    assert {r["meta"]["lang"] for r in recs} == {"en"}


def test_shuffled_shards_give_the_same_conversations(corpora, tmp_path):
    lines = (corpora / "oasst1_en_100_flat.jsonl").read_bytes().splitlines(keepends=True)
    random.Random(0).shuffle(lines)
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(3):
        (shards / f"part-{k}.jsonl").write_bytes(b"".join(lines[k::3]))
    ingest("o", SourceSpec(path=str(shards), mode="all"), tmp_path / "s")
    ingest("o", SourceSpec(path=str(corpora / "oasst1_en_100_tree.jsonl"), mode="all"), tmp_path / "t")
    by_id = lambda p: {r["id"]: r for r in read_jsonl(p / "records.jsonl")}  # noqa: E731
    assert by_id(tmp_path / "s") == by_id(tmp_path / "t")


def test_detected_without_format():
    assert detect(_row("a", None)) == "oasst"


def test_filters_orphans_cycles_accounted(tmp_path):
    rows = [
        _row("a2", "q", role="assistant", text="A2", rank=1),
        _row("q", None, text="Q"),
        _row("a1", "q", role="assistant", text="A1", rank=0),
        _row("a3", "q", role="assistant", deleted=True),
        _row("f", "a1", text="follow-up", review_result=False),
        _row("f2", "f", role="assistant"),  # under a failed review
        _row("de", "a1", lang="de"),
        _row("o", "missing"),  # orphan
        _row("c1", "c2"), _row("c2", "c1"),  # a cycle
        _row("q", None),  # the same id again
        _row("lonely", None, tree="u"),  # a question nobody answered
    ]  # fmt: skip
    src = _write(tmp_path / "flat.jsonl", rows)
    tally = ingest("o", SourceSpec(path=str(src), lang="en"), tmp_path / "o")
    assert (tally.n_in, tally.n_out) == (12, 1)
    assert dict(tally.dropped) == {
        "oasst.context": 1, "oasst.not_selected": 1, "deleted": 1, "failed_review": 1, "below_dropped": 1,
        "lang": 1, "orphan": 1, "cycle": 2, "duplicate_message": 1, "no_assistant_reply": 1,
    }  # fmt: skip
    [rec] = read_jsonl(tmp_path / "o" / "records.jsonl")
    assert rec["id"] == "o/a1" and [m["content"] for m in rec["messages"]] == ["Q", "A1"]
    rejected = {r["record"]["message_id"]: r["reason"] for r in read_jsonl(tmp_path / "o" / "rejected.jsonl")}
    assert rejected["o"] == "orphan" and rejected["a2"] == "oasst.not_selected"
    assert not (tmp_path / "o" / "oasst_rows.sqlite").exists()
    with pytest.raises(IngestError, match="orphan"):
        ingest("o", SourceSpec(path=str(src), on_bad_record="error"), tmp_path / "e")


@pytest.mark.parametrize("mode", ["best", "all"])
def test_max_samples_counts_conversations_of_flat_rows(corpora, tmp_path, mode):
    """max_samples: 10 on flat rows gives 10 conversations (it once gave the 10 first messages'
    worth: a tree or two), the first 10 of the whole source's, with every row taken accounted."""
    flat = str(corpora / "oasst1_en_100_flat.jsonl")
    tally = ingest("o", SourceSpec(path=flat, mode=mode, max_samples=10), tmp_path / "ten")
    ingest("o", SourceSpec(path=flat, mode=mode), tmp_path / "all")
    got = list(read_jsonl(tmp_path / "ten" / "records.jsonl"))
    assert got == list(read_jsonl(tmp_path / "all" / "records.jsonl"))[:10]
    assert tally.n_out == 10 and tally.n_in == tally.n_out + sum(tally.dropped.values())
    if mode == "best":  # one conversation a tree: the same records as the first 10 trees
        tree = str(corpora / "oasst1_en_100_tree.jsonl")
        ingest("o", SourceSpec(path=tree, mode=mode, max_samples=10), tmp_path / "trees")
        assert (tmp_path / "ten" / "records.jsonl").read_bytes() == (
            tmp_path / "trees" / "records.jsonl"
        ).read_bytes()


def test_max_samples_cuts_inside_a_tree_and_counts_it(tmp_path):
    rows = [_row("r", None), _row("a1", "r", role="assistant"), _row("a2", "r", role="assistant"),
            _row("a3", "r", role="assistant"), _row("s", None, tree="u"), _row("b", "s", tree="u", role="assistant")]  # fmt: skip
    src = _write(tmp_path / "flat.jsonl", rows[::-1])  # any order: tree u's rows come first
    tally = ingest("o", SourceSpec(path=str(src), mode="all", max_samples=2), tmp_path / "out")
    ids = [r["id"] for r in read_jsonl(tmp_path / "out" / "records.jsonl")]
    assert ids == ["o/b", "o/a3"]  # tree u first (its first row came first), then t's first path
    assert dict(tally.dropped) == {"oasst.context": 2, "max_samples": 2}
    assert (tally.n_in, tally.n_out) == (6, 2)
    rejected = [r["reason"] for r in read_jsonl(tmp_path / "out" / "rejected.jsonl")]
    assert sorted(rejected) == ["max_samples", "max_samples", "oasst.context", "oasst.context"]
