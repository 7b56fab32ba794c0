"""The contradiction (NLI) gate. No NLI model installs here, so the model is a real BERT sequence
classifier whose weights are set by hand to one rule a test can predict: "contradiction" when the
text holds the word "not" (uniform attention carries the word to [CLS]; every other token embeds
to zero), and all three labels equally likely otherwise. It runs through transformers exactly as
a downloaded NLI model does, so what is tested is the gate around it: the label found by name,
sentences scored one by one against the passage, the verdict, the report and the cache."""

from __future__ import annotations

import json

import pytest

from sftpipe.core.jsonio import read_jsonl
from sftpipe.distill.llm import RequestCache
from sftpipe.distill.nli import NliParams, contradiction_label, contradictions
from sftpipe.distill.slices import DistillError
from tests.distill.test_gate import _run
from tests.fake_openai import FakeOpenAI

LABELS = {0: "entailment", 1: "neutral", 2: "contradiction"}  # MoritzLaurer's order
PASSAGE = "Clean the data first. Count every drop. Keep the reasons."


def rule_model(folder, labels=LABELS):
    """A BERT NLI classifier with P(contradiction) 0.99 when the pair holds "not", else 1/3."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "not": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )
    hidden = 16
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=1,
        intermediate_size=hidden, max_position_embeddings=512, id2label=labels,
        label2id={v: k for k, v in labels.items()}, attn_implementation="eager",
    )  # fmt: skip
    model = BertForSequenceClassification(config)
    eye = torch.eye(hidden)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        bert = model.bert
        for norm in (
            bert.embeddings.LayerNorm,
            *(m for m in bert.modules() if isinstance(m, torch.nn.LayerNorm)),
        ):
            norm.weight.fill_(1.0)
        bert.embeddings.word_embeddings.weight[vocab["not"], 0] = 10.0
        layer = bert.encoder.layer[0]
        layer.attention.self.value.weight.copy_(eye)  # query = key = 0: every token weighs the same
        layer.attention.output.dense.weight.copy_(eye)
        bert.pooler.dense.weight.copy_(eye)
        contra = next(int(i) for i, n in labels.items() if n.startswith("contra"))
        model.classifier.weight[contra, 0] = 5.0
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def nli_model(tmp_path_factory):
    return rule_model(tmp_path_factory.mktemp("nli"))


def test_the_contradiction_label_is_found_by_name_in_any_order():
    assert contradiction_label(LABELS) == 2
    assert contradiction_label({0: "CONTRADICTION", 1: "entailment", 2: "neutral"}) == 0
    with pytest.raises(DistillError, match=r"labels \['LABEL_0', 'LABEL_1'\] name no single contradiction"):
        contradiction_label({0: "LABEL_0", 1: "LABEL_1"})


def test_each_sentence_is_read_against_the_passage_and_the_worst_counts(nli_model, tmp_path):
    params = NliParams(model=nli_model)
    cache = RequestCache(tmp_path / "c.sqlite")
    items = [
        (PASSAGE, "Clean the data first. Keep the reasons."),
        (PASSAGE, "Clean the data first. Do not keep the reasons."),  # one sentence contradicted
        (PASSAGE, "Not first."),
    ]
    got = contradictions(params, items, cache)
    assert got[0] == pytest.approx(1 / 3, abs=1e-3) and got[1] > 0.98 and got[2] > 0.98
    assert len(cache) == 3 and contradictions(params, items[1:2], cache) == got[1:2]  # from the cache
    cache.close()
    other = rule_model(tmp_path / "other", {0: "contradiction", 1: "entailment", 2: "neutral"})
    assert contradictions(NliParams(model=other), items) == pytest.approx(got, abs=1e-3)


def test_the_stage_drops_contradicted_pairs_and_reports_the_nli_gate(nli_model, tmp_path, capsys):
    """The fake generator's pairs hold no "not"; the contradicted controls do (negate() inserts it
    or "It is not true that"), so the gate drops exactly those, and the calibration measures it."""
    with FakeOpenAI() as srv:
        gate = {"grounding": {"enabled": False}, "nli": {"model": nli_model}}
        tally, meta = _run(tmp_path, srv, [{"name": "yes", "model": "fake"}], **gate)
        assert "distill nli: scoring 15 pairs" in capsys.readouterr().err  # 4 real, 11 controls
        _run(tmp_path, srv, [{"name": "yes", "model": "fake"}], **gate)
        assert "distill nli" not in capsys.readouterr().err  # every score from the request cache
    assert tally.as_dict() == {"in": 4, "out": 4, "dropped": {}}
    assert meta["control_verdicts"]["contradicted"] == {"contradicts_passage": 2}
    assert all(
        "contradicts_passage" not in v for k, v in meta["control_verdicts"].items() if k != "contradicted"
    )
    assert meta["calibration"]["nli"]["auc_by_kind"]["contradicted"] == 1.0
    controls = list(read_jsonl(tmp_path / "out" / "controls.jsonl"))
    assert all(c["contradiction"] > 0.98 for c in controls if c["kind"] == "contradicted")
    records = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").open()]
    assert all(r["meta"]["contradiction"] == pytest.approx(1 / 3, abs=1e-3) for r in records)


def test_gate_off_by_default_writes_no_contradiction_field(tmp_path):
    with FakeOpenAI() as srv:
        _run(tmp_path, srv, [{"name": "yes", "model": "fake"}], grounding={"enabled": False}, calibrate=False)
    controls_off = (tmp_path / "out" / "records.jsonl").read_text()
    assert controls_off and "contradiction" not in controls_off


def test_missing_nli_model_is_one_clear_line(tmp_path):
    with FakeOpenAI() as srv, pytest.raises(DistillError, match="distill.nli.model: no model in .*none"):
        _run(tmp_path, srv, [{"name": "yes", "model": "fake"}], nli={"model": str(tmp_path / "none")})
    with pytest.raises(ValueError, match="max_contradiction must be between 0 and 1"):
        NliParams(max_contradiction=1.5)
