"""report: manifest, stable samples, plots, metrics and the dataset card, from small tables."""

import pyarrow as pa
from huggingface_hub import DatasetCard

from sftpipe.data.card import render, size_category
from sftpipe.data.report import (
    histogram_rows,
    lengths,
    manifest_rows,
    metrics,
    plot_pngs,
    samples,
    write_manifest,
)
from sftpipe.io.sources import SourceSpec
from tests.conftest import format_table


def parts(n_a=6, n_b=3):
    t = format_table(
        [{"id": f"a/{i}", "source": "a"} for i in range(n_a)]
        + [{"id": f"b/{i}", "source": "b"} for i in range(n_b)]
    )
    t = t.append_column("copy", pa.array([0] * t.num_rows, pa.int32()))
    train = pa.concat_tables([t.slice(0, n_a - 1), t.slice(0, 1), t.slice(n_a, n_b - 1)])  # a/0 repeated
    return {"train": train, "val": t.slice(n_a - 1, 1), "test": t.slice(n_a + n_b - 1, 1)}


def test_manifest_one_sorted_line_per_example_with_copies():
    rows = manifest_rows(parts())
    assert [r[0] for r in rows] == sorted(r[0] for r in rows) and len(rows) == 9
    by_id = {r[0]: r for r in rows}
    assert by_id["a/0"][1:4] == ("a", "train", 2) and by_id["a/5"][2] == "val" and by_id["b/2"][2] == "test"


def test_manifest_shards_hold_every_line_once(tmp_path):
    rows = manifest_rows(parts())
    write_manifest(rows, tmp_path / "one", 1)
    assert [p.name for p in (tmp_path / "one" / "manifest").iterdir()] == ["000.tsv"]
    write_manifest(rows, tmp_path, 4)
    assert len(list((tmp_path / "manifest").glob("*.tsv"))) == 4
    lines = [
        ln for f in sorted((tmp_path / "manifest").glob("*.tsv")) for ln in f.read_text().splitlines()[1:]
    ]
    assert sorted(ln.split("\t")[0] for ln in lines) == [r[0] for r in rows]


def test_samples_are_stable_when_data_is_added():
    small = samples(parts(6, 3), 3)
    big = samples(parts(40, 3), 3)
    assert set(small) == {"a", "b"} and len(small["a"]) == 3
    kept = {r["id"] for r in big["a"]}
    # A sample drawn from more data only swaps in ids that hash lower; shared ids keep their place.
    assert [r["id"] for r in small["a"] if r["id"] in kept] == [
        r["id"] for r in big["a"] if r["id"] in {x["id"] for x in small["a"]}
    ]
    assert small["a"][0]["messages"][0]["role"] == "user"


def test_histogram_counts_every_example(tmp_path):
    by = lengths(parts())
    rows = histogram_rows(by)
    assert sum(r["count"] for r in rows) == 10
    assert {(r["split"], r["source"]) for r in rows} == {
        ("train", "a"),
        ("train", "b"),
        ("val", "a"),
        ("test", "b"),
    }
    plot_pngs(tmp_path / "one", by, {"a": 0.6, "b": 0.4})
    plot_pngs(tmp_path / "two", by, {"a": 0.6, "b": 0.4})
    for name in ("token_lengths.png", "mix_shares.png"):
        one = (tmp_path / "one" / name).read_bytes()
        assert one[:8] == b"\x89PNG\r\n\x1a\n" and one == (tmp_path / "two" / name).read_bytes()


def test_metrics_and_card(tmp_path):
    (tmp_path / "ingest").mkdir()
    (tmp_path / "ingest" / "a.json").write_text('{"in": 8, "out": 7, "dropped": {"invalid_json": 1}}')
    (tmp_path / "mix.json").write_text('{"sources": {"a": {"share": 0.625}, "b": {"share": 0.375}}}')
    p = parts()
    m = metrics(p, tmp_path, lengths(p))
    assert m["splits"]["train"] == {"total": 8, "by_source": {"a": 6, "b": 2}}
    assert m["sources"] == {"a": {"train": 6, "val": 1}, "b": {"train": 2, "test": 1}}
    assert m["stages"]["ingest/a"]["dropped"] == {"invalid_json": 1} and m["mix_shares"]["a"] == 0.625
    card = render("demo", {"a": SourceSpec(path="x.jsonl", license="mit"), "b": SourceSpec(hub="org/b")}, m,
                  {"template": "chatml", "tokenizer": "gpt2", "max_length": 512}, ["en"])  # fmt: skip
    header = card.split("---")[1]
    assert (
        "license:\n- mit\n- unknown" in header and "size_categories:\n- n<1K" in header and "- en" in header
    )
    assert "| a | file `x.jsonl` | mit | 7 | 7 | invalid_json 1 |" in card
    assert "Template `chatml`, tokenizer gpt2, max length 512" in card
    assert "## Known limitations" in card and size_category(12_345) == "10K<n<100K"
    # The card parses back as a DatasetCard holding the metadata it was given, in the hub's fields.
    (tmp_path / "README.md").write_text(card)
    data = DatasetCard.load(tmp_path / "README.md").data
    assert data.license == ["mit", "unknown"] and data.language == ["en"] and data.pretty_name == "demo"
    assert data.source_datasets == ["a", "b"] and data.task_categories == ["text-generation"]
    assert data.configs == [{"config_name": "default", "data_files": [
        {"path": f"data/{s}-*", "split": s} for s in ("train", "val", "test")
    ]}]  # fmt: skip
    assert str(DatasetCard(card)) == card


def test_tool_use_counts_in_metrics_and_card(tmp_path):
    import json

    from sftpipe.data.report import tool_use

    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}
    tools = [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "g"}}]
    t = format_table(
        [{"id": f"a/{i}", "source": "a", "meta": {"tools": tools} if i < 2 else {}} for i in range(4)]
    )
    msgs = [
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [call, call]},
         {"role": "tool", "content": "r", "tool_call_id": "c"}, {"role": "assistant", "content": "a", "reasoning": "r"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [call]}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning": "hm"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
    ]  # fmt: skip
    t = t.set_column(
        t.schema.get_field_index("messages"), "messages", pa.array([json.dumps(m) for m in msgs])
    )
    t = t.append_column("copy", pa.array([0] * 4, pa.int32()))
    used = tool_use({"train": t, "val": t.slice(3, 1)})
    assert used == {"train": {"tool_call_turns": 2, "tool_calls": 3, "examples_with_tools": 2,
                              "tools_per_example": 2.0, "reasoning_share": 0.5}}  # fmt: skip
    m = metrics({"train": t, "val": t.slice(3, 1)}, tmp_path, lengths({"train": t}))
    assert m["tool_use"] == used
    card = render("demo", {"a": SourceSpec(path="x.jsonl")}, m, {}, [])
    assert "| train | 2 | 3 | 2 | 2.0 | 50.0% |" in card
    assert "tool_use" not in metrics(parts(), tmp_path, lengths(parts()))  # plain data: the report as before
