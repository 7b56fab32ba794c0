"""The quality gate: control pairs built from the slices, each judge's AUC on them, judges below
min_judge_auc ignored, and the grounding gain of the base model (models/base, when present).
Judges are the fake server's (tests/fake_openai.py): "oracle" scores only the passage's own whole
sentences high, the default fake judge scores everything 9."""

from __future__ import annotations

import json

import pytest

from sftpipe.core.jsonio import read_jsonl
from sftpipe.distill.controls import BAD, GOOD, auc, control_pairs, negate, truncate
from sftpipe.distill.grounding import GroundingParams, signals
from sftpipe.distill.run import distill
from sftpipe.distill.slices import DistillError, chunks_of, read_slices
from tests.conftest import ROOT, write_lines
from tests.distill.test_distill import make_params
from tests.fake_openai import FakeOpenAI

SLICES = [
    json.dumps({"id": "a", "content": "Clean the data first. Count every drop. Keep the reasons."}),
    json.dumps({"id": "b", "content": "Deduplicate before you split. Near copies leak into the test set."}),
]


def test_auc_counts_ties_half():
    assert auc([9, 8], [2, 1]) == 1.0 and auc([2], [9]) == 0.0
    assert auc([5, 5], [5, 5]) == 0.5 and auc([9, 5], [5, 1]) == 0.875
    assert auc([], [1]) is None and auc([1], []) is None


def test_controls_from_real_slices_are_what_they_claim():
    chunks = chunks_of(read_slices(ROOT / "data/knowledge/slices.jsonl"), 1500)
    controls = control_pairs(chunks)
    assert len(controls) == 6 * len(chunks) == 30
    by = {(c.chunk.id, c.kind): c for c in controls}
    first = chunks[0]
    lead = by[(first.id, "lead")].pair["response"]
    assert lead in first.content and lead.endswith(".")
    assert by[(first.id, "tail")].pair["response"] in first.content
    assert by[(first.id, "other_slice")].pair["response"] in chunks[1].content
    cut = by[(first.id, "truncated")].pair["response"]
    assert lead.startswith(cut) and len(cut) < len(lead) / 2 + 10 and not cut.endswith(".")
    assert by[(first.id, "contradicted")].pair["response"] not in first.content
    assert by[(first.id, "off_topic")].pair["response"] not in " ".join(c.content for c in chunks)
    assert {c.label for c in controls if c.kind in GOOD} == {1}
    assert {c.label for c in controls if c.kind in BAD} == {0}


def test_negate_and_truncate():
    assert negate("Exact copies are found by hashing. Keep the seed.") == (
        "Exact copies are not found by hashing. It is not true that keep the seed."
    )
    assert negate("Remove duplicates before you split.") == "Remove duplicates after you split."
    assert truncate("one two three four five six seven eight nine ten.") == "one two three four"


def _run(tmp_path, srv, judges, **over):
    endpoint = {"base_url": srv.url}
    write_lines(tmp_path / "slices.jsonl", SLICES)
    params = make_params(
        tmp_path,
        srv.url,
        judges=[{**endpoint, **j} for j in judges],
        **{"calibrate": True, "min_votes": 1, **over},
    )
    return distill(params, 1, tmp_path / "out")


def test_calibration_keeps_the_good_judge_and_ignores_the_bad_one(tmp_path, capsys):
    with FakeOpenAI() as srv:
        tally, meta = _run(
            tmp_path, srv, [{"name": "oracle", "model": "oracle"}, {"name": "yes", "model": "fake"}]
        )
    cal = meta["calibration"]
    assert cal["oracle"]["auc"] == 1.0 and (cal["oracle"]["good"], cal["oracle"]["bad"]) == (
        3,
        8,
    )  # "b" has no tail
    assert cal["yes"]["auc"] == 0.5
    assert meta["judges_used"] == ["oracle"]
    assert (
        "judge yes ignored: AUC 0.50 on the control pairs, below min_judge_auc 0.7" in capsys.readouterr().err
    )
    # The real pairs (the passage plus a seed note, so not whole passage sentences) fail the oracle.
    assert tally.as_dict() == {"in": 4, "out": 0, "dropped": {"low_score": 4}}
    controls = list(read_jsonl(tmp_path / "out" / "controls.jsonl"))
    assert len(controls) == 11 and {c["kind"] for c in controls} == set(GOOD) | set(BAD)
    assert all(c["judges"]["oracle"]["weighted"] == (9.0 if c["label"] else 2.0) for c in controls)
    records = (tmp_path / "out" / "records.jsonl").read_text()
    assert "control" not in records  # controls are never exported
    # the gate's verdict on every control: what it would keep of each kind
    assert all(c["verdict"] == ("kept" if c["label"] else "low_score") for c in controls)
    assert meta["control_verdicts"] == {
        "contradicted": {"low_score": 2}, "lead": {"kept": 2}, "off_topic": {"low_score": 2},
        "other_slice": {"low_score": 2}, "tail": {"kept": 1}, "truncated": {"low_score": 2},
    }  # fmt: skip
    assert cal["oracle"]["auc_by_kind"] == dict.fromkeys(BAD, 1.0)


def test_no_judge_left_and_no_other_gate_fails_the_stage(tmp_path):
    with FakeOpenAI() as srv, pytest.raises(DistillError, match=r"no judge tells good from bad .*yes 0\.5"):
        _run(tmp_path, srv, [{"name": "yes", "model": "fake"}])
    assert not (tmp_path / "out").exists()


def test_calibration_off_trusts_every_judge(tmp_path):
    with FakeOpenAI() as srv:
        tally, meta = _run(tmp_path, srv, [{"name": "yes", "model": "fake"}], calibrate=False)
        assert srv.n_requests == 4 + 4  # no control pairs asked
    assert tally.n_out == 4 and meta["calibration"] == {} and meta["judges_used"] == ["yes"]


@pytest.fixture(scope="module")
def base_model():
    if not (ROOT / "models/base/config.json").is_file():
        pytest.skip("models/base is not materialized (dvc repro base_model)")
    return str(ROOT / "models/base")


def test_grounding_gain_separates_grounded_from_off_topic_answers(base_model, tmp_path):
    from sftpipe.distill.llm import RequestCache

    passage = "Remove duplicates before you split the data, so the test score measures skill."
    ask = {"instruction": "When should duplicates be removed?", "input": ""}
    grounded = {**ask, "response": "Before you split the data, so the test score measures skill."}
    off = {**ask, "response": "Our service is available 24/7 and our staff are happy to help."}
    params = GroundingParams(model=base_model, max_tokens=128)
    cache = RequestCache(tmp_path / "c.sqlite")
    scored = signals(params, [(passage, grounded), (passage, off)], cache)
    first = [s["gain"] for s in scored]
    assert first[0] > 1.0 > first[1] and first[0] - first[1] > 1.0
    assert len(cache) == 2 and signals(params, [(passage, off)], cache) == scored[1:]  # from the cache
    cache.close()


def test_grounding_verdict_names_each_signal_and_skips_what_is_off_or_unmeasured():
    from sftpipe.distill.gate import grounding_verdict
    from sftpipe.distill.run import Unit
    from sftpipe.distill.slices import Chunk

    gate = GroundingParams(min_gain=1.5, min_end_logprob=-15.0, min_token_gain=-4.0)

    def verdict(gain, end, low, params=gate):
        unit = Unit(0, Chunk("a", "a", "text", {}), 0, grounding=gain, end_logprob=end, min_token_gain=low)
        return grounding_verdict(unit, params)

    assert verdict(4.0, -1.0, 0.1) == "kept"
    assert verdict(1.0, -1.0, 0.1) == "ungrounded" and verdict(None, -1.0, 0.1) == "ungrounded"
    assert verdict(float("nan"), -1.0, 0.1) == "ungrounded"
    assert verdict(4.0, -20.0, 0.1) == "incomplete"
    assert verdict(4.0, -1.0, -5.0) == "contradicts_passage"
    assert verdict(4.0, None, None) == "kept"  # not measurable (response cut to the budget)
    off = gate.model_copy(update={"min_end_logprob": None, "min_token_gain": None})
    assert verdict(4.0, -20.0, -5.0, off) == "kept"


def test_end_of_turn_is_the_chat_templates_own(base_model):
    from transformers import AutoTokenizer

    from sftpipe.distill.grounding import end_of_turn

    tok = AutoTokenizer.from_pretrained(base_model)
    assert tok.decode([end_of_turn(tok)]) == "<|im_end|>"
    tok.chat_template = "{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}"
    assert tok.decode([end_of_turn(tok)]) == ">>"  # whatever follows the assistant's text
    tok.chat_template = None
    assert end_of_turn(tok) == tok.eos_token_id  # no template: the EOS token


def test_base_model_drops_a_truncated_and_a_negated_copy_and_keeps_the_good_one(base_model, tmp_path):
    """Two sentences of a shipped slice, answered with the passage, the passage cut mid-sentence
    and the passage negated (controls.py), and with a paraphrase: scored by the real base model
    with the default thresholds."""
    from sftpipe.distill.gate import grounding_verdict
    from sftpipe.distill.grounding import signals
    from sftpipe.distill.run import Unit
    from sftpipe.distill.slices import Chunk

    passage = (
        "Remove duplicates before you split the data. Exact copies are found by hashing the normalised text."
    )
    answers = {
        "copy": passage,
        "paraphrase": "Duplicates are removed before the split, and exact copies are found by hashing the text.",
        "truncated": truncate(passage),
        "negated": negate(passage),
    }
    assert answers["negated"].count(" not ") == 1 and " after " in answers["negated"]
    gate = GroundingParams(model=base_model, max_tokens=256)
    ask = {"instruction": "Summarize what the passage says.", "input": ""}
    found = signals(gate, [(passage, {**ask, "response": r}) for r in answers.values()])
    verdicts = {}
    for name, got in zip(answers, found, strict=True):
        unit = Unit(0, Chunk("a", "a", passage, {}), 0, grounding=got["gain"], end_logprob=got["end_logprob"],
                    min_token_gain=got["min_token_gain"])  # fmt: skip
        verdicts[name] = grounding_verdict(unit, gate)
    assert verdicts == {
        "copy": "kept",
        "paraphrase": "kept",
        "truncated": "incomplete",
        "negated": "contradicts_passage",
    }, found
    # every copy gains from the passage: the mean gain alone would keep all four
    assert min(g["gain"] for g in found) > gate.min_gain


@pytest.mark.slow
def test_default_gate_on_the_labelled_pairs(base_model, tmp_path):
    """The 20 hand-labelled pairs (tests/distill/data) through the default grounding gate with the
    real base model: every good pair kept, every bad one dropped; the truncated one (a paraphrase
    cut short, so it gains too little and is dropped as ungrounded first) would be incomplete too."""
    from sftpipe.distill.gate import grounding_verdict
    from sftpipe.distill.grounding import signals
    from sftpipe.distill.run import Unit

    rows = list(read_jsonl(ROOT / "tests/distill/data/labelled_pairs.jsonl"))
    passages = {s["id"]: s["content"] for s in read_slices(ROOT / "data/knowledge/slices.jsonl")}
    gate = GroundingParams(model=base_model)
    found = signals(gate, [(passages[r["slice"]], r) for r in rows])
    verdicts = []
    for row, got in zip(rows, found, strict=True):
        chunk = chunks_of([{"id": row["slice"], "content": passages[row["slice"]], "metadata": {}}], 1500)[0]
        unit = Unit(0, chunk, 0, grounding=got["gain"], end_logprob=got["end_logprob"],
                    min_token_gain=got["min_token_gain"])  # fmt: skip
        verdicts.append((row["kind"], row["label"], grounding_verdict(unit, gate)))
    assert all(v == "kept" for _, label, v in verdicts if label == 1), verdicts
    assert all(v != "kept" for _, label, v in verdicts if label == 0), verdicts
    ends = {r["kind"]: g["end_logprob"] for r, g in zip(rows, found, strict=True) if r["kind"] == "truncated"}
    assert gate.min_end_logprob is not None and ends["truncated"] < gate.min_end_logprob
    good_ends = [g["end_logprob"] for r, g in zip(rows, found, strict=True) if r["label"] == 1]
    assert min(good_ends) > gate.min_end_logprob + 5  # a wide margin, not a lucky threshold


def test_missing_base_model_is_one_clear_line(tmp_path):
    with FakeOpenAI() as srv, pytest.raises(DistillError, match="distill.grounding.model: no model in"):
        _run(tmp_path, srv, [{"name": "yes", "model": "fake"}], grounding={"model": str(tmp_path / "none")})


def _score_cli(tmp_path, params: dict, pairs: list[dict]) -> tuple[int, str, str]:
    import subprocess
    import sys

    import yaml

    write_lines(tmp_path / "slices.jsonl", SLICES)
    write_lines(tmp_path / "pairs.jsonl", [json.dumps(p) for p in pairs])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seed": 1, "distill": params}))
    cmd = [sys.executable, "-m", "sftpipe.distill", "score", "--params", str(tmp_path / "params.yaml")]
    cmd += ["--slices", str(tmp_path / "slices.jsonl"), "--pairs", str(tmp_path / "pairs.jsonl")]
    proc = subprocess.run(
        [*cmd, "--out", str(tmp_path / "scored.jsonl")], cwd=ROOT, capture_output=True, text=True
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_score_command_scores_given_pairs_and_measures_the_gate_on_labels(tmp_path):
    pairs = [
        {"slice": "a", "instruction": "What first?", "response": "Clean the data first.", "label": 1},
        {"slice": "b", "instruction": "When?", "response": "Deduplicate before you split.", "label": 1},
        {"slice": "a", "instruction": "What first?", "response": "Our service is open 24/7.", "label": 0},
        {
            "slice": "b",
            "instruction": "When?",
            "response": "Deduplicate before you",
            "label": 0,
            "note": "cut",
        },
    ]
    with FakeOpenAI() as srv:
        endpoint = {"base_url": srv.url}
        params = make_params(
            tmp_path,
            srv.url,
            judges=[
                {"name": "oracle", "model": "oracle", **endpoint},
                {"name": "yes", "model": "fake", **endpoint},
            ],
            calibrate=True,
            min_votes=1,
        ).model_dump()
        code, out, err = _score_cli(tmp_path, params, pairs)
        assert code == 0, err
        assert srv.n_requests == 2 * (4 + 11)  # two judges, the pairs and the controls; nothing generated
    summary = json.loads(out)
    assert summary["pairs"] == 4 and summary["verdicts"] == {"kept": 2, "low_score": 2}
    assert summary["judges_used"] == ["oracle"] and summary["calibration"]["yes"]["auc"] == 0.5
    labelled = summary["labelled_auc"]
    assert (labelled["oracle"], labelled["yes"], labelled["gate"]) == (1.0, 0.5, 1.0)
    assert (labelled["kept_good"], labelled["kept_bad"], labelled["good"], labelled["bad"]) == (2, 0, 2, 2)
    rows = list(read_jsonl(tmp_path / "scored.jsonl"))
    assert [r["verdict"] for r in rows] == ["kept", "kept", "low_score", "low_score"]
    assert rows[3]["note"] == "cut" and rows[3]["label"] == 0 and rows[0]["input"] == ""
    assert rows[0]["judges"]["oracle"]["weighted"] == 9.0 and rows[0]["score"] == 9.0
    assert rows[0]["grounding"] is None and rows[0]["end_logprob"] is None  # grounding off here
    assert summary["control_verdicts"]["lead"] == {"kept": 2}


def test_score_command_names_a_bad_pair_line(tmp_path):
    params = make_params(tmp_path, "http://127.0.0.1:9/v1").model_dump()
    code, _, err = _score_cli(
        tmp_path,
        params,
        [
            {"slice": "a", "instruction": "Q", "response": "A"},
            {"slice": "zz", "instruction": "Q", "response": "A"},
        ],
    )
    assert code == 1 and "pairs.jsonl: line 2: slice 'zz' is not in" in err
    code, _, err = _score_cli(tmp_path, params, [{"slice": "a", "instruction": "Q"}])
    assert code == 1 and "pairs.jsonl: line 1: 'response' must be a non-empty string" in err


def test_expected_scores_from_token_logprobs():
    import math

    from sftpipe.distill.parse import expected_scores

    def tok(token, **alts):
        return (token, {t: math.log(p) for t, p in (alts or {token: 1.0}).items()})

    logprobs = (
        tok('{"rationale": "scored 9", "accuracy": '),
        tok("9", **{"9": 0.5, "7": 0.5, "²": 0.1, "x": 0.1}),  # not digits 0-10: left out
        tok(', "safety": '),
        tok("1", **{"1": 0.8, "9": 0.2}),
        tok("0"),
        tok(', "clarity": "'),
        tok("3"),
        tok('"}'),
    )
    got = expected_scores(logprobs, ["accuracy", "safety", "clarity", "missing"])
    # a "1" followed by "0" is a 10; a quoted value is still the value; absent dimensions stay out
    assert got == {"accuracy": 8.0, "safety": 9.8}


def test_logprob_judges_score_by_expected_value(tmp_path):
    write_lines(tmp_path / "slices.jsonl", [json.dumps({"id": "a", "content": "Keep it. [bad]"}),
                                            json.dumps({"id": "b", "content": "Keep this."})])  # fmt: skip
    with FakeOpenAI() as srv:
        endpoint = {"base_url": srv.url, "model": "fake"}
        judges = [{"name": "lp", "logprob_scores": True, **endpoint}, {"name": "plain", **endpoint}]
        params = make_params(tmp_path, srv.url, judges=judges, samples_per_slice=1, min_votes=1)
        distill(params, 1, tmp_path / "out")
        assert srv.n_requests == 2 + 4
    scored = {r["slice"]: r["judges"] for r in read_jsonl(tmp_path / "out" / "scored.jsonl")}
    assert scored["b"]["lp"]["scores"]["accuracy"] == 8.0 and scored["b"]["lp"]["sampled"]["accuracy"] == 9
    assert scored["a"]["lp"]["weighted"] == 2.9 and scored["a"]["plain"]["weighted"] == 2.0
    assert "sampled" not in scored["b"]["plain"]


@pytest.fixture(scope="module")
def default_run(base_model, tmp_path_factory):
    """The default params on the real local server and base model, 2 shipped slices, 1 sample."""
    pytest.importorskip("llama_cpp")
    from sftpipe.distill.run import DistillParams

    tmp_path = tmp_path_factory.mktemp("default_run")
    slices = [json.loads(line) for line in (ROOT / "data/knowledge/slices.jsonl").open()][:2]
    write_lines(tmp_path / "slices.jsonl", [json.dumps(s) for s in slices])
    params = DistillParams.model_validate(
        {
            "slices": str(tmp_path / "slices.jsonl"),
            "samples_per_slice": 1,
            "cache_dir": str(tmp_path / "cache"),
            "grounding": {"model": base_model},
            "max_error_rate": 0.0,
        }
    )
    tally, meta = distill(params, 42, tmp_path / "out")
    return params, tally, meta, list(read_jsonl(tmp_path / "out" / "controls.jsonl")), tmp_path / "out"


@pytest.mark.slow
def test_real_local_default_gate_keeps_the_good_controls_and_no_bad_one_it_can_see(default_run):
    """Each judge is measured; the gate keeps every good control and drops every off-topic,
    other-slice and truncated one, each for its reason."""
    params, tally, meta, controls, out = default_run
    assert {"judge-a", "judge-b", "grounding", "end_logprob", "min_token_gain"} <= set(meta["calibration"])
    assert len(controls) == 12
    verdicts = {(c["slice"], c["kind"]): c["verdict"] for c in controls}
    assert all(v == "kept" for (_, kind), v in verdicts.items() if kind in GOOD), verdicts
    assert all(v == "ungrounded" for (_, k), v in verdicts.items() if k in ("off_topic", "other_slice")), (
        verdicts
    )
    assert all(v == "incomplete" for (_, kind), v in verdicts.items() if kind == "truncated"), verdicts
    assert meta["calibration"]["end_logprob"]["auc_by_kind"]["truncated"] == 1.0
    kept_bad = {k: n.get("kept", 0) for k, n in meta["control_verdicts"].items() if k in BAD}
    assert kept_bad["truncated"] == kept_bad["off_topic"] == kept_bad["other_slice"] == 0
    for record in read_jsonl(out / "records.jsonl"):
        assert record["meta"]["grounding"] >= params.grounding.min_gain
    assert tally.n_out + sum(tally.dropped.values()) == 2


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="the contradicted controls of these two slices are negated by a prefix ('It is not true "
    "that ...') or one swapped word ('after' for 'before'); their smallest per-token gains (-0.42, "
    "-0.32) lie above those of 9 of the 10 labelled good paraphrases (-0.65 to -3.2), so a threshold "
    "that drops them keeps 1 of those 10; no NLI model (distill.nli) installs offline, and a 270M "
    "model asked 'True or false?' scores at chance: benchmarks/RESULTS.md",
)
def test_real_local_default_gate_keeps_no_control_bad_pair(default_run):
    """The issue's target: a small default run keeps no control-bad pair of any kind."""
    _, _, meta, controls, _ = default_run
    assert [c["kind"] for c in controls if c["label"] == 0 and c["verdict"] == "kept"] == []
