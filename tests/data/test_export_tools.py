"""Tool calls, tools and reasoning survive export: messages and sharegpt JSONL and the HF dataset
round-trip through ingest to the same conversations (sharegpt renumbers call ids, which it cannot
carry)."""

import json
import re

import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from sftpipe.core.jsonio import read_jsonl, write_jsonl
from sftpipe.data.clean.rules import CleanParams, clean
from sftpipe.data.export import _sharegpt, jsonl_rows, save_hf
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
        if fmt == "sharegpt":  # every row is one LLaMA-Factory trains on
            rows = list(read_jsonl(tmp_path / f"{fmt}.jsonl"))
            assert [r["id"] for r in rows if not llama_factory_accepts(r["conversations"])] == []
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


def llama_factory_accepts(conversations: list[dict]) -> bool:
    """LLaMA-Factory's checks on a ShareGPT row (SharegptDatasetConverter and FunctionFormatter):
    after an optional system turn, human/observation at even positions and gpt/function_call at odd
    ones, an even count, and each function_call value an optional <think> block then JSON calls."""
    turns = conversations[1:] if conversations and conversations[0]["from"] == "system" else conversations
    accept = (("human", "observation"), ("gpt", "function_call"))
    if any(t["from"] not in accept[i % 2] for i, t in enumerate(turns)) or len(turns) % 2:
        return False
    for t in turns:
        if t["from"] == "function_call":
            thought = re.search(r"<think>(.*?)</think>", t["value"], re.S)
            value = t["value"].replace(thought.group(0), "") if thought else t["value"]
            try:
                found = json.loads(value)
            except json.JSONDecodeError:
                return False
            if not all(
                "name" in c and "arguments" in c for c in (found if isinstance(found, list) else [found])
            ):
                return False
    return True


def test_sharegpt_rows_alternate_as_llama_factory_requires(tmp_path):
    add = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}
    mul = {"id": "c2", "type": "function", "function": {"name": "mul", "arguments": {"a": 3, "b": 4}}}
    msgs = [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "1+2 and 3*4?"},
        {
            "role": "assistant",
            "content": "Let me compute.",
            "reasoning": "Two sums.",
            "tool_calls": [add, mul],
        },
        {"role": "tool", "content": "3", "tool_call_id": "c1", "name": "add"},
        {"role": "tool", "content": "12", "tool_call_id": "c2", "name": "mul"},
        {"role": "assistant", "content": "", "reasoning": "Now one more.", "tool_calls": [add]},
        {"role": "tool", "content": "3", "tool_call_id": "c1", "name": "add"},
        {"role": "assistant", "content": "3 and 12.", "reasoning": "Done."},
    ]
    conv = _sharegpt(msgs)
    # Before: the text and the call were two turns (gpt, function_call), parallel results two
    # observations; LLaMA-Factory skips such a row.
    assert not llama_factory_accepts([conv[1], {"from": "gpt", "value": "x"}, *conv[2:]])
    assert [t["from"] for t in conv] == ["system", "human", "function_call", "observation", "function_call",
                                        "observation", "gpt"]  # fmt: skip
    assert llama_factory_accepts(conv) and conv[3]["value"] == "3\n</tool_response>\n<tool_response>\n12"
    assert conv[2]["value"] == (
        "<think>\nTwo sums.\n\nLet me compute.\n</think>\n\n"
        '[{"name":"add","arguments":{"a":1,"b":2}},{"name":"mul","arguments":{"a":3,"b":4}}]'
    )
    assert conv[4]["value"] == '<think>\nNow one more.\n</think>\n\n{"name":"add","arguments":{"a":1,"b":2}}'
    # Read back: the calls, results and reasoning are the record's; the text said beside a call
    # comes back as part of that turn's thinking (LLaMA-Factory has no other place for it).
    write_jsonl(tmp_path / "sg.jsonl", [{"id": "x", "conversations": conv}])
    ingest("s", SourceSpec(path=str(tmp_path / "sg.jsonl"), reasoning="split"), tmp_path / "back")
    (got,) = read_jsonl(tmp_path / "back" / "records.jsonl")
    want = [dict(m) for m in msgs]
    want[2] = {**want[2], "content": "", "reasoning": "Two sums.\n\nLet me compute."}
    assert _ids(got["messages"]) == _ids(want)


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
