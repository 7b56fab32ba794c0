"""Each schema adapter on tiny inline fixtures, with exact expected canonical output."""

import pytest

from sftpipe.io.schemas import CONVERTERS, Drop, detect, oasst


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def test_alpaca_with_and_without_input():
    [(oid, m, meta)] = CONVERTERS["alpaca"]({"instruction": "Add.", "input": "2+2", "output": "4"})
    assert oid is None and m == msgs(("user", "Add.\n\n2+2"), ("assistant", "4"))
    assert meta == {"alpaca_input": "2+2"}
    [(_, m, meta)] = CONVERTERS["alpaca"](
        {"instruction": "Hi", "input": "", "output": "Hello", "status": "ok"}
    )
    assert m == msgs(("user", "Hi"), ("assistant", "Hello")) and meta == {"status": "ok"}


def test_prompt_response_pairs():
    conv = CONVERTERS["prompt_response"]
    assert conv({"prompt": "p", "completion": "c"})[0][1] == msgs(("user", "p"), ("assistant", "c"))
    assert conv({"question": "q", "answer": "a", "id": 7})[0][:2] == (
        "7",
        msgs(("user", "q"), ("assistant", "a")),
    )
    got = conv({"input": "i", "output": "o", "system": "be brief"})[0][1]
    assert got == msgs(("system", "be brief"), ("user", "i"), ("assistant", "o"))


def test_dolly_context_joins_user_turn():
    row = {
        "instruction": "Summarize.",
        "context": "Long text.",
        "response": "Short.",
        "category": "summarization",
    }
    [(_, m, meta)] = CONVERTERS["dolly"](row)
    assert m == msgs(("user", "Summarize.\n\nLong text."), ("assistant", "Short."))
    assert meta["category"] == "summarization"


def test_text_is_one_assistant_turn():
    [(_, m, meta)] = CONVERTERS["text"]({"text": "Once upon a time"})
    assert m == msgs(("assistant", "Once upon a time")) and meta["kind"] == "text"


def test_messages_roles_and_parts():
    row = {"messages": [{"role": "developer", "content": "sys"},
                        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                        {"role": "assistant", "content": "c"}]}  # fmt: skip
    assert CONVERTERS["messages"](row)[0][1] == msgs(("system", "sys"), ("user", "ab"), ("assistant", "c"))
    with pytest.raises(Drop, match="unknown_role"):
        CONVERTERS["messages"]({"messages": [{"role": "narrator", "content": "x"}]})
    with pytest.raises(Drop, match="empty_conversation"):
        CONVERTERS["messages"]({"messages": []})


def test_sharegpt_role_map_and_unknown_role():
    row = {"id": "abc", "conversations": [
        {"from": "system", "value": "S"}, {"from": "human", "value": "Q"}, {"from": "bard", "value": "A"},
        {"from": "user", "value": "Q2"}, {"from": "function_call", "value": '{"name": "f", "arguments": {}}'},
        {"from": "observation", "value": "42"}, {"from": "chatgpt", "value": "A2"}]}  # fmt: skip
    [(oid, m, _)] = CONVERTERS["sharegpt"](row)
    assert oid == "abc"
    assert [x["role"] for x in m] == ["system", "user", "assistant", "user", "assistant", "tool", "assistant"]
    call = {"id": "call_4_0", "type": "function", "function": {"name": "f", "arguments": {}}}
    assert m[4] == {"role": "assistant", "content": "", "tool_calls": [call]}
    assert m[5] == {"role": "tool", "content": "42", "tool_call_id": "call_4_0", "name": "f"}
    with pytest.raises(Drop, match="unknown_role: turn 1 is from 'alien'"):
        CONVERTERS["sharegpt"](
            {"conversations": [{"from": "human", "value": "x"}, {"from": "alien", "value": "y"}]}
        )
    with pytest.raises(Drop, match="wrong_type"):
        CONVERTERS["sharegpt"]({"conversations": "hello"})


def test_self_instruct_expands_instances():
    row = {
        "id": "t0",
        "instruction": "Sort.",
        "instances": [{"input": "b a", "output": "a b"}, {"input": "", "output": "-"}],
    }
    out = CONVERTERS["self_instruct"](row)
    assert [o[0] for o in out] == ["t0/0", "t0/1"]
    assert out[0][1] == msgs(("user", "Sort.\n\nb a"), ("assistant", "a b"))
    assert out[1][1] == msgs(("user", "Sort."), ("assistant", "-"))
    with pytest.raises(Drop, match="no_instances"):
        CONVERTERS["self_instruct"]({"instruction": "x", "instances": []})


def node(mid, role, text, replies=(), rank=None, **kw):
    return {"message_id": mid, "role": role, "text": text, "rank": rank, "lang": "en",
            "replies": list(replies), **kw}  # fmt: skip


TREE = node("q", "prompter", "Q?", [
    node("a1", "assistant", "A1", [node("f1", "prompter", "F1", [node("b1", "assistant", "B1")])], rank=1),
    node("a0", "assistant", "A0", rank=0),
    node("ad", "assistant", "deleted", rank=None, deleted=True),
    node("ar", "assistant", "rejected", rank=2, review_result=False),
])  # fmt: skip


def test_oasst_best_follows_best_rank():
    [(oid, m, meta)] = oasst.convert({"message_tree_id": "q", "prompt": TREE}, mode="best")
    assert oid == "a0" and m == msgs(("user", "Q?"), ("assistant", "A0")) and meta["tree_id"] == "q"


def test_oasst_all_paths_skip_deleted_and_failed_review():
    out = oasst.convert(TREE, mode="all")
    assert [o[0] for o in out] == ["b1", "a0"]
    assert out[0][1] == msgs(("user", "Q?"), ("assistant", "A1"), ("user", "F1"), ("assistant", "B1"))


def test_oasst_trailing_prompter_is_cut_and_lang_filter():
    tree = node("q", "prompter", "Q", [node("a", "assistant", "A", [node("f", "prompter", "dangling")])])
    [(oid, m, _)] = oasst.convert(tree, mode="all")
    assert oid == "a" and m[-1] == {"role": "assistant", "content": "A"}
    with pytest.raises(Drop, match="lang"):
        oasst.convert(tree, langs={"de"})


@pytest.mark.parametrize(
    ("row", "schema"),
    [
        ({"id": "s/1", "source": "s", "messages": [], "meta": {}}, "canonical"),
        ({"messages": []}, "messages"),
        ({"conversations": []}, "sharegpt"),
        ({"message_tree_id": "x", "prompt": {}}, "oasst"),
        ({"message_id": "x", "replies": []}, "oasst"),
        ({"instruction": "i", "instances": []}, "self_instruct"),
        ({"instruction": "i", "context": "", "response": "r"}, "dolly"),
        ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
        ({"prompt": "p", "response": "r"}, "prompt_response"),
        ({"question": "q", "answer": "a"}, "prompt_response"),
        ({"text": "t"}, "text"),
        ({"foo": 1}, None),
    ],
)
def test_detect(row, schema):
    assert detect(row) == schema
