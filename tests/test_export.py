"""export: DatasetDict with stable bytes, every JSONL format, and sanity checks that can fail."""

import json

import pyarrow as pa
import pytest

from sftpipe.export import SanityError, jsonl_rows, sanity, save_hf, with_attention_mask
from sftpipe.split import overlap
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


def test_sanity_passes_on_good_data_and_fails_on_each_problem(gpt2):
    parts = parts_for(gpt2)
    checks = sanity(parts, gpt2, 64, 8, overlap(parts))
    assert checks["split_overlap"] == {"id": 0, "text": 0, "cluster": 0}
    assert checks["collated_batch"]["shape"][0] == 4
    with pytest.raises(SanityError, match="> max_length 3"):
        sanity(parts, gpt2, 3, 8, overlap(parts))
    leaky = {**parts, "test": parts["train"].slice(0, 1)}
    with pytest.raises(SanityError, match="shared between splits"):
        sanity(leaky, gpt2, 64, 8, overlap(leaky))
    bad = parts["train"].set_column(
        parts["train"].schema.get_field_index("text"), "text", pa.array(["x"] * 4)
    )
    with pytest.raises(SanityError, match="decoded tokens differ"):
        sanity({**parts, "train": bad}, gpt2, 64, 8, {"id": 0})
    empty = parts["val"].set_column(
        parts["val"].schema.get_field_index("completion"), "completion", pa.array([" "])
    )
    with pytest.raises(SanityError, match="empty completion"):
        sanity({**parts, "val": empty}, gpt2, 64, 8, {"id": 0})
