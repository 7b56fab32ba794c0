"""Tool calls, tool results, `tools` and reasoning traces through every adapter that carries them."""

from collections import Counter

import pytest

from sftpipe.core.jsonio import read_jsonl
from sftpipe.core.records import content_hash, turn_text
from sftpipe.data.ingest import ingest
from sftpipe.io.schemas import CONVERTERS, Drop, reasoning
from sftpipe.io.sources import SourceSpec

CALL = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}
TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}


def test_openai_tool_calls_results_reasoning_and_tools():
    row = {
        "messages": [
            {"role": "user", "content": "1+2?"},
            {"role": "assistant", "content": None, "reasoning_content": "add them",
             "tool_calls": [{"id": "c1", "type": "function",
                             "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "3"},
            {"role": "assistant", "content": "3."},
        ],
        "tools": [TOOL],
    }  # fmt: skip
    [(_, m, _, tools)] = CONVERTERS["messages"](row)
    assert m[1] == {"role": "assistant", "content": "", "reasoning": "add them", "tool_calls": [CALL]}
    assert m[2] == {"role": "tool", "content": "3", "tool_call_id": "c1", "name": "add"}
    assert m[3] == {"role": "assistant", "content": "3."}
    assert tools == [TOOL]


def test_typed_parts_and_bare_tools_string():
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "value": "1+2?"}]},
            {"role": "assistant", "content": [
                {"type": "reasoning", "value": "add"},
                {"type": "tool_call", "value": '{"name": "add", "arguments": {"a": 1, "b": 2}}'}]},
            {"role": "tool", "content": [{"type": "text", "value": "3"}]},
            {"role": "assistant", "content": [{"type": "text", "value": "3."}]},
        ],
        "tools": '[{"name": "add", "parameters": {"type": "object"}}]',
    }  # fmt: skip
    [(_, m, _, tools)] = CONVERTERS["messages"](row)
    call = {**CALL, "id": "call_1_0"}
    assert m[1] == {"role": "assistant", "content": "", "reasoning": "add", "tool_calls": [call]}
    assert m[2] == {"role": "tool", "content": "3", "tool_call_id": "call_1_0", "name": "add"}
    assert tools == [TOOL]


@pytest.mark.parametrize(
    ("msgs", "match"),
    [
        ([{"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": "{}"}}]}], "no function name"),
        ([{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}], "not valid JSON"),
        ([{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}], "expected an object"),
        ([{"role": "user", "content": [{"type": "reasoning", "value": "x"}]}], "misplaced_part"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}], "non_text_content"),
    ],
)  # fmt: skip
def test_bad_tool_parts_drop_with_a_reason(msgs, match):
    with pytest.raises(Drop, match=match):
        CONVERTERS["messages"]({"messages": msgs})


def test_bad_tools_column_drops():
    with pytest.raises(Drop, match="bad_tools"):
        CONVERTERS["sharegpt"]({"conversations": [{"from": "human", "value": "x"}], "tools": "{}"})


def test_sharegpt_parallel_calls_and_plain_rows_unchanged():
    row = {"conversations": [
        {"from": "human", "value": "q"},
        {"from": "function_call", "value": '[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": 1}}]'},
        {"from": "observation", "value": "ra"}, {"from": "observation", "value": "rb"},
        {"from": "gpt", "value": "done"}]}  # fmt: skip
    [(_, m, _)] = CONVERTERS["sharegpt"](row)
    assert [c["function"]["name"] for c in m[1]["tool_calls"]] == ["a", "b"]
    assert [(t["tool_call_id"], t["name"]) for t in m[2:4]] == [("call_1_0", "a"), ("call_1_1", "b")]
    plain = CONVERTERS["sharegpt"](
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    )
    assert plain == [(None, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], {})]


def test_sharegpt_llama_factory_thought_and_joined_results():
    """A function_call value may start with a <think> block (LLaMA-Factory's FunctionFormatter takes
    one); one observation after parallel calls may hold their results joined as LLaMA-Factory joins
    them, and is split only when it holds exactly one result per call."""
    call = '<think>\nadd both\n</think>\n\n[{"name": "add", "arguments": {"a": 1}}, {"name": "add", "arguments": {"a": 2}}]'
    joined = "1\n</tool_response>\n<tool_response>\n2"
    row = {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": call},
                             {"from": "observation", "value": joined}, {"from": "gpt", "value": "3"}]}  # fmt: skip
    [(_, m, _)] = CONVERTERS["sharegpt"](row)
    assert [x["role"] for x in m] == ["user", "assistant", "tool", "tool", "assistant"]
    assert m[1]["content"] == "<think>\nadd both\n</think>"  # the source's reasoning mode decides
    assert [(x["content"], x["tool_call_id"]) for x in m[2:4]] == [("1", "call_1_0"), ("2", "call_1_1")]
    row["conversations"][1]["value"] = '{"name": "add", "arguments": {"a": 1}}'  # one call: one result
    [(_, m, _)] = CONVERTERS["sharegpt"](row)
    assert [x["role"] for x in m] == ["user", "assistant", "tool", "assistant"] and m[2]["content"] == joined


def test_think_split_keep_drop():
    msgs = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nanswer"},
    ]
    changes: Counter = Counter()
    assert reasoning.apply(msgs, "keep", changes) is msgs
    split = reasoning.apply(msgs, "split", changes)
    assert split[1] == {"role": "assistant", "content": "answer", "reasoning": "hmm"}
    dropped = reasoning.apply([msgs[0], {**split[1]}], "drop", changes)
    assert dropped[1] == {"role": "assistant", "content": "answer"}
    assert changes == {"reasoning.split": 1, "reasoning.dropped": 1}
    unclosed = [{"role": "assistant", "content": "<think>cut off"}]
    assert reasoning.apply(unclosed, "split", changes) is unclosed


def test_hash_of_plain_conversations_is_unchanged_and_sees_calls():
    plain = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert content_hash(plain) == "3b907f307d038877"  # the hash before messages had optional keys
    with_call = [plain[0], {"role": "assistant", "content": "", "tool_calls": [CALL]}]
    other = [
        plain[0],
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{**CALL, "function": {"name": "sub", "arguments": {}}}],
        },
    ]
    assert content_hash(with_call) != content_hash(other)
    assert turn_text(with_call[1]) == 'add({"a":1,"b":2})'


def test_glaive_toolcall_real(corpora, tmp_path):
    tally = ingest("g", SourceSpec(path=str(corpora / "glaive_toolcall_zh_demo.json")), tmp_path / "g")
    assert (tally.format, tally.n_in, tally.n_out, dict(tally.dropped)) == ("sharegpt", 300, 300, {})
    recs = list(read_jsonl(tmp_path / "g" / "records.jsonl"))
    msgs = [m for r in recs for m in r["messages"]]
    assert sum(len(m.get("tool_calls", ())) for m in msgs) == 216
    results = [m for m in msgs if m["role"] == "tool"]
    assert (len(results), sum("tool_call_id" in m for m in results)) == (218, 216)  # 2 answer no call
    assert sum(1 for r in recs if r.get("tools")) == 200
    assert sum(len(r.get("tools", ())) for r in recs) == 239
    assert all(t["type"] == "function" and t["function"]["name"] for r in recs for t in r.get("tools", ()))


def test_typed_part_reasoning_real(corpora, tmp_path):
    tally = ingest("r", SourceSpec(path=str(corpora / "reason_tool_use_demo_50.jsonl")), tmp_path / "r")
    assert (tally.format, tally.n_in, tally.n_out, dict(tally.dropped)) == ("messages", 50, 50, {})
    recs = list(read_jsonl(tmp_path / "r" / "records.jsonl"))
    msgs = [m for r in recs for m in r["messages"]]
    assert sum(bool(m.get("reasoning")) for m in msgs) == 112
    assert sum(len(m.get("tool_calls", ())) for m in msgs) == 68
    assert sum(bool(m.get("tool_calls")) for m in msgs) == 53
    assert sum(m["role"] == "tool" and "tool_call_id" in m for m in msgs) == 42
    assert sum(bool(r.get("tools")) for r in recs) == 48


def test_think_split_through_ingest(tmp_path):
    src = tmp_path / "t.jsonl"
    src.write_text('{"prompt": "q", "response": "<think>why</think>because"}\n')
    tally = ingest("t", SourceSpec(path=str(src), reasoning="split"), tmp_path / "t")
    [rec] = read_jsonl(tmp_path / "t" / "records.jsonl")
    assert rec["messages"][1] == {"role": "assistant", "content": "because", "reasoning": "why"}
    assert dict(tally.changed) == {"reasoning.split": 1}
