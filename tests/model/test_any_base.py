"""Any base trains, and the trained model carries the template it learned: a GPT-2 tokenizer (no
pad token, no chat template, no ChatML tokens) goes through base_model, format, train and evaluate
on CPU; for every template and tokenizer, the saved tokenizer's `apply_chat_template` gives back
exactly what format rendered, and its generation prompt ends where the trained answer begins."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from sftpipe.core.records import make_record
from sftpipe.data.format.formatter import FormatParams, format_records
from sftpipe.data.format.templates import IM_END, TemplateError
from sftpipe.model.train import TrainParams, carry_template, train
from tests.smollm2 import smollm2_dir
from tests.tiny_sft import formatted_processed, tiny_gpt2_base


def u(text: str) -> dict:
    return {"role": "user", "content": text}


def a(text: str) -> dict:
    return {"role": "assistant", "content": text}


# Held-out conversations with what templates must get right: system prompts, several exchanges,
# Alpaca's separate input, quotes, braces, backslashes, non-ASCII text and trailing spaces.
HELD_OUT = [
    ([u("What is 2+2?"), a("4.")], {}),
    ([{"role": "system", "content": "Be brief."}, u("Hi 'there' {{ x }} \\n"), a("Hello!  ")], {}),
    ([u("q1"), a("a1 ünïcode ✓"), u("q2\n\nmore"), a("a2\n```py\nprint(1)\n```")], {}),
    ([u("Translate this.\n\nBonjour"), a("Hello")], {"alpaca_input": "Bonjour"}),
    (
        [
            {"role": "system", "content": "S1"},
            {"role": "system", "content": "S2"},
            u("x"),
            a("y"),
            u("z"),
            a("w"),
        ],
        {},
    ),
]


def formatted(tokenizer, template: str, tmp_path) -> list[dict]:
    """format's rows for HELD_OUT (text, prompt, messages, meta) in input order."""
    records = [make_record("h", m, meta, orig_id=str(i)) for i, (m, meta) in enumerate(HELD_OUT)]
    tally, _ = format_records(records, tokenizer, FormatParams(template=template), tmp_path / template)
    assert tally.n_out == len(HELD_OUT)
    return pq.read_table(tmp_path / template / "data.parquet").to_pylist()


def roundtrip(tokenizer_dir, template: str, tmp_path) -> None:
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    rows = formatted(tok, template, tmp_path)
    stop = carry_template(tok, template)
    tok.save_pretrained(tmp_path / "saved")
    saved = AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    assert stop[-1] == saved.convert_tokens_to_ids(
        IM_END if template in ("chatml", "tokenizer") else saved.eos_token
    )
    for row in rows:
        messages, meta = json.loads(row["messages"]), json.loads(row["meta"])
        extra = {"alpaca_input": meta["alpaca_input"]} if "alpaca_input" in meta else {}
        assert saved.apply_chat_template(messages, tokenize=False, **extra) == row["text"], row["id"]
        prompt = saved.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True, **extra)
        assert prompt == row["prompt"], row["id"]  # generation starts where the trained answer began
        assert (
            row["text"] == row["prompt"] + row["completion"] + row["text"][len(prompt + row["completion"]) :]
        )


@pytest.mark.parametrize("template", ["alpaca", "chat", "chatml", "tokenizer"])
def test_smollm2_saved_template_renders_what_format_rendered(template, tmp_path, pytestconfig):
    roundtrip(smollm2_dir(pytestconfig), template, tmp_path)


@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_gpt2_saved_template_renders_what_format_rendered(template, tmp_path, gpt2_dir):
    roundtrip(gpt2_dir, template, tmp_path)


@pytest.mark.parametrize(
    ("template", "words"),
    [("chatml", ["chatml", "<|im_start|>", "<|im_end|>"]), ("tokenizer", ["tokenizer", "chat template"])],
)
def test_gpt2_refuses_templates_it_cannot_stop_in(template, words, tmp_path, gpt2_dir):
    tok = AutoTokenizer.from_pretrained(str(gpt2_dir))
    with pytest.raises(TemplateError) as err:
        formatted(tok, template, tmp_path)
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words)


@pytest.fixture(scope="module")
def gpt2_base(tmp_path_factory):
    return tiny_gpt2_base(tmp_path_factory.mktemp("gpt2"))


def test_base_model_saves_a_pad_token(gpt2_base):
    base = gpt2_base
    assert AutoTokenizer.from_pretrained(str(base)).pad_token == "<|endoftext|>"
    assert json.loads((base / "generation_config.json").read_text())["pad_token_id"] == 50256


def test_gpt2_base_through_format_train_and_evaluate(gpt2_base, tmp_path):
    from sftpipe.model.evaluate import EvaluateParams, evaluate

    base = gpt2_base
    data, rows = formatted_processed(base, tmp_path)
    assert len(rows) == 40  # nothing dropped: the pad token came from models/base
    params = TrainParams(
        method="full", max_steps=6, batch_tokens=100, learning_rate=3e-3, warmup=0, save_steps=3, device="cpu"
    )
    result = train(params, 1, data, base, tmp_path / "sft", tmp_path / "ckpt")
    report = result.report
    assert report["template"] == "chat" and report["packing"] is True
    assert report["rows"]["available"] == report["rows"]["used"] == 24 and report["rows"]["seen"] >= 6
    assert 0 < report["trained_tokens"]["seen"] < report["tokens_seen"]
    assert report["trained_tokens"]["used"] == sum(sum(x != -100 for x in r["labels"]) for r in rows[:24])
    assert report["loss_end"] < report["loss_start"]
    sft = AutoTokenizer.from_pretrained(str(tmp_path / "sft"))
    assert sft.pad_token == "<|endoftext|>"
    conv = json.loads(rows[30]["messages"])
    assert sft.apply_chat_template(conv, tokenize=False) == rows[30]["text"]
    gen = json.loads((tmp_path / "sft" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 50256 and gen["pad_token_id"] == 50256

    ev = evaluate(
        EvaluateParams(max_examples=8, max_length=None, generations=2, max_new_tokens=8, device="cpu"),
        data, base, tmp_path / "sft", tmp_path / "generations.jsonl",
    )  # fmt: skip
    assert ev["generations"] == 2 and ev["trained"]["val"]["loss"] < ev["base"]["val"]["loss"]
