"""Tool calls, tools and reasoning survive export: messages and sharegpt JSONL and the HF dataset
round-trip through ingest to the same conversations (sharegpt renumbers call ids, which it cannot
carry)."""

import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from sftpipe.core.jsonio import read_jsonl, write_jsonl
from sftpipe.data.clean.rules import CleanParams, clean
from sftpipe.data.export import jsonl_rows, save_hf
from sftpipe.data.format.formatter import FormatParams, format_records
from sftpipe.data.ingest import ingest
from sftpipe.io.sources import SourceSpec
from tests.smollm2 import smollm2_dir


def _ids(messages: list[dict]) -> list[dict]:
    """Messages with call ids renumbered by position (what a format without ids gives back)."""
    out, names = [], {}
    for i, m in enumerate(messages):
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "id": f"call_{i}_{k}"} for k, c in enumerate(m["tool_calls"])]
            names.update(
                {c["id"]: n["id"] for c, n in zip(messages[i]["tool_calls"], m["tool_calls"], strict=True)}
            )
        if "tool_call_id" in m:
            m["tool_call_id"] = names.get(m["tool_call_id"], m["tool_call_id"])
        out.append(m)
    return out


@pytest.mark.parametrize("corpus", ["reason_tool_use_demo_50.jsonl", "glaive_toolcall_zh_demo.json"])
def test_messages_and_sharegpt_round_trip(corpora, tmp_path, request, corpus):
    ingest("s", SourceSpec(path=str(corpora / corpus)), tmp_path / "in")
    clean([tmp_path / "in" / "records.jsonl"], tmp_path / "clean", CleanParams())
    records = {r["id"]: r for r in read_jsonl(tmp_path / "clean" / "records.jsonl")}
    tok = AutoTokenizer.from_pretrained(smollm2_dir(request.config))
    format_records(records.values(), tok, FormatParams(template="chatml", max_length=8192), tmp_path / "fmt")
    table = pq.read_table(tmp_path / "fmt" / "data.parquet")
    assert table.num_rows == len(records)
    for fmt, reasoning in (("messages", "keep"), ("sharegpt", "split")):
        write_jsonl(tmp_path / f"{fmt}.jsonl", list(jsonl_rows(table, fmt)))
        tally = ingest(
            "s", SourceSpec(path=str(tmp_path / f"{fmt}.jsonl"), reasoning=reasoning), tmp_path / fmt
        )
        assert (tally.format, tally.n_out, dict(tally.dropped)) == (fmt, len(records), {})
        back = list(read_jsonl(tmp_path / fmt / "records.jsonl"))
        for got in back:
            want = records[got["id"].removeprefix("s/")]  # ingest puts the source name before the id again
            assert got.get("tools") == want.get("tools")
            if fmt == "messages":
                assert got["messages"] == want["messages"]
            else:
                assert _ids(got["messages"]) == _ids(want["messages"])
    _check_hf_round_trip(table, records, tmp_path / "hf")


def _check_hf_round_trip(table, records: dict, folder) -> None:
    """The HF dataset of `table` holds each record's messages, tools and meta as Python objects (what
    SFTTrainer reads), and its rows, written out as a user would, ingest back to the same records."""
    import datasets

    save_hf({"train": table}, folder)
    ds = datasets.load_from_disk(str(folder))["train"]
    assert ds.features["messages"] == datasets.Json() and ds.num_rows == len(records)
    for row in ds:
        want = records[row["id"]]
        assert (row["messages"], row["tools"], row["meta"]) == (
            want["messages"],
            want.get("tools"),
            want["meta"],
        )
    ds.to_parquet(folder / "rows.parquet")
    tally = ingest("s", SourceSpec(path=str(folder / "rows.parquet")), folder / "back")
    assert (tally.format, tally.n_out, dict(tally.dropped)) == ("canonical", len(records), {})
    for got in read_jsonl(folder / "back" / "records.jsonl"):
        want = records[got["id"]]
        assert (got["messages"], got.get("tools")) == (want["messages"], want.get("tools"))
        assert got["meta"] == {**want["meta"], "format": "canonical"}  # ingest records the adapter it used


def test_hf_dataset_round_trips_calls_results_reasoning_and_tools(tmp_path, request):
    call = {
        "id": "call_9",
        "type": "function",
        "function": {
            "name": "send_mail",
            "arguments": {"to": "a@b.c", "n": 2, "tags": ["x"], "deep": {"ok": True}},
        },
    }
    tools = [
        {
            "type": "function",
            "function": {
                "name": "send_mail",
                "description": "Send a mail.",
                "parameters": {"type": "object", "properties": {"to": {"type": "string"}}},
            },
        }
    ]
    records = {
        "s/t": {"id": "s/t", "source": "s", "meta": {"lang": "en"}, "tools": tools, "messages": [
            {"role": "system", "content": "Use tools."}, {"role": "user", "content": "Mail a@b.c twice."},
            {"role": "assistant", "content": "Sending.", "reasoning": "The user wants a mail.", "tool_calls": [call]},
            {"role": "tool", "content": '{"sent": 2}', "tool_call_id": "call_9", "name": "send_mail"},
            {"role": "assistant", "content": "Sent.", "reasoning": "It worked."}]},
        "s/p": {"id": "s/p", "source": "s", "meta": {}, "messages": [
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    }  # fmt: skip
    tok = AutoTokenizer.from_pretrained(smollm2_dir(request.config))
    format_records(records.values(), tok, FormatParams(template="chatml", max_length=1024), tmp_path / "fmt")
    table = pq.read_table(tmp_path / "fmt" / "data.parquet")
    _check_hf_round_trip(table, records, tmp_path / "hf")


def test_alpaca_keeps_the_answer_after_tool_calls():
    from sftpipe.data.export import _alpaca

    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "r", "tool_call_id": "c"}, {"role": "assistant", "content": "a"},
            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]  # fmt: skip
    assert _alpaca(msgs, {}) == {
        "instruction": "q2",
        "input": "",
        "output": "a2",
        "system": "",
        "history": [["q", "a"]],
    }


def test_parquet_rows_round_trip_through_ingest(corpora, tmp_path, request):
    ingest("s", SourceSpec(path=str(corpora / "reason_tool_use_demo_50.jsonl")), tmp_path / "in")
    records = {r["id"]: r for r in read_jsonl(tmp_path / "in" / "records.jsonl")}
    tok = AutoTokenizer.from_pretrained(smollm2_dir(request.config))
    format_records(records.values(), tok, FormatParams(template="chatml", max_length=8192), tmp_path / "fmt")
    tally = ingest("s", SourceSpec(path=str(tmp_path / "fmt" / "data.parquet")), tmp_path / "back")
    assert (tally.format, tally.n_out, dict(tally.dropped)) == ("canonical", 50, {})
    for got in read_jsonl(tmp_path / "back" / "records.jsonl"):
        want = records[got["id"]]
        assert (got["messages"], got.get("tools")) == (want["messages"], want.get("tools"))
        assert "tools" not in got["meta"]
