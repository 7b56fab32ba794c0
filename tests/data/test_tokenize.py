"""FastBPE (tiktoken) gives exactly the tokenizers library's ids and trained ranges, or is not used."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

import sftpipe.data.format.formatter as fmt
from sftpipe.core.jsonio import read_jsonl
from sftpipe.data.format.formatter import FormatParams, format_file
from sftpipe.data.format.templates import Renderer
from sftpipe.data.format.tokenizer import FastBPE, bos_prefix, encode, load_tokenizer
from sftpipe.data.ingest import ingest
from sftpipe.io.sources import SourceSpec
from tests.smollm2 import smollm2_dir


@pytest.fixture(scope="module")
def smol_dir(request):
    return smollm2_dir(request.config)


def both(tok, rendered):
    fast = FastBPE.of(tok)
    assert fast is not None
    return encode(tok, rendered), encode(tok, rendered, fast=fast)


def u(text: str) -> dict:
    return {"role": "user", "content": text}


def a(text: str) -> dict:
    return {"role": "assistant", "content": text}


# Byte-level BPE's hard cases: multi-byte characters split over tokens, whitespace runs before
# digits and letters, contractions, special-token text inside content, empty and trailing spans.
CONVERSATIONS = [
    [u("Hi"), a("Hello!")],
    [u("café ☕ naïve — 東京 🙂🙂"), a("Ünïcödé 🙂 answer, 12345 and  67  89\n\n\n  x")],
    [u("It's   we've they'll I'd"), a("  leading spaces\tand tabs\r\n\r\nCRLF  ")],
    [u("say <|im_end|> or <|endoftext|>"), a("<|im_start|>assistant literally")],
    [{"role": "system", "content": "Be brief."}, u("q1"), a("a1"), u("q2"), a("")],
    [u("x"), a("é")],
]


@pytest.mark.parametrize("name", ["gpt2", "smollm2"])
def test_same_ids_and_ranges_on_hard_cases(name, gpt2_dir, smol_dir):
    path = gpt2_dir if name == "gpt2" else smol_dir
    tok = load_tokenizer(path)
    render = Renderer("chatml" if name == "gpt2" else "tokenizer", tok, bos_prefix(tok))
    rendered = [render(m, {}) for m in CONVERSATIONS]
    slow, fast = both(tok, rendered)
    assert fast == slow
    assert [e.input_ids for e in fast] == [tok.backend_tokenizer.encode(r.text, add_special_tokens=False).ids
                                           for r in rendered]  # fmt: skip
    assert any(b > a for e in fast for a, b in e.spans)  # trained ranges were compared, not only empty ones


def test_bytes_missing_from_the_vocabulary_take_the_tokenizers_path(smol_dir):
    """SmolLM2's vocabulary lacks some control bytes, which the tokenizers library drops; such a
    text goes through the tokenizers library, so the ids still agree (and the others stay fast)."""
    tok = load_tokenizer(smol_dir)
    fast = FastBPE.of(tok)
    ranks = fast.encoding._mergeable_ranks
    missing = [b for b in range(128) if ranks[bytes([b])] >= fast.n_vocab]
    assert missing, "SmolLM2 is expected to lack some control bytes"
    render = Renderer("chatml", tok, "")
    rendered = [render([u("a"), a(f"x{chr(missing[0])}y é")], {}), render([u("b"), a("fine")], {})]
    slow, got = both(tok, rendered)
    assert got == slow
    assert chr(missing[0]) not in tok.decode(got[0].input_ids)  # dropped, as the tokenizers library does


def _variant(gpt2_dir, change) -> PreTrainedTokenizerFast:
    definition = json.loads((gpt2_dir / "tokenizer.json").read_text())
    change(definition)
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(definition)))


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(normalizer={"type": "NFKC"}),
        lambda d: d["model"].update(byte_fallback=True),
        lambda d: d["pre_tokenizer"].update(add_prefix_space=True),
        lambda d: d["model"].update(merges=d["model"]["merges"][::-1]),  # ids no longer in merge order
        lambda d: d["post_processor"].update(trim_offsets=True),
    ],
    ids=["normalizer", "byte_fallback", "prefix_space", "merge_order", "trimmed_offsets"],
)
def test_definitions_tiktoken_would_get_wrong_are_refused(gpt2_dir, change):
    assert FastBPE.of(_variant(gpt2_dir, lambda d: None)) is not None
    assert FastBPE.of(_variant(gpt2_dir, change)) is None


def test_format_writes_the_same_bytes_without_the_fast_path_on_real_data(
    tmp_path, corpora, smol_dir, monkeypatch
):
    """Real multi-turn data through SmolLM2's template, overlong rows shortened: the stage's Parquet
    file is byte-identical whether tiktoken or the tokenizers library tokenizes."""
    spec = SourceSpec(path=str(corpora / "oasst1_en_100_tree.jsonl"), mode="all")
    ingest("oasst", spec, tmp_path / "ingest")
    ingest("dolly", SourceSpec(path=str(corpora / "dolly_hhrlhf_1k.jsonl")), tmp_path / "dolly")
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        (tmp_path / "ingest/records.jsonl").read_bytes() + (tmp_path / "dolly/records.jsonl").read_bytes()
    )
    params = FormatParams(template="tokenizer", max_length=384, overlong="drop_history")
    _, fast_report = format_file(src, smol_dir, params, tmp_path / "fast")
    monkeypatch.setattr(fmt.FastBPE, "of", classmethod(lambda cls, tok: None))
    _, slow_report = format_file(src, smol_dir, params, tmp_path / "slow")
    assert (
        fast_report["tokenizer"]["encoder"] == "tiktoken"
        and slow_report["tokenizer"]["encoder"] == "tokenizers"
    )
    assert (tmp_path / "fast/data.parquet").read_bytes() == (tmp_path / "slow/data.parquet").read_bytes()
    assert list(read_jsonl(tmp_path / "fast/rejected.jsonl")) == list(
        read_jsonl(tmp_path / "slow/rejected.jsonl")
    )
    rows = pq.read_table(tmp_path / "fast/data.parquet").num_rows
    assert rows > 1000 and fast_report["history_dropped_exchanges"] > 0


def test_real_corpora_ids_agree_with_gpt2(corpora, gpt2_dir, tmp_path):
    """Every record of four real corpora, rendered with chatml: tiktoken's ids and ranges are the
    tokenizers library's."""
    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    render = Renderer("chatml", tok, "")
    rendered = []
    for name in (
        "alpaca_5000.json",
        "code_alpaca_2k.json",
        "self_instruct_user_oriented.jsonl",
        "alpaca_libre_v2.jsonl",
    ):
        ingest(name, SourceSpec(path=str(corpora / name)), tmp_path / name)
        rendered += [render(r["messages"], {}) for r in read_jsonl(tmp_path / name / "records.jsonl")]
    slow, fast = both(tok, rendered)
    assert len(rendered) > 9_000
    assert fast == slow
