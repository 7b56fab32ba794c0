"""Golden tests: the exact text each template renders, and the exact tokens each one trains, for the
GPT-2 and SmolLM2 tokenizers. A label mask that is off by one token, or that forgets the
end-of-turn token, fails here."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from sftpipe.core.records import Drop
from sftpipe.data.format.templates import Renderer, TemplateError
from sftpipe.data.format.tokenizer import IGNORE, bos_prefix, encode
from tests.conftest import GPT2
from tests.smollm2 import smollm2_dir

SYSTEM = {"role": "system", "content": "Be brief."}
CONV = [
    SYSTEM,
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
]
EOT = "<|endoftext|>"  # GPT-2's EOS
IM_END = "<|im_end|>"  # SmolLM2's EOS and ChatML's end of turn

ALPACA_TEXT = (
    "Be brief.\n\n### Instruction:\nHi there\n\n### Response:\nHello!{eos}"
    "\n\n### Instruction:\nWhat is 2+2?\n\n### Response:\nIt is 4.{eos}"
)
CHATML_TEXT = (
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    "<|im_start|>assistant\nIt is 4.<|im_end|>\n"
)
CHAT_TEXT = "Be brief.\n\nHuman: Hi there\n\nAssistant: Hello!{eos}\n\nHuman: What is 2+2?\n\nAssistant: It is 4.{eos}"


@pytest.fixture(scope="module")
def gpt2():
    if not GPT2.is_dir():
        pytest.skip("../shared/tokenizers/gpt2 is absent")
    return AutoTokenizer.from_pretrained(GPT2)


@pytest.fixture(scope="module")
def smol(request):
    return AutoTokenizer.from_pretrained(smollm2_dir(request.config))


def trained(tok, rendered, **kw) -> tuple[list[int], list[str]]:
    """Trained token positions, and the decoded text of each contiguous trained run."""
    enc = encode(tok, [rendered], **kw)[0]
    assert len(enc.labels) == len(enc.input_ids)
    positions = [i for i, lab in enumerate(enc.labels) if lab != IGNORE]
    assert all(enc.labels[i] == enc.input_ids[i] for i in positions)
    runs: list[list[int]] = []
    for i in positions:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return positions, [tok.decode([enc.input_ids[i] for i in run]) for run in runs]


# (tokenizer, template, text, trained positions, decoded trained runs)
GOLDEN = [
    ("gpt2", "alpaca", ALPACA_TEXT.format(eos=EOT), [17, 18, 19, 38, 39, 40, 41, 42],
     ["Hello!" + EOT, "It is 4." + EOT]),
    ("gpt2", "chatml", CHATML_TEXT, [*range(48, 57), *range(91, 101)],
     ["Hello!" + IM_END, "It is 4." + IM_END]),  # <|im_end|> is 7 plain tokens in GPT-2
    ("gpt2", "chat", CHAT_TEXT.format(eos=EOT), [13, 14, 15, 30, 31, 32, 33, 34],
     [" Hello!" + EOT, " It is 4." + EOT]),
    ("smol", "alpaca", ALPACA_TEXT.format(eos=IM_END), [17, 18, 19, *range(39, 45)],
     ["Hello!" + IM_END, "It is 4." + IM_END]),
    ("smol", "chatml", CHATML_TEXT, [19, 20, 21, *range(39, 45)], ["Hello!" + IM_END, "It is 4." + IM_END]),
    ("smol", "chat", CHAT_TEXT.format(eos=IM_END), [14, 15, 16, *range(33, 39)],
     [" Hello!" + IM_END, " It is 4." + IM_END]),
    ("smol", "tokenizer", CHATML_TEXT, [19, 20, 21, *range(39, 45)], ["Hello!" + IM_END, "It is 4." + IM_END]),
]  # fmt: skip


@pytest.mark.parametrize(("tok_name", "template", "text", "positions", "runs"), GOLDEN)
def test_golden_multi_turn_with_system(request, tok_name, template, text, positions, runs):
    tok = request.getfixturevalue("gpt2" if tok_name == "gpt2" else "smol")
    r = Renderer(template, tok)(CONV)
    assert r.text == text
    assert trained(tok, r) == (positions, runs)
    assert r.completion == runs[-1]
    assert r.prompt + r.completion == r.text.removesuffix("\n")


def test_token_positions_are_the_template_boundaries(gpt2, smol):
    # The token before each trained run is template text, the token after is template text too.
    r = Renderer("alpaca", gpt2)(CONV)
    ids = encode(gpt2, [r])[0].input_ids
    assert gpt2.convert_ids_to_tokens(ids[15:20]) == [":", "Ċ", "Hello", "!", EOT]
    r = Renderer("tokenizer", smol)(CONV)
    ids = encode(smol, [r])[0].input_ids
    assert smol.convert_ids_to_tokens(ids[17:23]) == ["istant", "Ċ", "Hello", "!", IM_END, "Ċ"]


def test_alpaca_single_turn_word_for_word(gpt2):
    conv = [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."}]
    r = Renderer("alpaca", gpt2)(conv)
    assert r.text == (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nName a color.\n\n### Response:\nBlue.<|endoftext|>"
    )
    assert r.prompt.endswith("### Response:\n") and r.completion == "Blue.<|endoftext|>"
    assert trained(gpt2, r)[1] == ["Blue.<|endoftext|>"]


def test_alpaca_input_from_meta(gpt2):
    conv = [
        {"role": "user", "content": "Translate to French.\n\nGood morning"},
        {"role": "assistant", "content": "Bonjour"},
    ]
    r = Renderer("alpaca", gpt2)(conv, {"alpaca_input": "Good morning"})
    assert r.text == (
        "Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
        "Translate to French.\n\n### Input:\nGood morning\n\n### Response:\nBonjour<|endoftext|>"
    )
    # An input the user turn does not end with (edited by clean) is not split out.
    r = Renderer("alpaca", gpt2)(conv, {"alpaca_input": "Good evening"})
    assert "### Input:" not in r.text and "Translate to French.\n\nGood morning\n\n### Response:" in r.text


def test_tokenizer_template_default_system_prompt(smol):
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    r = Renderer("tokenizer", smol)(conv)
    assert r.text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
    )
    assert r.prompt.endswith("<|im_start|>assistant\n") and r.completion == "Hello<|im_end|>"
    assert trained(smol, r)[1] == ["Hello<|im_end|>"]


def test_return_assistant_tokens_mask_is_empty_for_stock_smollm2(smol):
    # Why masks come from offsets: SmolLM2's template has no {% generation %} markers.
    out = smol.apply_chat_template(CONV, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert sum(out["assistant_masks"]) == 0
    positions, _ = trained(smol, Renderer("tokenizer", smol)(CONV))
    assert len(positions) == 9


@pytest.mark.parametrize("tok_name", ["gpt2", "smol"])
def test_text_record_trained_in_full(request, tok_name):
    tok = request.getfixturevalue(tok_name)
    r = Renderer("tokenizer" if tok_name == "smol" else "alpaca", tok)(
        [{"role": "assistant", "content": "Plain text."}], {"kind": "text"}
    )
    assert r.text == "Plain text." + tok.eos_token and r.prompt == ""
    positions, runs = trained(tok, r)
    assert runs == [r.text] and positions == list(range(len(positions)))


def test_train_on_prompt_trains_everything(gpt2):
    r = Renderer("alpaca", gpt2)(CONV)
    enc = encode(gpt2, [r], train_on_prompt=True)[0]
    assert enc.labels == enc.input_ids and enc.first_trained == 17


def test_one_character_split_over_byte_tokens_is_trained_whole(gpt2):
    conv = [{"role": "user", "content": "Smile"}, {"role": "assistant", "content": "🙂🙂"}]
    r = Renderer("chat", gpt2)(conv)
    positions, runs = trained(gpt2, r)
    assert runs == [" 🙂🙂<|endoftext|>"]
    assert len(positions) > 3  # each emoji is several byte-level tokens


def test_straddling_token_is_trained(gpt2):
    # "\n" + "\n\nHi": GPT-2 merges the newlines, so one token holds template and response text.
    conv = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "\n\nHi"}]
    r = Renderer("alpaca", gpt2)(conv)
    _, runs = trained(gpt2, r)
    assert runs[0].endswith("\n\nHi<|endoftext|>") and "Response" not in runs[0]


def test_bos_prefix(gpt2, smol):
    assert bos_prefix(gpt2) == "" and bos_prefix(smol) == ""


def test_tokenizer_template_that_trims_content(gpt2):
    tok = AutoTokenizer.from_pretrained(gpt2.name_or_path)
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] | trim + '<|endoftext|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  Hello  "}]
    r = Renderer("tokenizer", tok)(conv)
    assert r.text == "user: Hi<|endoftext|>assistant: Hello<|endoftext|>"
    assert r.completion == "Hello<|endoftext|>"


def test_tokenizer_template_without_end_of_turn_is_refused(gpt2):
    tok = AutoTokenizer.from_pretrained(gpt2.name_or_path)
    tok.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    with pytest.raises(TemplateError, match="special token"):
        Renderer("tokenizer", tok)(conv)


def test_gpt2_has_no_chat_template(gpt2):
    with pytest.raises(TemplateError, match="no chat template|none"):
        Renderer("tokenizer", gpt2)


@pytest.mark.parametrize(
    ("template", "conv", "reason"),
    [
        ("alpaca", [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
                    {"role": "user", "content": "Q2"}], "ends_without_assistant"),
        ("chat", [{"role": "user", "content": "Q"}, {"role": "tool", "content": "x"},
                  {"role": "assistant", "content": "A"}], "template_no_tools"),
        ("alpaca", [{"role": "user", "content": "Q"}, {"role": "system", "content": "late"},
                    {"role": "assistant", "content": "A"}], "unsupported_role"),
        ("chatml", [{"role": "system", "content": "S"}], "no_assistant_turn"),
    ],
)  # fmt: skip
def test_unrenderable_records_have_reasons(gpt2, template, conv, reason):
    with pytest.raises(Drop) as exc:
        Renderer(template, gpt2)(conv)
    assert exc.value.reason == reason


def test_chatml_renders_tool_turns(gpt2):
    conv = [
        {"role": "user", "content": "Q"},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "A"},
    ]
    r = Renderer("chatml", gpt2)(conv)
    assert "<|im_start|>tool\n42<|im_end|>\n" in r.text and r.completion == "A<|im_end|>"
    assert len(r.spans) == 1


def test_tokenizer_template_locating_by_markers_and_by_prefixes_agree(smol):
    render = Renderer("tokenizer", smol)
    say = {"role": "user", "content": "Say assistant"}
    conv = [
        say,
        {"role": "assistant", "content": "assistant"},  # also the role name in the template text
        say,
        {"role": "assistant", "content": "\n"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hi"},  # also the user turn before it
    ]
    for c in (CONV, conv):
        text = smol.apply_chat_template(c, tokenize=False)
        by_markers = render._contents_by_markers(c, text)
        assert by_markers == render._contents_by_prefixes(c, text)
        assert [text[a:b] for a, b in by_markers] == [m["content"] for m in c if m["role"] == "assistant"]


def test_direct_chat_template_renders_what_apply_chat_template_renders(smol, corpora, tmp_path):
    """The compiled template called directly gives apply_chat_template's text, on real multi-turn
    conversations (with system prompts) and with the generation prompt; a template it cannot
    reproduce falls back to apply_chat_template."""
    from sftpipe.core.jsonio import read_jsonl
    from sftpipe.data.format.templates import _direct_template
    from sftpipe.data.ingest import ingest
    from sftpipe.io.sources import SourceSpec

    direct = _direct_template(smol)
    assert direct is not None
    ingest("oasst", SourceSpec(path=str(corpora / "oasst1_en_100_tree.jsonl"), mode="all"), tmp_path)
    convs = [r["messages"] for r in read_jsonl(tmp_path / "records.jsonl")]
    assert len(convs) > 500 and max(len(c) for c in convs) > 4  # multi-turn
    for conv in convs:
        for gp in (False, True):
            assert direct(conv, gp) == smol.apply_chat_template(
                conv, tokenize=False, add_generation_prompt=gp
            )

    class Changed:  # a tokenizer whose apply_chat_template does more than the template
        def __getattr__(self, name):
            return getattr(smol, name)

        def apply_chat_template(self, messages, **kw):
            return smol.apply_chat_template(messages, **kw).upper()

    assert _direct_template(Changed()) is None
