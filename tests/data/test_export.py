"""export: DatasetDict with stable bytes, every JSONL format, sanity checks that can fail, and
outputs that do not depend on the batch size they are streamed with."""

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sftpipe.data import export
from sftpipe.data.export import (
    SanityError,
    hf_table,
    jsonl_rows,
    length_stats,
    metadata,
    sanity,
    save_hf,
    survey,
    with_attention_mask,
    write_jsonl_formats,
    write_parquet,
)
from sftpipe.data.split import counts, overlap
from tests.conftest import format_table


@pytest.fixture
def gpt2(gpt2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    tok.pad_token = tok.eos_token
    return tok


def parts_for(tok, n=6):
    rows = [{"id": f"s/{i}", "source": "s"} for i in range(n)]
    t = format_table(rows, tok)
    t = t.append_column("copy", pa.array([0] * t.num_rows, pa.int32()))
    return {"train": t.slice(0, n - 2), "val": t.slice(n - 2, 1), "test": t.slice(n - 1, 1)}


def test_attention_mask_matches_lengths():
    t = with_attention_mask(format_table([{"id": "a", "source": "s"}]))
    assert t["attention_mask"].to_pylist() == [[1, 1, 1]]


def test_save_hf_is_loadable_and_byte_stable(tmp_path, gpt2):
    import datasets

    parts = parts_for(gpt2)
    save_hf(parts, tmp_path / "one")
    save_hf(parts, tmp_path / "two")
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert files and all(
        (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes() for f in files
    )
    dsd = datasets.load_from_disk(str(tmp_path / "one"))
    assert set(dsd) == {"train", "val", "test"} and dsd["train"].num_rows == 4
    row = dsd["train"][0]
    assert {"input_ids", "attention_mask", "labels", "id", "source", "text"} <= set(row)
    assert len(row["attention_mask"]) == len(row["input_ids"]) == len(row["labels"])
    assert gpt2.decode(row["input_ids"]) == row["text"]


def test_jsonl_formats():
    meta = {"alpaca_input": "2+2"}
    conv = [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Add.\n\n2+2"},
            {"role": "assistant", "content": "4"}]  # fmt: skip
    t = format_table([{"id": "s/1", "source": "s", "prompt": "P", "completion": "C", "meta": meta}])
    t = t.set_column(t.schema.get_field_index("messages"), "messages", pa.array([json.dumps(conv)]))
    assert list(jsonl_rows(t, "prompt_completion")) == [{"id": "s/1", "prompt": "P", "completion": "C"}]
    assert list(jsonl_rows(t, "text")) == [{"id": "s/1", "text": "PC"}]
    [sg] = jsonl_rows(t, "sharegpt")
    assert [c["from"] for c in sg["conversations"]] == ["system", "human", "gpt", "human", "gpt"]
    [al] = jsonl_rows(t, "alpaca")
    assert al == {"id": "s/1", "instruction": "Add.", "input": "2+2", "output": "4", "system": "Be exact.",
                  "history": [["Hi", "Hello"]]}  # fmt: skip
    assert next(jsonl_rows(t, "messages"))["messages"] == conv


def test_sharegpt_rows_carry_distill_scores():
    meta = {"avg_score": 8.2, "dimension_scores": {"accuracy": 9.0, "safety": 7.4}, "score": 8.2}
    t = format_table(
        [{"id": "distill/a/0", "source": "distill", "prompt": "P", "completion": "C", "meta": meta}]
    )
    [sg] = jsonl_rows(t, "sharegpt")
    assert (sg["avg_score"], sg["dimension_scores"]) == (8.2, {"accuracy": 9.0, "safety": 7.4})
    assert set(sg) == {"id", "conversations", "avg_score", "dimension_scores"}


def test_sanity_passes_on_good_data_and_fails_on_each_problem(gpt2):
    parts = parts_for(gpt2)
    checks = sanity(survey(parts, 8, 64), gpt2)
    assert checks["split_overlap"] == {"id": 0, "text": 0, "cluster": 0}
    assert checks["collated_batch"]["shape"][0] == 4
    assert checks["train"] == {
        "rows": 4,
        "decoded_ok": 4,
        "max_tokens": max(pc.list_value_length(parts["train"]["input_ids"]).to_pylist()),
    }
    # The problems are counted as format counts them, with the first failing row's id.
    with pytest.raises(SanityError, match=r"'over_max_length': 6\}.*'over_max_length': 's/0'"):
        sanity(survey(parts, 8, 3), gpt2)
    leaky = {**parts, "test": parts["train"].slice(0, 1)}
    with pytest.raises(SanityError, match="shared between splits"):
        sanity(survey(leaky, 8, 64), gpt2)

    def replaced(name, column, values):
        t = parts[name]
        return {**parts, name: t.set_column(t.schema.get_field_index(column), column, values)}

    with pytest.raises(SanityError, match=r"'decode_mismatch': 4\}.*'decode_mismatch': 's/0'"):
        sanity(survey(replaced("train", "text", pa.array(["x"] * 4)), 8, 64), gpt2)
    with pytest.raises(SanityError, match=r"'empty_completion': 1\}.*'empty_completion': 's/4'"):
        sanity(survey(replaced("val", "completion", pa.array([" "])), 8, 64), gpt2)
    with pytest.raises(SanityError, match=r"'empty_prompt': 1\}.*'empty_prompt': 's/5'"):
        sanity(survey(replaced("test", "prompt", pa.array(["\n"])), 8, 64), gpt2)
    # Past the decoded samples too: every row's labels are checked.
    labels = parts["train"]["labels"].to_pylist()
    labels[3] = [-100] * len(labels[3])
    with pytest.raises(SanityError, match=r"'nothing_trained': 1\}.*'nothing_trained': 's/3'"):
        sanity(survey(replaced("train", "labels", pa.array(labels, pa.list_(pa.int32()))), 2, 64), gpt2)
    labels[3] = labels[3][:-1]
    with pytest.raises(SanityError, match=r"'labels_length': 1, 'nothing_trained': 1\}"):
        sanity(survey(replaced("train", "labels", pa.array(labels, pa.list_(pa.int32()))), 2, 64), gpt2)


def test_a_text_record_needs_no_prompt(gpt2):
    rows = [{"id": f"t/{i}", "source": "t", "prompt": "", "completion": f"Text {i}", "meta": {"kind": "text"}}
            for i in range(6)]  # fmt: skip
    t = format_table(rows, gpt2)
    parts = {"train": t.slice(0, 4), "val": t.slice(4, 1), "test": t.slice(5, 1)}
    assert sanity(survey(parts, 8, 64), gpt2)["train"]["rows"] == 4


def test_survey_counts_overlap_as_split_does():
    rows = [{"id": f"s/{i}", "source": "s", "cluster": f"c{i // 2}"} for i in range(10)]
    t = format_table(rows)
    # train shares id s/0 (and its cluster, text) with test; val and test share cluster c3 only.
    parts = {
        "train": t.slice(0, 5),
        "val": t.slice(6, 1),
        "test": pa.concat_tables([t.slice(0, 1), t.slice(7, 3)]),
    }
    got = survey(parts, 2, 64, batch_size=2).overlap
    assert got == overlap(parts) == {"id": 1, "text": 1, "cluster": 2}


def test_outputs_do_not_depend_on_batch_size(tmp_path, gpt2, monkeypatch):
    """The streaming invariant: batch size 3 writes the same bytes as the default, and both hold exactly
    what the whole tables hold."""
    import datasets

    monkeypatch.setattr(export, "HF_WRITE_ROWS", 4)  # several record batches and shards, even on 13 rows
    monkeypatch.setattr(export, "HF_SHARD_ROWS", 8)
    parts = parts_for(gpt2, n=15)
    (tmp_path / "mix").mkdir()
    files = {name: tmp_path / "mix" / f"{name}.parquet" for name in parts}
    for name, table in parts.items():  # as mix writes them, but with row groups of 5 rows
        pq.write_table(table, files[name], compression="zstd", row_group_size=5)
    formats = ["prompt_completion", "text", "sharegpt", "alpaca", "messages"]
    results = {}
    for size in (3, export.BATCH_ROWS):
        out = tmp_path / f"out{size}"
        facts = survey(files, 5, 64, size)
        save_hf(files, out / "hf", size)
        write_jsonl_formats(files, formats, out / "jsonl", size)
        write_parquet(files, out / "parquet")
        files_bytes = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
        meta = metadata({"seed": 1}, ["s"], facts, tmp_path / "no-reports")
        results[size] = (files_bytes, sanity(facts, gpt2), meta)
    assert results[3] == results[export.BATCH_ROWS]

    out = tmp_path / "out3"
    assert len(list((out / "hf" / "train").glob("data-*-of-00002.arrow"))) == 2
    dsd = datasets.load_from_disk(str(out / "hf"))
    for name, table in parts.items():
        want = datasets.Dataset(hf_table(table, list(dsd[name].column_names))).to_list()
        assert dsd[name].to_list() == want
        assert pq.read_table(out / "parquet" / f"{name}.parquet").equals(table)
        for fmt in formats:
            lines = (out / "jsonl" / fmt / f"{name}.jsonl").read_text().splitlines()
            assert [json.loads(x) for x in lines] == list(jsonl_rows(table, fmt))
    _, checks, meta = results[3]
    assert checks["train"] == {"rows": 13, "decoded_ok": 5, "max_tokens": meta["tokens"]["train"]["max"]}
    assert meta["splits"] == counts(parts)
    lengths = pc.list_value_length(parts["train"]["input_ids"]).to_pylist()
    assert meta["tokens"]["train"] == length_stats(lengths)
    assert meta["tokens"]["train"]["total"] == sum(lengths)


def test_empty_split_saves_and_loads(tmp_path, gpt2):
    import datasets

    parts = parts_for(gpt2)
    save_hf({**parts, "val": parts["val"].slice(0, 0)}, tmp_path / "hf")
    dsd = datasets.load_from_disk(str(tmp_path / "hf"))
    assert dsd["val"].num_rows == 0 and dsd["val"].features == dsd["train"].features
