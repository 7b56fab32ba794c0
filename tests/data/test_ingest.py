"""ingest on tiny fixtures (every kind of bad input) and on the real corpora."""

import gzip
import json

import pytest

from sftpipe.core.jsonio import read_jsonl
from sftpipe.data.ingest import IngestError, ingest
from sftpipe.io.sources import SourceError, SourceSpec
from tests.conftest import write_lines


def run(tmp_path, name="src", **spec):
    out = tmp_path / "out" / name
    tally = ingest(name, SourceSpec(**spec), out)
    return tally, list(read_jsonl(out / "records.jsonl")), list(read_jsonl(out / "rejected.jsonl"))


GOOD = json.dumps({"instruction": "Say hi", "input": "", "output": "hi"})


def test_bad_lines_are_dropped_with_reason_and_line(tmp_path):
    f = write_lines(tmp_path / "a.jsonl", [
        "\ufeff" + GOOD,                      # BOM on the first line
        '{"instruction": "broken',            # invalid JSON
        b'{"instruction": "\xff", "output": "x"}',  # not UTF-8
        "[1, 2]",                             # not an object
        json.dumps({"instruction": "no output"}),
        json.dumps({"instruction": 3, "output": "x"}),
        "",
        json.dumps({"instruction": "Bye", "output": "bye", "id": 9}),
    ])  # fmt: skip
    tally, records, rejected = run(tmp_path, path=str(f))
    assert tally.n_in == 7 and tally.n_out == 2
    assert dict(tally.dropped) == {
        "invalid_json": 1,
        "not_utf8": 1,
        "not_an_object": 1,
        "missing_field": 1,
        "wrong_type": 1,
    }
    assert [r["line"] for r in rejected] == [2, 3, 4, 5, 6]
    assert rejected[3]["reason"] == "missing_field" and rejected[3]["record"] == {"instruction": "no output"}
    assert records[1]["id"] == "src/9" and records[0]["id"].startswith("src/")
    assert records[0]["messages"] == [
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "hi"},
    ]
    assert records[0]["meta"] == {"format": "alpaca"}


def test_on_bad_record_error_names_file_line_and_problem(tmp_path):
    f = write_lines(tmp_path / "a.jsonl", [GOOD, "{oops"])
    with pytest.raises(IngestError, match=r"source src: .*a\.jsonl: line 2: invalid_json"):
        run(tmp_path, path=str(f), on_bad_record="error")
    assert not (tmp_path / "out" / "src").exists()  # atomic: no half output


def test_unknown_schema_and_empty_file(tmp_path):
    f = write_lines(tmp_path / "a.jsonl", ['{"foo": 1}'])
    with pytest.raises(IngestError, match=r"a\.jsonl: 0 of 1 records kept \(1 unknown_schema"):
        run(tmp_path, path=str(f))  # on_empty: error, the default
    tally, records, rejected = run(tmp_path, path=str(f), on_empty="warn")
    assert dict(tally.dropped) == {"unknown_schema": 1} and records == []
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(IngestError, match="no records"):
        run(tmp_path, path=str(empty), on_bad_record="error")
    assert run(tmp_path, "e2", path=str(empty))[0].n_in == 0


def test_truncated_json_array_recovers_every_complete_record(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}], "id": str(i)}
            for i in range(3)]  # fmt: skip
    text = json.dumps(rows)
    f = tmp_path / "t.json"
    f.write_text(text[: text.rindex('{"conversations"') + 25])
    tally, records, rejected = run(tmp_path, path=str(f))
    assert [r["id"] for r in records] == ["src/0", "src/1"]
    assert dict(tally.dropped) == {"truncated": 1}
    assert "starts at byte" in rejected[0]["detail"] and rejected[0]["index"] == 2
    with pytest.raises(IngestError, match="truncated"):
        run(tmp_path, "t2", path=str(f), on_truncated="error")


def test_json_object_of_arrays_gz_parquet_csv_and_folder(tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    (d / "a.json").write_text(
        json.dumps(
            {"train": [{"prompt": "p1", "response": "r1"}], "test": [{"prompt": "p2", "response": "r2"}]}
        )
    )
    with gzip.open(d / "b.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"prompt": "p3", "response": "r3"}) + "\n")
    import pandas as pd

    pd.DataFrame([{"prompt": "p4", "response": "r4"}]).to_parquet(d / "c.parquet")
    (d / "d.csv").write_text('prompt,response\n"p5, with comma","r5\nmultiline"\n')
    tally, records, _ = run(tmp_path, path=str(d))
    assert [r["messages"][0]["content"] for r in records] == ["p1", "p2", "p3", "p4", "p5, with comma"]
    assert records[-1]["messages"][1]["content"] == "r5\nmultiline"
    assert tally.n_in == tally.n_out == 5


def test_duplicate_ids_stay_unique_and_max_samples(tmp_path):
    f = write_lines(tmp_path / "a.jsonl", [GOOD, GOOD, GOOD, GOOD])
    tally, records, _ = run(tmp_path, path=str(f), max_samples=3, license="mit")
    ids = [r["id"] for r in records]
    assert len(ids) == 3 and ids[1] == ids[0] + "~2" and ids[2] == ids[0] + "~3"
    assert tally.n_in == 3 and all(r["meta"]["license"] == "mit" for r in records)


def test_self_instruct_expansion_balances(tmp_path):
    row = {
        "id": "t",
        "instruction": "i",
        "instances": [{"input": "", "output": "a"}, {"input": "", "output": "b"}],
    }
    f = write_lines(
        tmp_path / "a.jsonl", [json.dumps(row), json.dumps({"id": "u", "instruction": "i", "instances": []})]
    )
    tally, records, _ = run(tmp_path, path=str(f))
    assert (tally.n_in, tally.expanded, tally.n_out, dict(tally.dropped)) == (2, 1, 2, {"no_instances": 1})


def test_missing_locations_fail_with_one_line(tmp_path):
    with pytest.raises(SourceError, match="source src: .*nope.jsonl: no such file"):
        run(tmp_path, path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(SourceError, match="package 'no_such_pkg_xyz' is not installed"):
        run(tmp_path, package="no_such_pkg_xyz", file="a.json")


def test_hub_offline_fails_with_a_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(
        SourceError, match=r"source dolly: cannot load hub dataset 'databricks/x' \(HF_HUB_OFFLINE"
    ):
        run(tmp_path, "dolly", hub="databricks/x")


def test_url_source_over_fsspec(tmp_path):
    f = write_lines(tmp_path / "a.jsonl", [GOOD])
    tally, records, _ = run(tmp_path, url=f"file://{f}")
    assert tally.n_out == 1 and records[0]["messages"][1]["content"] == "hi"


def test_output_is_deterministic(tmp_path):
    f = write_lines(tmp_path / "a.jsonl", [GOOD, '{"bad', json.dumps({"text": "t"})])
    ingest("s", SourceSpec(path=str(f)), tmp_path / "o1")
    ingest("s", SourceSpec(path=str(f)), tmp_path / "o2")
    for name in ("records.jsonl", "rejected.jsonl"):
        assert (tmp_path / "o1" / name).read_bytes() == (tmp_path / "o2" / name).read_bytes()
