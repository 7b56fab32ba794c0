"""The format stage: Parquet rows, length handling, accounting, reports, determinism, real data."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import zip_longest
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

import sftpipe.data.format.formatter as fmt
from sftpipe.core.jsonio import dumps, read_jsonl, write_jsonl
from sftpipe.core.records import make_record
from sftpipe.data.format.formatter import (
    FormatParams,
    SanityError,
    drop_history,
    exchanges,
    format_file,
    format_records,
)
from sftpipe.data.format.tokenizer import IGNORE, Encoded, FastBPE, ensure_pad_token
from sftpipe.data.ingest import ingest
from sftpipe.io.sources import SourceSpec
from tests.conftest import GPT2, ROOT
from tests.smollm2 import smollm2_dir

COLUMNS = ["id", "source", "cluster", "messages", "meta", "text", "prompt", "completion",
           "input_ids", "labels", "n_tokens"]  # fmt: skip


@pytest.fixture
def gpt2():
    if not GPT2.is_dir():
        pytest.skip("../shared/tokenizers/gpt2 is absent")
    return AutoTokenizer.from_pretrained(GPT2)  # fresh: the stage sets its pad token


@pytest.fixture(scope="module")
def smol_dir(request):
    return smollm2_dir(request.config)


def u(text: str) -> dict:
    return {"role": "user", "content": text}


def a(text: str) -> dict:
    return {"role": "assistant", "content": text}


def rec(name: str, messages: list[dict], **meta) -> dict:
    return make_record("t", messages, {"cluster": f"c-{name}", **meta}, orig_id=name)


def run(tmp_path, records, tok, **params):
    tally, extra = format_records(
        records, tok, FormatParams(**params), tmp_path / "out", tokenizer_path="tok"
    )
    rows = pq.read_table(tmp_path / "out" / "data.parquet").to_pylist()
    rejected = list(read_jsonl(tmp_path / "out" / "rejected.jsonl"))
    return tally, extra, rows, rejected


def test_rows_have_the_contract_columns_and_exact_values(tmp_path, gpt2):
    records = [rec("1", [u("Name a color."), a("Blue.")])]
    tally, extra, rows, rejected = run(tmp_path, records, gpt2, template="alpaca", max_length=64)
    table = pq.read_table(tmp_path / "out" / "data.parquet")
    assert table.schema.names == COLUMNS
    for name in ("input_ids", "labels"):
        assert pa.types.is_list(table.schema.field(name).type)
        assert table.schema.field(name).type.value_type == pa.int32()
    assert table.schema.field("n_tokens").type == pa.int32()
    [row] = rows
    text = (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nName a color.\n\n### Response:\nBlue.<|endoftext|>"
    )
    ids = gpt2(text, add_special_tokens=False)["input_ids"]
    n_prompt = len(gpt2(text.removesuffix("Blue.<|endoftext|>"))["input_ids"])
    assert row == {
        "id": "t/1",
        "source": "t",
        "cluster": "c-1",
        "messages": '[{"content":"Name a color.","role":"user"},{"content":"Blue.","role":"assistant"}]',
        "meta": '{"cluster":"c-1"}',
        "text": text,
        "prompt": text.removesuffix("Blue.<|endoftext|>"),
        "completion": "Blue.<|endoftext|>",
        "input_ids": ids,
        "labels": [IGNORE] * n_prompt + ids[n_prompt:],
        "n_tokens": len(ids),
    }
    assert gpt2.decode(ids[n_prompt:]) == "Blue.<|endoftext|>"
    assert (tally.n_in, tally.n_out, rejected) == (1, 1, [])


def test_gpt2_pad_token_is_set_and_reported(tmp_path, gpt2):
    assert gpt2.pad_token is None
    _, extra, _, _ = run(tmp_path, [rec("1", [u("Q"), a("A")])], gpt2, template="chat")
    assert gpt2.pad_token == "<|endoftext|>"
    assert extra["tokenizer"] == {
        "name": "tok",
        "class": "GPT2Tokenizer",
        "vocab_size": 50257,
        "eos_token": "<|endoftext|>",
        "bos_prefix": "",
        "pad_token": "<|endoftext|>",
        "pad_token_set": True,
        "encoder": "tiktoken",
        "digest": extra["tokenizer"]["digest"],
    }
    assert len(extra["tokenizer"]["digest"]) == 16
    assert ensure_pad_token(gpt2) is False  # already set now


def test_smollm2_keeps_its_pad_token(tmp_path, smol_dir):
    tok = AutoTokenizer.from_pretrained(smol_dir)
    _, extra, rows, _ = run(tmp_path, [rec("1", [u("Hi"), a("Hello")])], tok, template="tokenizer")
    assert (extra["tokenizer"]["pad_token"], extra["tokenizer"]["pad_token_set"]) == ("<|im_end|>", False)
    [row] = rows
    trained = [i for i, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != IGNORE]
    assert tok.decode(trained) == row["completion"] == "Hello<|im_end|>"
    assert row["prompt"].startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_train_on_prompt(tmp_path, gpt2):
    _, _, rows, _ = run(tmp_path, [rec("1", [u("Q"), a("A")])], gpt2, template="chat", train_on_prompt=True)
    assert rows[0]["labels"] == rows[0]["input_ids"]


def test_drops_are_counted_with_reasons_and_written(tmp_path, gpt2):
    records = [
        rec("ok", [u("Q"), a("A")]),
        rec("empty", [u("Q"), a("  ")]),
        rec("noprompt", [u(" "), a("A")]),
        rec("tool", [u("Q"), {"role": "tool", "content": "x"}, a("A")]),
        rec("text", [a("Just text.")], kind="text"),
    ]
    tally, extra, rows, rejected = run(tmp_path, records, gpt2, template="alpaca")
    assert [r["id"] for r in rows] == ["t/ok", "t/text"]
    assert rows[1]["prompt"] == "" and rows[1]["labels"] == rows[1]["input_ids"]
    assert dict(tally.dropped) == {"empty_completion": 1, "empty_prompt": 1, "template_no_tools": 1}
    assert [(r["reason"], r["id"], r["record"]["id"]) for r in rejected] == [
        ("empty_completion", "t/empty", "t/empty"),
        ("empty_prompt", "t/noprompt", "t/noprompt"),
        ("template_no_tools", "t/tool", "t/tool"),
    ]
    assert tally.n_in == tally.n_out + sum(tally.dropped.values()) == 5


def test_exchanges_and_drop_history():
    msgs = [
        {"role": "system", "content": "S"},
        u("1"),
        a("1"),
        u("2"),
        u("2b"),
        a("2"),
        a("2c"),
        u("3"),
        a("3"),
    ]
    head, groups = exchanges(msgs)
    assert head == msgs[:1] and [len(g) for g in groups] == [2, 4, 2]
    assert drop_history(msgs, 1) == [msgs[0], u("2"), u("2b"), a("2"), a("2c"), u("3"), a("3")]
    assert drop_history(msgs, 2) == [msgs[0], u("3"), a("3")]


def _long_conversation() -> list[dict]:
    word = " word" * 40  # 40 GPT-2 tokens
    return [
        {"role": "system", "content": "Be kind."},
        u("first" + word), a("one" + word),
        u("second" + word), a("two" + word),
        u("third"), a("three"),
    ]  # fmt: skip


def test_overlong_drop_vs_drop_history(tmp_path, gpt2):
    conv = _long_conversation()
    full = run(tmp_path / "n", [rec("x", conv)], gpt2, template="chat", max_length=10_000)[2][0]["n_tokens"]
    assert 180 < full < 200
    # drop: the whole conversation is too long
    tally, _, rows, rejected = run(
        tmp_path / "d", [rec("x", conv)], gpt2, template="chat", max_length=150, overlong="drop"
    )
    assert (rows, dict(tally.dropped)) == ([], {"too_long": 1})
    assert rejected[0]["n_tokens"] == full and rejected[0]["record"]["messages"] == conv
    # drop_history: the first exchange goes (system prompt kept), the rest fits
    tally, extra, rows, _ = run(
        tmp_path / "h", [rec("x", conv)], gpt2, template="chat", max_length=150, overlong="drop_history"
    )
    [row] = rows
    assert json.loads(row["messages"]) == [conv[0], *conv[3:]]
    assert row["text"].startswith("Be kind.\n\nHuman: second") and row["n_tokens"] <= 150
    assert json.loads(row["meta"])["history_dropped"] == 1
    assert (extra["history_dropped_exchanges"], dict(tally.changed)) == (1, {"history_dropped": 1})
    # only the last exchange fits
    _, extra, rows, _ = run(tmp_path / "h2", [rec("x", conv)], gpt2, template="chat", max_length=30,
                            overlong="drop_history")  # fmt: skip
    assert json.loads(rows[0]["messages"]) == [conv[0], *conv[5:]]
    assert extra["history_dropped_exchanges"] == 2


def test_drop_history_drops_when_the_last_exchange_alone_does_not_fit(tmp_path, gpt2):
    conv = _long_conversation()
    conv[-2] = u("third" + " word" * 60)  # the last exchange alone is > 50 tokens
    tally, _, rows, rejected = run(tmp_path, [rec("x", conv)], gpt2, template="chat", max_length=50,
                                   overlong="drop_history")  # fmt: skip
    assert rows == [] and dict(tally.dropped) == {"prompt_too_long": 1}
    assert rejected[0]["exchanges_removed"] == 2 and rejected[0]["record"]["messages"] == conv
    conv[-1] = a("three" + " word" * 60)
    conv[-2] = u("third")
    tally, _, _, _ = run(tmp_path / "b", [rec("x", conv)], gpt2, template="chat", max_length=50,
                         overlong="drop_history")  # fmt: skip
    assert dict(tally.dropped) == {"too_long": 1}


def test_prompt_too_long_single_turn(tmp_path, gpt2):
    records = [rec("p", [u("word " * 80), a("ok")]), rec("c", [u("Q"), a("word " * 80)])]
    tally, _, rows, rejected = run(
        tmp_path, records, gpt2, template="chat", max_length=40, overlong="drop_history"
    )
    assert rows == [] and [r["reason"] for r in rejected] == ["prompt_too_long", "too_long"]


def test_deterministic_bytes(tmp_path, gpt2):
    records = [rec(str(i), [u(f"Question {i}?"), a(f"Answer {i}.")]) for i in range(50)]
    records.append(rec("long", _long_conversation()))
    outs = []
    for name in ("a", "b"):
        tok = AutoTokenizer.from_pretrained(GPT2)
        tally, extra = format_records(
            iter(records), tok, FormatParams(template="chat", max_length=150), tmp_path / name
        )
        outs.append(
            [(tmp_path / name / f).read_bytes() for f in ("data.parquet", "rejected.jsonl")]
            + [orjson.dumps({**tally.as_dict(), **extra}, option=orjson.OPT_SORT_KEYS)]
        )
    assert outs[0] == outs[1]


def test_row_groups_span_chunks(tmp_path, gpt2, monkeypatch):
    monkeypatch.setattr(fmt, "CHUNK", 7)
    records = [rec(str(i), [u(f"Q{i}"), a(f"A{i}")]) for i in range(20)]
    tally, extra, rows, _ = run(tmp_path, records, gpt2, template="chat")
    assert [r["id"] for r in rows] == [f"t/{i}" for i in range(20)]
    assert pq.ParquetFile(tmp_path / "out" / "data.parquet").num_row_groups == 3
    assert extra["tokens"]["rows"] == 20 == tally.n_out


def test_sanity_failure_writes_nothing(tmp_path, gpt2, monkeypatch):
    def untrained(tok, rendered, train_on_prompt=False, fast=None):
        encs = tok.backend_tokenizer.encode_batch([r.text for r in rendered], add_special_tokens=False)
        return [Encoded(e.ids, []) for e in encs]

    monkeypatch.setattr(fmt, "encode", untrained)
    with pytest.raises(SanityError, match="nothing_trained"):
        format_records([rec("1", [u("Q"), a("A")])], gpt2, FormatParams(template="chat"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def real_mix(tmp_path, corpora) -> Path:
    """Real records with drops, shortened histories and multi-turn rows: OASST conversations (every
    path) and 1,500 Alpaca records, interleaved."""
    oasst = SourceSpec(path=str(corpora / "oasst1_en_100_tree.jsonl"), mode="all")
    ingest("oasst", oasst, tmp_path / "oasst")
    ingest(
        "alpaca", SourceSpec(path=str(corpora / "alpaca_5000.json"), max_samples=1500), tmp_path / "alpaca"
    )
    a = list(read_jsonl(tmp_path / "alpaca" / "records.jsonl"))
    b = list(read_jsonl(tmp_path / "oasst" / "records.jsonl"))
    mixed = [r for pair in zip_longest(a, b) for r in pair if r is not None]
    write_jsonl(tmp_path / "mix.jsonl", mixed)
    return tmp_path / "mix.jsonl"


MIX_PARAMS = FormatParams(template="chat", max_length=256, overlong="drop_history")


def outputs(out, tally, extra) -> list[bytes]:
    report = orjson.dumps({**tally.as_dict(), **extra}, option=orjson.OPT_SORT_KEYS)
    return [(out / f).read_bytes() for f in ("data.parquet", "rejected.jsonl")] + [report]


def test_workers_write_what_one_process_writes(tmp_path, corpora, gpt2_dir, monkeypatch):
    """Real data in parts of 256 lines: one in-process pass (`format_records`), one worker and two
    worker processes write the same bytes and the same report; a row group per chunk."""
    monkeypatch.setattr(fmt, "CHUNK", 256)
    src = real_mix(tmp_path, corpora)
    got = {}
    tally, extra = format_records(read_jsonl(src), AutoTokenizer.from_pretrained(gpt2_dir), MIX_PARAMS,
                                  tmp_path / "records", tokenizer_path=str(gpt2_dir))  # fmt: skip
    got["records"] = outputs(tmp_path / "records", tally, extra)
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        tally, extra = format_file(src, gpt2_dir, MIX_PARAMS, out, workers=workers)
        got[workers] = outputs(out, tally, extra)
    assert got["records"] == got[1] == got[2]
    assert (tally.n_in, tally.n_out, dict(tally.dropped), dict(tally.changed)) == MIX
    assert tally.n_in == tally.n_out + sum(tally.dropped.values())
    assert extra["history_dropped_exchanges"] == MIX_EXCHANGES and extra["checks"]["problems"] == {}
    assert pq.ParquetFile(out / "data.parquet").num_row_groups == -(-tally.n_in // 256)
    # decode checks: the kept rows among the first 100 input records and every 50th after them
    kept = {r["id"] for r in pq.read_table(out / "data.parquet", columns=["id"]).to_pylist()}
    positions = [k for k, r in enumerate(read_jsonl(src)) if r["id"] in kept]
    assert extra["checks"]["decoded_rows"] == sum(k < 100 or k % 50 == 0 for k in positions) == 119


MIX = (2064, 1876, {"prompt_too_long": 7, "too_long": 181}, {"history_dropped": 140})
MIX_EXCHANGES = 140


def test_a_bad_line_names_the_file_and_line(tmp_path, gpt2_dir, monkeypatch):
    monkeypatch.setattr(fmt, "CHUNK", 2)
    src = tmp_path / "in.jsonl"
    good = dumps(rec("1", [u("Q"), a("A")])).decode()
    src.write_text(f"{good}\n{good}\n\n{good}\n{{broken\n{good}\n")
    for workers in (1, 2):
        with pytest.raises(fmt.FormatError, match=rf"^{src}:5: invalid JSON"):
            format_file(src, gpt2_dir, FormatParams(template="chat"), tmp_path / "out", workers=workers)
        assert not (tmp_path / "out").exists()


def gpt2_with_normalizer(gpt2_dir: Path, dest: Path, normalizer: str) -> Path:
    """GPT-2 with a normalizer of the tokenizers library (which tiktoken cannot reproduce)."""
    dest.mkdir()
    definition = json.loads((gpt2_dir / "tokenizer.json").read_text())
    definition["normalizer"] = {"type": normalizer}
    (dest / "tokenizer.json").write_text(json.dumps(definition))
    config = json.loads((gpt2_dir / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # GPT2Tokenizer would drop the normalizer
    (dest / "tokenizer_config.json").write_text(json.dumps(config))
    return dest


def test_forked_workers_after_the_driver_used_the_tokenizers_threads(tmp_path, gpt2_dir, monkeypatch):
    """The tokenizers library's thread pool, once used by this process, is copied stopped into
    forked workers; with a tokenizer that tiktoken cannot reproduce (a normalizer) the workers
    encode through that library, which notices the fork and runs single-threaded: the stage
    finishes and writes what one process writes."""
    nfc = gpt2_with_normalizer(gpt2_dir, tmp_path / "nfc", "NFC")
    tok = AutoTokenizer.from_pretrained(nfc)
    assert FastBPE.of(tok) is None
    tok.backend_tokenizer.encode_batch([f"warm the pool {i}" for i in range(5000)])  # threads start
    monkeypatch.setattr(fmt, "CHUNK", 4)
    src = tmp_path / "in.jsonl"
    write_jsonl(src, [rec(str(i), [u(f"Question {i}?"), a(f"Answer {i}.")]) for i in range(40)])
    got = {}
    for workers in (2, 1):
        tally, extra = format_file(
            src, nfc, FormatParams(template="chat"), tmp_path / f"w{workers}", workers=workers
        )
        got[workers] = outputs(tmp_path / f"w{workers}", tally, extra)
    assert got[1] == got[2] and tally.n_out == 40


def test_sanity_failure_in_a_worker_writes_nothing(tmp_path, gpt2_dir, monkeypatch):
    """A tokenizer that lowercases (a lossy normalizer) decodes to other text than it was given:
    the workers' decode checks catch it, and the stage writes nothing."""
    lossy = gpt2_with_normalizer(gpt2_dir, tmp_path / "lossy", "Lowercase")
    monkeypatch.setattr(fmt, "CHUNK", 2)  # the driver sends it to the workers: several parts
    src = tmp_path / "in.jsonl"
    write_jsonl(src, [rec(str(i), [u("Q"), a("A")]) for i in range(5)])
    with pytest.raises(SanityError, match=r"decode_mismatch.*'decode_mismatch': 't/0'"):
        format_file(src, lossy, FormatParams(template="chat"), tmp_path / "out", workers=2)
    assert not (tmp_path / "out").exists()


def test_stage_script(tmp_path, corpora, gpt2_dir):
    src = tmp_path / "records.jsonl"
    write_jsonl(src, [rec("1", [u("Q"), a("A")]), rec("2", [u("Q2"), a("")])])
    params = tmp_path / "params.yaml"
    params.write_text(
        f"sources:\n  c:\n    path: {corpora / 'alpaca_5000.json'}\nformat:\n  template: chat\n"
    )
    cmd = [sys.executable, str(ROOT / "stages/format.py"), "--params", str(params), "--input", str(src),
           "--tokenizer", str(gpt2_dir), "--out", str(tmp_path / "fmt"), "--report", str(tmp_path / "r.json")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "format (chat): 2 in, 1 out" in proc.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["in"], report["out"], report["dropped"]) == (2, 1, {"empty_completion": 1})
    assert report["template"] == "chat" and report["tokenizer"]["pad_token_set"] is True
    # chatml on GPT-2 (no <|im_start|>/<|im_end|> tokens) is refused in one line, before any output
    params.write_text(params.read_text().replace("template: chat", "template: chatml"))
    proc = subprocess.run([*cmd[:-4], "--out", str(tmp_path / "fmt2"), "--report", str(tmp_path / "r2.json")],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 1 and not (tmp_path / "fmt2").exists()
    assert (
        proc.stderr.strip().splitlines()[-1].startswith("error: format.template: chatml needs <|im_start|>")
    )
    assert report["checks"]["problems"] == {} and report["tokens"]["rows"] == 1
    # a missing input is a one-line error
    cmd[cmd.index("--input") + 1] = str(tmp_path / "nope.jsonl")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope.jsonl'}: no such file (run the dedup stage first)"
    ]


def test_real_alpaca_gpt2(tmp_path, corpora, gpt2, gpt2_dir):
    """alpaca_5000 ingested, formatted with the alpaca template and GPT-2: every row decodes to its
    text, fits, trains exactly its response + EOS, and the counts balance."""
    ingest("alpaca", SourceSpec(path=str(corpora / "alpaca_5000.json")), tmp_path / "ingest")
    params = FormatParams(template="alpaca", max_length=256, overlong="drop")
    tally, extra = format_file(tmp_path / "ingest" / "records.jsonl", gpt2_dir, params, tmp_path / "out")
    rows = pq.read_table(tmp_path / "out" / "data.parquet").to_pylist()
    assert (tally.n_in, tally.n_out, dict(tally.dropped)) == (5000, REAL_OUT, REAL_DROPPED)
    assert tally.n_in == tally.n_out + sum(tally.dropped.values()) == 5000
    assert extra["checks"]["problems"] == {} and extra["tokens"]["max"] <= 256
    with_input = 0
    for r in rows:
        assert gpt2.decode(r["input_ids"]) == r["text"]
        assert len(r["input_ids"]) == len(r["labels"]) == r["n_tokens"] <= 256
        assert r["prompt"].strip() and r["completion"].strip()
        trained = [i for i, lab in zip(r["input_ids"], r["labels"], strict=True) if lab != IGNORE]
        assert (
            gpt2.decode(trained)
            == r["completion"]
            == json.loads(r["messages"])[-1]["content"] + "<|endoftext|>"
        )
        assert r["text"] == r["prompt"] + r["completion"]
        with_input += "\n\n### Input:\n" in r["prompt"]
        # Same labels as the Alpaca tutorial's way (prompt tokenized alone, masked by its length):
        # on this data the template/response boundary is always a token boundary.
        n_prompt = len(gpt2(r["prompt"])["input_ids"])
        assert r["labels"] == [IGNORE] * n_prompt + r["input_ids"][n_prompt:]
    assert with_input == REAL_WITH_INPUT
    assert rows[0]["prompt"].startswith("Below is an instruction that describes a task")


REAL_OUT, REAL_DROPPED, REAL_WITH_INPUT = (
    4860,
    {"empty_completion": 2, "prompt_too_long": 1, "too_long": 137},
    1898,
)


def test_real_multi_turn_smollm2_drop_history(tmp_path, corpora, smol_dir):
    """OASST conversations (every path) with SmolLM2's own template: each kept row trains exactly its
    assistant turns, each followed by <|im_end|>."""
    tok = AutoTokenizer.from_pretrained(smol_dir)
    spec = SourceSpec(path=str(corpora / "oasst1_en_100_tree.jsonl"), mode="all")
    ingest("oasst", spec, tmp_path / "ingest")
    params = FormatParams(template="tokenizer", max_length=512, overlong="drop_history")
    tally, extra = format_file(tmp_path / "ingest" / "records.jsonl", smol_dir, params, tmp_path / "out")
    rows = pq.read_table(tmp_path / "out" / "data.parquet").to_pylist()
    assert tally.n_in == 564 and tally.n_in == tally.n_out + sum(tally.dropped.values())
    assert (tally.n_out, dict(tally.dropped), dict(tally.changed)) == OASST
    for r in rows:
        assert tok.decode(r["input_ids"]) == r["text"] and r["n_tokens"] <= 512
        runs, current = [], []
        for i, lab in zip(r["input_ids"], r["labels"], strict=True):
            if lab != IGNORE:
                current.append(i)
            elif current:
                runs, current = [*runs, tok.decode(current)], []
        replies = [m["content"] + "<|im_end|>" for m in json.loads(r["messages"]) if m["role"] == "assistant"]
        assert runs == replies


OASST = (527, {"prompt_too_long": 7, "too_long": 30}, {"history_dropped": 90})


@pytest.mark.slow
def test_dvc_repro_format(tmp_path, corpora, gpt2_dir):
    """`dvc repro` of the format stage in a temporary copy: outputs, report, and that changing a
    format param re-runs it while changing the engine or the workers does not."""
    import shutil

    from tests.conftest import copy_repo, dvc

    repo = copy_repo(tmp_path / "repo")
    shutil.copytree(gpt2_dir, repo / "models" / "base")
    write_jsonl(repo / "data/interim/dedup/records.jsonl",
                [rec(str(i), [u(f"Question {i}?"), a(f"Answer {i}.")]) for i in range(30)])  # fmt: skip
    params = f"sources:\n  c:\n    path: {corpora / 'alpaca_5000.json'}\nformat:\n  template: alpaca\n"
    (repo / "params.yaml").write_text(params)
    dvc(repo, "repro", "--single-item", "format")
    report = json.loads((repo / "reports/format.json").read_text())
    assert (report["in"], report["out"], report["template"]) == (30, 30, "alpaca")
    rows = pq.read_table(repo / "data/interim/format/data.parquet").to_pylist()
    assert rows[0]["completion"] == "Answer 0.<|endoftext|>"
    assert "format" not in json.loads(dvc(repo, "status", "--json", "format").stdout or "{}")
    # where it runs is no dependency: the outputs are the same on any engine and any workers
    (repo / "params.yaml").write_text("engine: ray\nworkers: 1\n" + params)
    assert "format" not in json.loads(dvc(repo, "status", "--json", "format").stdout or "{}")
    (repo / "params.yaml").write_text(params + "  max_length: 512\n")
    assert "format" in json.loads(dvc(repo, "status", "--json", "format").stdout)


@pytest.mark.parametrize("estimate", ["guided", "misleading"])
def test_drop_history_removes_the_fewest_exchanges(tmp_path, gpt2, monkeypatch, estimate):
    """The guided search finds the same number of removed exchanges as trying every one, at every
    boundary: max_length equal to each shortened length, and one token less; with estimates that
    are always wrong it falls back to bisection and still does."""
    if estimate == "misleading":
        monkeypatch.setattr(fmt._Search, "estimate", lambda self, k: 0)
    from sftpipe.data.format.templates import Renderer
    from sftpipe.data.format.tokenizer import encode

    sizes = [3, 30, 5, 12, 40, 2, 8, 20]
    conv = [{"role": "system", "content": "S"}]
    for i, n in enumerate(sizes):
        conv += [u(f"q{i}" + " w" * n), a(f"a{i}" + " x" * (n // 2))]
    render = Renderer("chat", gpt2)
    lengths = [len(encode(gpt2, [render(drop_history(conv, k))])[0].input_ids) for k in range(len(sizes))]
    assert lengths == sorted(lengths, reverse=True)
    limits = sorted({n - d for n in lengths for d in (0, 1)})
    for m in limits:
        expected = next((k for k, n in enumerate(lengths) if n <= m), None)
        _, _, rows, rejected = run(tmp_path / str(m), [rec("x", conv)], gpt2, template="chat", max_length=m,
                                   overlong="drop_history")  # fmt: skip
        got = json.loads(rows[0]["meta"]).get("history_dropped", 0) if rows else None
        assert got == expected, (m, lengths)
        if rows:
            assert rows[0]["n_tokens"] == lengths[expected]
        else:
            assert rejected[0]["exchanges_removed"] == len(sizes) - 1
