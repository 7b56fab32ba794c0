"""Golden texts and masks for tool calls and reasoning: a tool-capable chat template with
`{% generation %}` blocks (written here, Qwen2.5/Hermes-style), the same template without the
blocks (located by markers: both must train the same tokens), and chatml/alpaca/chat."""

from __future__ import annotations

import copy

import pytest
from transformers import AutoTokenizer

from sftpipe.core.records import Drop
from sftpipe.data.format.templates import Renderer
from tests.data.test_templates import trained
from tests.smollm2 import smollm2_dir

TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
CALL = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}
CONV = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "content": "", "reasoning": "Add them.", "tool_calls": [CALL]},
    {"role": "tool", "content": "5", "tool_call_id": "c1", "name": "add"},
    {"role": "assistant", "content": "It is 5."},
]
CALL_TEXT = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'

# A tool-capable ChatML template; {GEN} / {END} become the generation tags, or nothing.
TEMPLATE = (
    "{%- if tools -%}{{- '<|im_start|>system\\n# Tools' -}}"
    "{%- for t in tools -%}{{- '\\n' + (t | tojson) -}}{%- endfor -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' -%}{{- '<|im_start|>assistant\\n' -}}{GEN}"
    "{%- if m.reasoning_content -%}{{- '<think>\\n' + m.reasoning_content + '\\n</think>\\n\\n' -}}{%- endif -%}"
    "{{- m.content -}}"
    "{%- for c in (m.tool_calls or []) -%}"
    "{{- '\\n<tool_call>\\n' + ({'name': c.function.name, 'arguments': c.function.arguments} | tojson)"
    " + '\\n</tool_call>' -}}{%- endfor -%}"
    "{{- '<|im_end|>' -}}{END}{{- '\\n' -}}"
    "{%- else -%}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
WITH_BLOCKS = TEMPLATE.replace("{GEN}", "{%- generation -%}").replace("{END}", "{%- endgeneration -%}")
NO_BLOCKS = TEMPLATE.replace("{GEN}", "").replace("{END}", "")

REASONED = "<think>\nAdd them.\n</think>\n\n\n" + CALL_TEXT + "<|im_end|>"


@pytest.fixture(scope="module")
def smol_dir(request):
    return smollm2_dir(request.config)


def _tok(smol_dir, template):
    tok = AutoTokenizer.from_pretrained(smol_dir)
    tok.chat_template = template
    return tok


@pytest.mark.parametrize("template", [WITH_BLOCKS, NO_BLOCKS], ids=["generation", "markers"])
def test_tool_call_turns_trained_results_and_tools_not(smol_dir, template):
    tok = _tok(smol_dir, template)
    conv = copy.deepcopy(CONV)
    r = Renderer("tokenizer", tok)(conv, {}, TOOLS)
    assert conv == CONV  # the record is not changed by rendering
    assert r.text.startswith('<|im_start|>system\n# Tools\n{"type": "function"')
    assert "<|im_start|>tool\n5<|im_end|>" in r.text
    _, runs = trained(tok, r)
    assert runs == [REASONED, "It is 5.<|im_end|>"]


@pytest.mark.parametrize("template", [WITH_BLOCKS, NO_BLOCKS], ids=["generation", "markers"])
def test_reasoning_masked_when_not_trained(smol_dir, template):
    tok = _tok(smol_dir, template)
    r = Renderer("tokenizer", tok, train_on_reasoning=False)(CONV, {}, TOOLS)
    _, runs = trained(tok, r)
    assert [x.strip("\n") for x in runs] == [CALL_TEXT + "<|im_end|>", "It is 5.<|im_end|>"]
    assert "Add them." not in "".join(runs)


def test_generation_and_markers_train_the_same_tokens(smol_dir):
    for train_on_reasoning in (True, False):
        got = []
        for template in (WITH_BLOCKS, NO_BLOCKS):
            tok = _tok(smol_dir, template)
            got.append(
                trained(
                    tok, Renderer("tokenizer", tok, train_on_reasoning=train_on_reasoning)(CONV, {}, TOOLS)
                )[0]
            )
        assert got[0] == got[1]


def test_template_without_tools_refuses_per_record(smol_dir):
    tok = AutoTokenizer.from_pretrained(smol_dir)  # SmolLM2's own: ChatML, no tools
    with pytest.raises(Drop, match="template_no_tools"):
        Renderer("tokenizer", tok)(CONV, {}, TOOLS)
    # reasoning with a template that reads none: shown as a think block, trained with the turn
    conv = [CONV[1], {"role": "assistant", "content": "5", "reasoning": "Add."}]
    r = Renderer("tokenizer", tok)(conv)
    assert trained(tok, r)[1] == ["<think>\nAdd.\n</think>\n\n5<|im_end|>"]
    r = Renderer("tokenizer", tok, train_on_reasoning=False)(conv)
    assert trained(tok, r)[1] == ["5<|im_end|>"]


def test_chatml_renders_tools_hermes_style(smol_dir):
    tok = AutoTokenizer.from_pretrained(smol_dir)
    r = Renderer("chatml", tok)(CONV, {}, TOOLS)
    assert r.text.startswith("<|im_start|>system\nS\n\n# Tools\n\nYou may call one or more functions")
    assert (
        '<tools>\n{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}\n</tools>'
        in r.text
    )
    assert trained(tok, r)[1] == [
        "<think>\nAdd them.\n</think>\n\n" + CALL_TEXT + "<|im_end|>",
        "It is 5.<|im_end|>",
    ]


@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_alpaca_and_chat_refuse_tools_render_reasoning(smol_dir, template):
    tok = AutoTokenizer.from_pretrained(smol_dir)
    with pytest.raises(Drop, match="template_no_tools: .* has no place for tools"):
        Renderer(template, tok)(CONV, {}, TOOLS)
    conv = [CONV[1], {"role": "assistant", "content": "5", "reasoning": "Add."}]
    lead = " " if template == "chat" else ""
    assert trained(tok, Renderer(template, tok)(conv))[1] == [f"{lead}<think>\nAdd.\n</think>\n\n5<|im_end|>"]
    assert trained(tok, Renderer(template, tok, train_on_reasoning=False)(conv))[1] == ["5<|im_end|>"]


@pytest.mark.parametrize(("reasoning", "history_dropped"), [("keep", 0), ("drop_history", 16)])
def test_real_tool_and_reasoning_data_through_format(corpora, smol_dir, tmp_path, reasoning, history_dropped):
    import orjson
    import pyarrow.parquet as pq

    from sftpipe.core.jsonio import read_jsonl
    from sftpipe.data.clean.rules import CleanParams, clean
    from sftpipe.data.format.formatter import FormatParams, format_records
    from sftpipe.data.ingest import ingest
    from sftpipe.io.sources import SourceSpec

    ingest("r", SourceSpec(path=str(corpora / "reason_tool_use_demo_50.jsonl")), tmp_path / "in")
    clean([tmp_path / "in" / "records.jsonl"], tmp_path / "clean", CleanParams())
    records = list(read_jsonl(tmp_path / "clean" / "records.jsonl"))
    tok = AutoTokenizer.from_pretrained(smol_dir)
    params = FormatParams(template="chatml", max_length=8192, reasoning=reasoning)
    tally, extra = format_records(records, tok, params, tmp_path / "out")
    assert (tally.n_out, dict(tally.dropped)) == (50, {})
    assert tally.changed.get("reasoning.history_dropped", 0) == history_dropped
    assert extra["checks"]["problems"] == {}
    rows = pq.read_table(tmp_path / "out" / "data.parquet").to_pylist()
    assert sum(bool(orjson.loads(r["meta"]).get("tools")) for r in rows) == 48
    # every tool call is in a trained run, no tool result is
    for r in rows[:10]:
        trained_text = tok.decode(
            [t for t, lab in zip(r["input_ids"], r["labels"], strict=True) if lab != -100]
        )
        for m in orjson.loads(r["messages"]):
            for c in m.get("tool_calls", ()):
                assert f'"name": "{c["function"]["name"]}"' in trained_text
            if m["role"] == "tool" and len(m["content"]) > 20:
                assert m["content"] not in trained_text


@pytest.mark.parametrize("template", ["chatml", "alpaca", "chat"])
def test_saved_jinja_renders_what_was_trained(smol_dir, template):
    """The chat template a trained model carries renders reasoning and tool calls as format did."""
    from sftpipe.data.format.templates import chat_template

    tok = AutoTokenizer.from_pretrained(smol_dir)
    jinja = chat_template(template, tok)
    reasoned = [CONV[1], {"role": "assistant", "content": "5", "reasoning": "Add."}]
    cases = [(reasoned, None)] + ([(CONV, TOOLS), (CONV[1:], TOOLS)] if template == "chatml" else [])
    for conv, tools in cases:
        want = Renderer(template, tok)(conv, {}, tools).text
        got = tok.apply_chat_template(conv, tools=tools, chat_template=jinja, tokenize=False)
        assert got == want


def test_a_call_turn_closed_by_another_token_is_refused_not_overtrained(smol_dir):
    """A template that closes call turns with a token other than its plain end-of-turn (Llama 3.1's
    <|eom_id|> style): the next plain end-of-turn comes after the tool result, which must not be
    trained, so the record is dropped."""
    template = NO_BLOCKS.replace(
        "{{- '<|im_end|>' -}}{{- '\\n' -}}",
        "{{- ('<|endoftext|>' if m.tool_calls else '<|im_end|>') -}}{{- '\\n' -}}",
    )
    assert template != NO_BLOCKS
    tok = _tok(smol_dir, template)
    with pytest.raises(Drop, match="template_error: turn 2: cannot find where the tool-call turn ends"):
        Renderer("tokenizer", tok)(CONV, {}, TOOLS)
