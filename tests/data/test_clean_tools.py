"""clean and dedup on tool calls, tool results and reasoning: nothing is lost without a count."""

import pytest

from sftpipe.core.jsonio import read_jsonl, write_jsonl
from sftpipe.data.clean.rules import Cleaner, CleanParams, clean
from sftpipe.data.dedup.run import DedupParams, dedup
from sftpipe.data.ingest import ingest
from sftpipe.io.sources import SourceSpec

CALL = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}


def _clean(msgs, **params):
    changes: set[str] = set()
    out, reason, detail = Cleaner(CleanParams(**params))(
        {"id": "t/1", "messages": msgs, "meta": {}}, changes, {}
    )
    return (out["messages"] if out else None), reason, changes


def test_call_only_turn_and_empty_result_survive():
    msgs = [
        {"role": "user", "content": "1+2?"},
        {"role": "assistant", "content": "", "reasoning": " think\u200b ", "tool_calls": [CALL]},
        {"role": "tool", "content": "", "tool_call_id": "c1", "name": "add"},
        {"role": "assistant", "content": "3"},
    ]
    out, reason, changes = _clean(msgs)
    assert reason is None and len(out) == 4
    assert out[1] == {"role": "assistant", "content": "", "reasoning": "think", "tool_calls": [CALL]}
    assert changes == {"text.control", "text.trim"}  # the trace was normalized like content


def test_a_result_must_answer_a_call():
    orphan = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
              {"role": "tool", "content": "r"}, {"role": "assistant", "content": "b"}]  # fmt: skip
    assert _clean(orphan)[1] == "roles.tool_without_call"
    wrong_id = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [CALL]},
                {"role": "tool", "content": "r", "tool_call_id": "c9"}, {"role": "assistant", "content": "b"}]  # fmt: skip
    assert _clean(wrong_id)[1] == "roles.tool_without_call"


def test_merged_assistant_turns_keep_calls_and_traces():
    msgs = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "Let me add.", "reasoning": "r1"},
        {"role": "assistant", "content": "", "reasoning": "r2", "tool_calls": [CALL]},
        {"role": "tool", "content": "3", "tool_call_id": "c1"},
        {"role": "assistant", "content": "3"},
    ]
    out, reason, changes = _clean(msgs)
    assert out[1] == {
        "role": "assistant",
        "content": "Let me add.",
        "reasoning": "r1\n\nr2",
        "tool_calls": [CALL],
    }
    assert "roles.merged" in changes


def test_reasoning_only_turn_is_removed_and_counted():
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": " ", "reasoning": "hmm"},
            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a"}]  # fmt: skip
    out, reason, changes = _clean(msgs)
    assert [m["content"] for m in out] == ["q\n\nq2", "a"]
    assert {"empties.turns", "empties.reasoning_only", "roles.merged"} <= changes


def test_pii_in_call_arguments_is_replaced_and_counted(tmp_path):
    key = "sk-" + "a1B2c3D4" * 4
    args = {"to": ["ann@example.com", "bob"], "opts": {"phone": "+1 415 555 0100", "retries": 3, "cc": None},
            "body": f"use {key}", "ok": True}  # fmt: skip
    call = {"id": "c1", "type": "function", "function": {"name": "mail", "arguments": args}}
    msgs = [
        {"role": "user", "content": "Mail Ann."},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "sent from ops@example.com", "tool_call_id": "c1", "name": "mail"},
        {"role": "assistant", "content": "Done."},
    ]
    out, reason, changes = _clean(msgs, pii={"enabled": True})
    assert reason is None and changes == {"pii.email", "pii.phone", "pii.api_key"}
    assert out[1]["tool_calls"][0]["function"]["arguments"] == {
        "to": ["<EMAIL>", "bob"], "opts": {"phone": "<PHONE>", "retries": 3, "cc": None},
        "body": "use <API_KEY>", "ok": True,
    }  # fmt: skip
    assert out[1]["tool_calls"][0]["id"] == "c1" and out[2]["content"] == "sent from <EMAIL>"
    assert args["to"][0] == "ann@example.com"  # the input record is not changed in place
    # The stage report counts them with the others.
    write_jsonl(tmp_path / "in.jsonl", [{"id": "t/1", "source": "t", "messages": msgs, "meta": {}}])
    tally, extra = clean([tmp_path / "in.jsonl"], tmp_path / "out", CleanParams(pii={"enabled": True}))
    assert extra["pii_replacements"] == {"api_key": 1, "email": 2, "ip": 0, "phone": 1}
    (got,) = read_jsonl(tmp_path / "out" / "records.jsonl")
    assert got["messages"] == out


def test_boilerplate_in_call_arguments_drops_the_conversation():
    refusal = {"name": "reply", "arguments": {"thread": 7, "parts": ["As an AI language model, I cannot."]}}
    msgs = [{"role": "user", "content": "Answer Bob."},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": refusal}]},
            {"role": "tool", "content": "ok", "tool_call_id": "c1"}, {"role": "assistant", "content": "Replied."}]  # fmt: skip
    changes: set[str] = set()
    out, reason, detail = Cleaner(CleanParams())({"id": "t/1", "messages": msgs, "meta": {}}, changes, {})
    assert (out, reason, detail) == (
        None,
        "boilerplate",
        "turn 1 tool call arguments: 'As an AI language model'",
    )
    refusal["arguments"] = {"thread": 7, "parts": ["Hi Bob, see you at 5."]}
    assert _clean(msgs)[1] is None


def test_real_tool_corpora_through_clean(corpora, tmp_path):
    for name, n_out, dropped in (
        ("glaive_toolcall_zh_demo.json", 298, {"roles.tool_without_call": 2}),
        ("reason_tool_use_demo_50.jsonl", 50, {}),
    ):
        ingest("s", SourceSpec(path=str(corpora / name)), tmp_path / name)
        tally, _ = clean([tmp_path / name / "records.jsonl"], tmp_path / f"{name}.clean", CleanParams())
        assert (tally.n_out, dict(tally.dropped)) == (n_out, dropped)
        recs = list(read_jsonl(tmp_path / f"{name}.clean" / "records.jsonl"))
        before = {r["id"]: r for r in read_jsonl(tmp_path / name / "records.jsonl")}
        calls = lambda rs: sum(len(m.get("tool_calls", ())) for r in rs for m in r["messages"])  # noqa: E731
        assert calls(recs) == calls(before[r["id"]] for r in recs)  # no call lost in a kept record


def test_real_tool_arguments_lose_their_emails(corpora, tmp_path):
    """glaive's calls hold 7 of its 17 emails (register_user, create_event attendees...)."""
    ingest("s", SourceSpec(path=str(corpora / "glaive_toolcall_zh_demo.json")), tmp_path / "in")
    tally, extra = clean(
        [tmp_path / "in" / "records.jsonl"], tmp_path / "out", CleanParams(pii={"enabled": True})
    )
    assert (tally.n_out, extra["pii_replacements"]) == (298, {"api_key": 0, "email": 17, "ip": 0, "phone": 0})
    recs = list(read_jsonl(tmp_path / "out" / "records.jsonl"))
    args = [c["function"]["arguments"] for r in recs for m in r["messages"] for c in m.get("tool_calls", ())]
    assert all(isinstance(a, dict) for a in args)
    assert sum(str(a).count("<EMAIL>") for a in args) == 7 and not any("@example.com" in str(a) for a in args)


@pytest.mark.parametrize("differ", ["arguments", "reasoning", "none"])
def test_dedup_sees_calls_and_reasoning(tmp_path, differ):
    def rec(i, args, trace):
        msgs = [{"role": "user", "content": "add two numbers for me please"},
                {"role": "assistant", "content": "", "reasoning": trace,
                 "tool_calls": [{**CALL, "function": {"name": "add", "arguments": args}}]}]  # fmt: skip
        return {"id": f"t/{i}", "source": "t", "messages": msgs, "meta": {}}

    second = rec(2, {"a": 7, "b": 9} if differ == "arguments" else {"a": 1, "b": 2},
                 "a different plan entirely" if differ == "reasoning" else "plan")  # fmt: skip
    write_jsonl(tmp_path / "in.jsonl", [rec(1, {"a": 1, "b": 2}, "plan"), second])
    report = dedup(tmp_path / "in.jsonl", tmp_path / "out", tmp_path / "d.json", tmp_path / "c.jsonl",
                   DedupParams.model_validate({"near": {"enabled": False}}))  # fmt: skip
    assert report["out"] == (1 if differ == "none" else 2)


def test_decontam_sees_tool_arguments(tmp_path):
    leak = "Natalia sold clips to forty eight of her friends in April and then she sold half as many in May"
    write_jsonl(tmp_path / "gsm.jsonl", [{"question": leak, "answer": "72"}])
    msgs = [{"role": "user", "content": "solve the problem"},
            {"role": "assistant", "content": "", "tool_calls": [{**CALL, "function": {"name": "solve", "arguments": {"q": leak}}}]}]  # fmt: skip
    write_jsonl(tmp_path / "in.jsonl", [{"id": "t/1", "source": "t", "messages": msgs, "meta": {}}])
    params = DedupParams.model_validate({"decontaminate": {"sets": {"gsm8k": str(tmp_path / "gsm.jsonl")}}})
    report = dedup(tmp_path / "in.jsonl", tmp_path / "out", tmp_path / "d.json", tmp_path / "c.jsonl", params)
    assert report["dropped"] == {"contaminated:gsm8k": 1}
