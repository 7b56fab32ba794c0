"""distill: chunking, JSON extraction, judging rules, accounting, determinism and resume, against
a real HTTP server on loopback (tests/fake_openai.py), plus a small real run against the local
llama.cpp server (slow). No network."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sftpipe.core.config import ParamsError, validate
from sftpipe.core.jsonio import read_jsonl
from sftpipe.core.records import Drop
from sftpipe.distill.llama_server import LocalServerError, LocalServerSpec, local_servers
from sftpipe.distill.llm import Reply
from sftpipe.distill.parse import parse_pair as _parse_pair
from sftpipe.distill.parse import parse_verdict as _parse_verdict
from sftpipe.distill.parse import weighted
from sftpipe.distill.prompts import DIMENSIONS, fill, template
from sftpipe.distill.run import DistillParams, distill, seed_for
from sftpipe.distill.slices import DistillError, chunk_text, read_slices
from tests.conftest import ROOT, copy_repo, dvc, write_lines
from tests.fake_openai import FakeOpenAI


def _outcome(parse, reply):
    """(parsed, "ok"), or (None, the Drop's reason)."""
    try:
        return parse(reply), "ok"
    except Drop as drop:
        return None, drop.reason


def parse_pair(reply):
    return _outcome(_parse_pair, reply)


def parse_verdict(reply):
    return _outcome(_parse_verdict, reply)


OUTPUTS = (
    "records.jsonl",
    "generated_raw.jsonl",
    "scored.jsonl",
    "controls.jsonl",
    "rejected.jsonl",
    "metadata.json",
)

# --- chunking ------------------------------------------------------------------------------------


def test_chunks_pack_paragraphs_up_to_the_limit():
    text = "A" * 40 + "\n\n" + "B" * 40 + "\n \n" + "C" * 40 + "\n\n\n"
    assert chunk_text(text, 100) == ["A" * 40 + "\n\n" + "B" * 40, "C" * 40]
    assert chunk_text(text, 200) == ["A" * 40 + "\n\n" + "B" * 40 + "\n\n" + "C" * 40]
    assert chunk_text("one line\nnext line", 100) == ["one line\nnext line"]  # single newlines stay


def test_long_paragraphs_split_between_sentences_then_words():
    assert chunk_text("One two. Three four. Five six.", 12) == ["One two.", "Three four.", "Five six."]
    assert chunk_text("One two. Three four. Five six.", 20) == ["One two. Three four.", "Five six."]
    assert chunk_text("abcdefghij klm", 4) == ["abcd", "efgh", "ij", "klm"]


def test_chunking_real_text_keeps_every_word(corpora):
    rows = [json.loads(line) for line in (corpora / "dolly_hhrlhf_1k.jsonl").open()]
    texts = [r["response"] for r in rows if len(r["response"]) > 1200][:20]
    assert len(texts) == 20
    for text in texts:
        chunks = chunk_text(text, 300)
        assert len(chunks) >= 4 and all(0 < len(c) <= 300 for c in chunks)
        assert " ".join(chunks).split() == text.split()


# --- JSON extraction -----------------------------------------------------------------------------


def pair(text: str, finish: str = "stop"):
    return parse_pair(Reply(True, text, finish))


OK = {"instruction": "What is SFT?", "input": "", "response": "Training on example conversations."}


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(OK),
        'Sure!\n```json\n{"instruction": "What is SFT?", "response": "Training on example conversations."}\n```',
        'Here: {"question": "What is SFT?", "answer": "Training on example conversations."} Hope it helps {',
        "{'instruction': 'What is SFT?', 'input': '', 'response': 'Training on example conversations.'}",
        '[{"instruction": "What is SFT?", "output": "Training on example conversations."}, {"x": 1}]',
        '{"pair": {"Instruction": " What is SFT? ", "Response": "Training on example conversations."}}',
    ],
)
def test_pairs_are_found_in_messy_answers(text):
    assert pair(text) == (OK, "ok")


def test_raw_newlines_inside_strings_are_accepted():
    got, why = pair('{"instruction": "List two steps", "input": "", "response": "Clean.\nThen dedup."}')
    assert why == "ok" and got["response"] == "Clean.\nThen dedup."


def test_pairs_that_cannot_be_read_say_why():
    assert pair('{"instruction": "What is SFT?", "response": "Train') == (None, "no_json")
    assert pair('{"instruction": "What is SFT?", "response": "Train', "length") == (None, "truncated")
    # a reply the generator was stopped in is cut, even when what it wrote so far parses
    assert pair('{"instruction": "What is SFT?", "response": "Train on"}', "length") == (None, "truncated")
    assert pair('{"instruction": "What is SFT?", "input": ""}') == (None, "invalid_pair")
    assert pair('{"instruction": "", "response": "x"}') == (None, "invalid_pair")
    assert pair("no braces at all") == (None, "no_json")
    assert parse_pair(Reply(False, error="timeout")) == (None, "generation_failed")


def test_verdicts_parse_scores_and_reject_bad_ones():
    scores = dict.fromkeys(DIMENSIONS, 8)
    text = json.dumps({"rationale": "Good.", **scores})
    assert parse_verdict(Reply(True, text)) == ({"scores": scores, "rationale": "Good."}, "ok")
    nested = {"rationale": "ok", "scores": {**dict.fromkeys(DIMENSIONS, "7"), "safety": 9.5}}
    got, _ = parse_verdict(Reply(True, "Verdict: " + json.dumps(nested)))
    assert got == {"scores": {**dict.fromkeys(DIMENSIONS, 7), "safety": 9.5}, "rationale": "ok"}
    assert parse_verdict(Reply(True, json.dumps({**scores, "safety": 11})))[1] == "bad_scores"
    assert parse_verdict(Reply(True, json.dumps({**scores, "safety": True})))[1] == "bad_scores"
    assert parse_verdict(Reply(True, "8/10"))[1] == "no_json"
    assert parse_verdict(Reply(False, error="http_500")) == (None, "request_failed:http_500")


def test_weighted_average_uses_the_weights():
    scores = {"accuracy": 10, "completeness": 4, "logicality": 4, "helpfulness": 4, "safety": 4}
    assert weighted(scores, dict.fromkeys(DIMENSIONS, 1.0)) == 5.2
    assert weighted(scores, {**dict.fromkeys(DIMENSIONS, 1.0), "accuracy": 4.0}) == 7.0


def test_templates_fill_known_fields_only():
    assert (
        fill('Return {"a": 1} for {content}. {other}', {"content": "X"}) == 'Return {"a": 1} for X. {other}'
    )
    with pytest.raises(DistillError, match=r"distill.prompt: the template lacks \{content\}"):
        template(DistillParams(prompt="no placeholder"), judge=False)
    with pytest.raises(DistillError, match=r"distill.prompt_file: cannot read /nonexistent"):
        template(DistillParams(prompt_file="/nonexistent"), judge=False)
    with pytest.raises(DistillError, match=r"lacks \{instruction\}, \{response\}"):
        template(DistillParams(judge_prompt="{content}"), judge=True)


def test_seeds_differ_per_sample_and_are_stable():
    assert seed_for(42, "generate", "a/0") == seed_for(42, "generate", "a/0")
    assert len({seed_for(42, "generate", f"a/{i}") for i in range(50)}) == 50
    assert seed_for(42, "judge", "x", "a/0") != seed_for(43, "judge", "x", "a/0")


# --- slices and params ---------------------------------------------------------------------------


def test_read_slices_ids_and_errors(tmp_path):
    f = write_lines(
        tmp_path / "s.jsonl", ['{"id": 7, "content": "x"}', '{"content": "y", "metadata": {"a": 1}}']
    )
    assert read_slices(f) == [
        {"id": "7", "content": "x", "metadata": {}},
        {"id": "slice-82682160569c", "content": "y", "metadata": {"a": 1}},
    ]
    cases = {
        '{"id": "a", "content": ""}': "line 1: 'content' must be a non-empty string",
        '{"content": "x", "metadata": [1]}': "line 1: 'metadata' must be an object",
        "{oops": "line 1: invalid_json",
    }
    for line, message in cases.items():
        with pytest.raises(DistillError, match=message):
            read_slices(write_lines(tmp_path / "bad.jsonl", [line]))
    with pytest.raises(DistillError, match=r"line 2: id 'a' repeats the slice at .*line 1"):
        read_slices(
            write_lines(
                tmp_path / "dup.jsonl", ['{"id": "a", "content": "x"}', '{"id": "a", "content": "y"}']
            )
        )
    with pytest.raises(DistillError, match="distill.slices: .*no such file"):
        read_slices(tmp_path / "missing.jsonl")


def test_params_are_checked():
    for bad, message in [
        ({"weights": {}}, "weights: give a weight"),
        ({"weights": {"accuracy": 0.0}}, "weights: give a weight"),
        (
            {"weights": {"accuracy": 1.0, "clarity": 1.0}},
            r"give a rubric for the custom dimension\(s\) clarity",
        ),
        ({"rubrics": {"clarity": "Clear?"}}, "rubrics: clarity not in weights"),
        ({"min_votes": 3}, "min_votes must be between 0 and the number of judges"),
        ({"judges": [{"name": "a"}, {"name": "a"}]}, "unique names"),
        ({"generator": {"max_concurrent": 0}}, "at least 1"),
        ({"generator": {"api_key": "sk-1"}}, "distill.generator.api_key: unknown key"),
    ]:
        with pytest.raises(ParamsError, match=message):
            validate(DistillParams, bad, "distill")


def test_repo_params_match_the_defaults():
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["distill"]
    params = validate(DistillParams, section, "distill")
    assert params.prompt == DistillParams().prompt and params.judge_prompt == DistillParams().judge_prompt
    assert params.system_prompt == DistillParams().system_prompt
    assert len(read_slices(ROOT / params.slices)) == 5


# --- end to end against the fake server ----------------------------------------------------------

SLICES = [
    '{"id": "good", "content": "Clean the data first.\\n\\nCount every drop.", "metadata": {"topic": "cleaning"}}',
    '{"content": "Deduplicate before splitting. [bad]"}',
    '{"id": 7, "content": "This one has no JSON. [nojson]"}',
    '{"id": "t", "content": "Cut off answer. [truncated]"}',
    '{"id": "i", "content": "Missing response. [invalid]"}',
    '{"id": "j", "content": "Judges fail here. [judgefail]"}',
    '{"id": "s", "content": "Judges disagree. [split]"}',
]


def make_params(tmp_path: Path, url: str, **over) -> DistillParams:
    endpoint = {"base_url": url, "model": "fake", "timeout_s": 5.0}
    slices = tmp_path / "slices.jsonl"
    if not slices.exists():
        write_lines(slices, SLICES)
    data = {
        "slices": str(slices),
        "samples_per_slice": 2,
        "cache_dir": str(tmp_path / "cache"),
        "generator": endpoint,
        "judges": [
            {"name": "cool", "temperature": 0.2, **endpoint},
            {"name": "hot", "temperature": 0.9, **endpoint},
        ],
        "min_votes": 2,
        "min_score_threshold": 5.0,
        "calibrate": False,  # the control pairs have tests of their own (test_gate.py)
        "grounding": {"enabled": False},
    }
    return DistillParams.model_validate({**data, **over})


def outputs(folder: Path) -> dict[str, bytes]:
    """Every output's bytes; metadata.json without the endpoint URLs (each fake server has its port)."""
    out = {name: (folder / name).read_bytes() for name in OUTPUTS}
    meta = json.loads(out["metadata.json"])
    for endpoint in [meta["generator"], *meta["judges"]]:
        endpoint["endpoint"] = "url"
    out["metadata.json"] = json.dumps(meta).encode()
    return out


EXPECTED = {
    "in": 14,
    "out": 2,
    "dropped": {
        "invalid_pair": 2,
        "judge_failed": 2,
        "low_score": 2,
        "no_json": 2,
        "too_few_votes": 2,
        "truncated": 2,
    },
}


def test_end_to_end_accounts_for_every_slice_and_sample(tmp_path):
    with FakeOpenAI() as srv:
        tally, meta = distill(make_params(tmp_path, srv.url), 1, tmp_path / "out")
        assert tally.as_dict() == EXPECTED
        assert srv.n_requests == 14 + 2 * 8  # every sample generated, 8 valid pairs x 2 judges
    out = tmp_path / "out"
    records = list(read_jsonl(out / "records.jsonl"))
    assert [r["id"] for r in records] == ["distill/good/0", "distill/good/1"]
    first = records[0]
    assert first["source"] == "distill" and [m["role"] for m in first["messages"]] == ["user", "assistant"]
    assert first["messages"][0]["content"] == "What does the guide say about Clean the data first.?"
    assert first["messages"][1]["content"].startswith(
        "Clean the data first.\n\nCount every drop. (sample seed"
    )
    assert first["meta"]["scores"] == {
        "cool": dict.fromkeys(DIMENSIONS, 9),
        "hot": dict.fromkeys(DIMENSIONS, 9),
    }
    assert {k: first["meta"][k] for k in ("slice", "slice_id", "sample", "score", "votes", "judges")} == {
        "slice": "good", "slice_id": "good", "sample": 0, "score": 9.0, "votes": 2, "judges": ["cool", "hot"],
    }  # fmt: skip
    assert first["meta"]["slice_metadata"] == {"topic": "cleaning"}
    assert first["meta"]["avg_score"] == 9.0  # what the specification's ShareGPT rows carry
    assert first["meta"]["dimension_scores"] == dict.fromkeys(DIMENSIONS, 9.0)
    assert records[0]["messages"][1]["content"] != records[1]["messages"][1]["content"]  # own seed each

    raw = list(read_jsonl(out / "generated_raw.jsonl"))
    assert [(r["slice"], r["sample"]) for r in raw][:4] == [
        ("good", 0),
        ("good", 1),
        ("slice-172b0f7f1452", 0),
        ("slice-172b0f7f1452", 1),
    ]
    assert len(raw) == 14 and all(r["ok"] for r in raw)
    scored = {(r["slice"], r["sample"]): r for r in read_jsonl(out / "scored.jsonl")}
    assert len(scored) == 8
    assert scored[("s", 0)]["status"] == "too_few_votes" and scored[("s", 0)]["score"] == 5.5
    assert scored[("s", 0)]["votes"] == 1
    assert scored[("j", 1)]["judges"] == {"cool": {"error": "no_json"}, "hot": {"error": "no_json"}}
    rejected = list(read_jsonl(out / "rejected.jsonl"))
    assert sorted({r["reason"] for r in rejected}) == sorted(EXPECTED["dropped"])
    assert {r["slice"] for r in rejected if r["reason"] == "truncated"} == {"t"}
    assert meta["scores"]["cool"] == {
        "n": 6, "failed": {"no_json": 2},
        "mean": {**dict.fromkeys(DIMENSIONS, round((9 * 4 + 2 * 2) / 6, 4)), "weighted": round(40 / 6, 4)},
    }  # fmt: skip
    assert meta["generation"] == {"invalid_pair": 2, "no_json": 2, "truncated": 2, "valid": 8}
    assert (meta["slices"], meta["chunks"], meta["units"], meta["kept"]) == (7, 7, 14, 2)
    assert meta["dimension_means_kept"] == dict.fromkeys(sorted(DIMENSIONS), 9.0)


def test_rerun_is_served_from_the_cache_and_byte_identical(tmp_path):
    with FakeOpenAI() as srv:
        params = make_params(tmp_path, srv.url)
        distill(params, 1, tmp_path / "a")
        n = srv.n_requests
        distill(params, 1, tmp_path / "b")
        assert srv.n_requests == n  # nothing asked twice
        fresh = make_params(tmp_path, srv.url, cache_dir=str(tmp_path / "other-cache"))
        distill(fresh, 1, tmp_path / "c")
    assert outputs(tmp_path / "a") == outputs(tmp_path / "b") == outputs(tmp_path / "c")


def test_faults_change_nothing_in_the_output(tmp_path):
    with FakeOpenAI() as srv:
        distill(make_params(tmp_path, srv.url, cache_dir=None), 1, tmp_path / "calm")

    def storm(body, n):  # every request: a 500, a 429, a malformed body, then an answer
        # (a short Retry-After, which the SDK honours: its own backoff would take seconds a request)
        return [("status", 500, 0.01), ("status", 429, 0.01), "malformed", "ok"][min(n, 3)]

    with FakeOpenAI(storm) as srv:
        tally, _ = distill(make_params(tmp_path, srv.url, cache_dir=None), 1, tmp_path / "storm")
        assert tally.as_dict() == EXPECTED and srv.n_requests == 4 * 30
    assert outputs(tmp_path / "calm") == outputs(tmp_path / "storm")


def test_requests_failing_after_the_cap_are_counted_when_tolerated(tmp_path):
    def judges_down(body, n):
        return ("status", 502, 0.01) if "reviewer" in body["messages"][0]["content"] else "ok"

    with FakeOpenAI(judges_down) as srv:
        params = make_params(tmp_path, srv.url, max_error_rate=1.0)
        params = params.model_copy(
            update={"judges": [j.model_copy(update={"max_attempts": 2}) for j in params.judges]}
        )
        tally, meta = distill(params, 1, tmp_path / "out")
    assert tally.as_dict() == {
        "in": 14, "out": 0,
        "dropped": {"invalid_pair": 2, "judge_failed": 8, "no_json": 2, "truncated": 2},
    }  # fmt: skip
    assert meta["scores"]["hot"]["failed"] == {"request_failed:http_502": 8}

    with FakeOpenAI(lambda body, n: ("status", 500, 0.01)) as srv:
        params = make_params(tmp_path, srv.url, cache_dir=None, max_error_rate=1.0)
        params = params.model_copy(
            update={"generator": params.generator.model_copy(update={"max_attempts": 2})}
        )
        tally, meta = distill(params, 1, tmp_path / "down")
    assert tally.as_dict() == {"in": 14, "out": 0, "dropped": {"generation_failed": 14}}
    assert meta["generation_errors"] == {"http_500": 14}
    failed = next(read_jsonl(tmp_path / "down" / "rejected.jsonl"))
    assert failed == {
        "reason": "generation_failed",
        "record": {"content": "", "error": "http_500"},
        "slice": "good",
        "sample": 0,
    }


@pytest.mark.parametrize(
    ("status", "retried"), [(401, False), (400, False), (500, True)], ids=["401", "400", "500"]
)
def test_total_failure_fails_the_stage_naming_endpoint_status_and_body(tmp_path, status, retried):
    with FakeOpenAI(lambda body, n: ("status", status, 0.01)) as srv:
        params = make_params(tmp_path, srv.url)
        with pytest.raises(DistillError) as err:
            distill(params, 1, tmp_path / "out")
        assert srv.n_requests == 14 * (4 if retried else 1)
    message = str(err.value)
    assert f"14 of 14 requests to generator ({srv.url}) failed" in message
    assert f"first error: http_{status}: " in message and f"fake {status}" in message
    assert not (tmp_path / "out").exists()  # nothing written, so DVC locks nothing


def test_a_few_failures_below_max_error_rate_are_dropped_not_fatal(tmp_path):
    def one_down(body, n):  # the first slice's generation always fails
        return ("status", 500) if "Clean the data first" in json.dumps(body) and "seed" in body else "ok"

    with FakeOpenAI(one_down) as srv:
        gen = {"base_url": srv.url, "model": "fake", "max_attempts": 1}
        tally, _ = distill(
            make_params(tmp_path, srv.url, generator=gen, max_error_rate=0.2), 1, tmp_path / "o"
        )
    assert tally.as_dict()["dropped"]["generation_failed"] == 2  # 2 of 14 = 0.14 <= 0.2
    with FakeOpenAI(one_down) as srv, pytest.raises(DistillError, match="2 of 14 requests to generator"):
        gen = {"base_url": srv.url, "model": "fake", "max_attempts": 1}
        distill(make_params(tmp_path, srv.url, generator=gen, cache_dir=None), 1, tmp_path / "p")


def test_error_bodies_are_scrubbed_of_the_key(tmp_path, monkeypatch):
    key = "sk-test-" + "x" * 24
    monkeypatch.setenv("FAKE_KEY_FOR_TEST", key)

    def echo_key(body, n):  # a server that puts the caller's key in its error message
        return ("status", 401, None, f"Incorrect API key provided: {key}")

    with FakeOpenAI(echo_key) as srv:
        endpoint = {"base_url": srv.url, "model": "fake", "api_key_env": "FAKE_KEY_FOR_TEST"}
        params = make_params(tmp_path, srv.url, generator=endpoint)
        with pytest.raises(DistillError) as err:
            distill(params, 1, tmp_path / "out")
        assert srv.auth[0] == f"Bearer {key}"
    assert key not in str(err.value) and "Incorrect API key provided: ***" in str(err.value)


def test_empty_replies_are_retried_and_never_cached(tmp_path):
    with FakeOpenAI(lambda body, n: "empty" if n == 0 else "ok") as srv:
        params = make_params(tmp_path, srv.url)
        tally, _ = distill(params, 1, tmp_path / "out")
        assert tally.as_dict() == EXPECTED
        assert srv.n_requests == 2 * 30  # every request answered empty once, then asked again
    with FakeOpenAI(lambda body, n: "empty") as srv:
        params = make_params(tmp_path, srv.url, cache_dir=str(tmp_path / "c2"))
        with pytest.raises(DistillError, match="first error: empty_reply"):
            distill(params, 1, tmp_path / "empty")
    from sftpipe.distill.llm import RequestCache

    assert len(RequestCache(tmp_path / "c2" / "requests.sqlite")) == 0


def test_disabled_writes_empty_valid_outputs(tmp_path):
    params = make_params(tmp_path, "http://127.0.0.1:9/v1", enabled=False, slices="/nonexistent.jsonl")
    tally, meta = distill(params, 1, tmp_path / "out")
    assert tally.as_dict() == {"in": 0, "out": 0, "dropped": {}}
    assert (tmp_path / "out" / "records.jsonl").read_bytes() == b""
    assert meta["enabled"] is False and meta["kept"] == 0


def _stage_params(tmp_path: Path, url: str, **over) -> Path:
    params = make_params(tmp_path, url, **over).model_dump()
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"seed": 1, "sources": {"x": {"path": "x.jsonl"}}, "distill": params}))
    return path


def _stage(params: Path, out: Path, report: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "stages" / "distill.py"), "--params", str(params), "--out", str(out)]
    return subprocess.Popen(
        [*cmd, "--report", str(report)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _completed(cache: Path) -> int:
    """Replies in the stage's request cache (0 while the stage has not created it yet)."""
    import sqlite3

    if not (cache / "requests.sqlite").exists():
        return 0
    try:
        with sqlite3.connect(cache / "requests.sqlite") as db:
            return db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]
    except sqlite3.OperationalError:  # created, table not yet
        return 0


def test_stage_killed_mid_run_resumes_without_repeating(tmp_path):
    with FakeOpenAI(delay=0.1) as srv:
        gen = {"base_url": srv.url, "model": "fake", "max_concurrent": 2}
        params = _stage_params(tmp_path, srv.url, generator=gen)
        proc = _stage(params, tmp_path / "out", tmp_path / "report.json")
        deadline = time.monotonic() + 60
        while _completed(tmp_path / "cache") < 8 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (tmp_path / "out").exists()  # atomic: no half output
        cached = _completed(tmp_path / "cache")
        assert 8 <= cached < 30
        before = srv.n_requests
        proc = _stage(params, tmp_path / "out", tmp_path / "report.json")
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr.decode()
        # The resumed run asked only for what the killed one had not completed.
        assert srv.n_requests - before == 30 - cached
        assert stdout.decode().startswith("distill: 14 in, 2 out, 12 dropped")
    report = json.loads((tmp_path / "report.json").read_text())
    assert {k: report[k] for k in ("in", "out", "dropped")} == EXPECTED
    assert (report["slices"], report["chunks"], report["samples_per_slice"]) == (7, 7, 2)
    with FakeOpenAI() as srv:  # the same output as a run that was never interrupted
        distill(make_params(tmp_path, srv.url, cache_dir=None), 1, tmp_path / "clean")
    assert outputs(tmp_path / "out") == outputs(tmp_path / "clean")


def test_server_killed_mid_run_every_unit_accounted_then_resumed(tmp_path):
    from sftpipe.distill.llama_server import free_port

    port, log = free_port(), tmp_path / "server.jsonl"

    def start() -> subprocess.Popen:
        cmd = [
            sys.executable,
            "-m",
            "tests.fake_openai",
            "--port",
            str(port),
            "--log",
            str(log),
            "--delay",
            "0.1",
        ]
        proc = subprocess.Popen(cmd, cwd=ROOT)
        while not _listening(port):
            assert proc.poll() is None, "the fake server did not start"
            time.sleep(0.05)
        return proc

    def events(kind: str) -> list[str]:
        return [e["key"] for e in map(json.loads, log.read_text().splitlines()) if e["event"] == kind]

    server = start()
    try:
        url = f"http://127.0.0.1:{port}/v1"
        # One attempt each: the SDK's backoff (0.5 s and up) per refused connection would add
        # seconds; that dropped connections are retried is test_llm's to show.
        endpoint = {"base_url": url, "model": "fake", "max_attempts": 1, "timeout_s": 5.0}
        judges = [
            {"name": "cool", "temperature": 0.2, **endpoint},
            {"name": "hot", "temperature": 0.9, **endpoint},
        ]
        params = make_params(tmp_path, url, generator=endpoint, judges=judges)
        import threading

        def killer():
            while len(events("completed")) < 10:
                time.sleep(0.02)
            server.send_signal(signal.SIGKILL)

        thread = threading.Thread(target=killer)
        thread.start()
        with pytest.raises(DistillError, match=r"requests to \w+ .* failed.*first error: connection"):
            distill(params, 1, tmp_path / "first")
        thread.join()
        assert not (tmp_path / "first").exists()  # a dead server fails the stage, writes nothing
        done_before = set(events("completed"))

        server = start()
        tally, _ = distill(params, 1, tmp_path / "second")
        assert tally.as_dict() == EXPECTED
        completed = events("completed")
        assert len(completed) == len(set(completed)) == 30  # no completed request was asked again
        assert done_before <= set(completed)
    finally:
        server.kill()
        server.wait()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_real_slices_with_fake_models(corpora, tmp_path):
    rows = [json.loads(line) for line in (corpora / "oasst1_en_100_message.jsonl").open()][:3]
    assert len(rows) == 3
    texts = [json.dumps(r)[:2500] for r in rows]
    write_lines(tmp_path / "slices.jsonl", [json.dumps({"content": t}) for t in texts])
    with FakeOpenAI() as srv:
        tally, meta = distill(
            make_params(tmp_path, srv.url, chunk_chars=1000, samples_per_slice=1), 1, tmp_path / "out"
        )
    chunks = meta["chunks"]
    assert chunks >= 6  # long records were split
    assert tally.as_dict()["in"] == 3 and tally.as_dict()["expanded"] == chunks - 3
    assert tally.n_out + sum(tally.dropped.values()) == chunks


# --- the local llama.cpp server ------------------------------------------------------------------


def test_local_server_failure_is_reported_and_cleaned_up(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    with (
        pytest.raises(LocalServerError, match="exited with code"),
        local_servers(LocalServerSpec(gguf=str(bad))),
    ):
        pass
    missing = LocalServerSpec(gguf=str(tmp_path / "none.gguf"))
    with pytest.raises(LocalServerError, match="distill.local.gguf: no such file"), local_servers(missing):
        pass


def test_local_server_stops_on_exceptions():
    pytest.importorskip("llama_cpp")
    with pytest.raises(KeyboardInterrupt), local_servers(LocalServerSpec(servers=2)) as urls:
        ports = [int(url.rsplit(":", 1)[1].split("/")[0]) for url in urls]
        assert len(set(ports)) == 2 and all(_listening(p) for p in ports)
        raise KeyboardInterrupt
    assert not any(_listening(p) for p in ports)


@pytest.mark.slow
def test_real_local_model_end_to_end(tmp_path):
    pytest.importorskip("llama_cpp")
    slices = [json.loads(line) for line in (ROOT / "data/knowledge/slices.jsonl").open()][:2]
    write_lines(tmp_path / "slices.jsonl", [json.dumps(s) for s in slices])
    local = {"base_url": None, "model": "local", "timeout_s": 300.0}
    params = DistillParams.model_validate(
        {
            "slices": str(tmp_path / "slices.jsonl"),
            "samples_per_slice": 1,
            "max_tokens": 200,
            "max_response_chars": 300,
            "cache_dir": str(tmp_path / "cache"),
            "generator": local,
            "judges": [{"name": "judge", **local}],
            "min_score_threshold": 0.0,
            "calibrate": False,  # this test is about the grammar-constrained JSON, not the gate
            "grounding": {"enabled": False},
        }
    )
    tally, meta = distill(params, 42, tmp_path / "out")
    assert tally.as_dict() == {"in": 2, "out": 2, "dropped": {}}  # grammar-constrained JSON parses
    for r in read_jsonl(tmp_path / "out" / "scored.jsonl"):
        assert r["instruction"] and r["response"] and len(r["response"]) <= 300
        verdict = r["judges"]["judge"]
        assert set(verdict["scores"]) == set(DIMENSIONS) and all(
            0 <= v <= 10 for v in verdict["scores"].values()
        )
    assert meta["scores"]["judge"]["n"] == 2
    first = outputs(tmp_path / "out")
    distill(params, 42, tmp_path / "again")  # from the cache
    assert outputs(tmp_path / "again") == first


@pytest.mark.slow
def test_dvc_repro_distill(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    assert (repo / "data/knowledge/slices.jsonl").is_file()
    with FakeOpenAI() as srv:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["distill"]["generator"]["base_url"] = srv.url
        for judge in params["distill"]["judges"]:
            judge["base_url"] = srv.url
        # The fake judges score everything 9 (AUC 0.5) and the copy has no models/base: no gate but
        # the judges' threshold here (test_gate.py covers calibration and grounding).
        params["distill"].update(calibrate=False, grounding={"enabled": False})
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        dvc(repo, "repro", "distill")
        report = json.loads((repo / "reports/distill.json").read_text())
        assert {k: report[k] for k in ("in", "out", "dropped")} == {"in": 10, "out": 10, "dropped": {}}
        assert len(list(read_jsonl(repo / "data/interim/distill/records.jsonl"))) == 10
        assert os.path.isdir(repo / ".cache" / "distill")
        assert json.loads(dvc(repo, "status", "--json").stdout).get("distill") is None


@pytest.mark.slow
def test_local_answers_do_not_depend_on_request_order():
    pytest.importorskip("llama_cpp")
    from sftpipe.distill.llm import Endpoint, EndpointSpec, LLMClient

    passage = read_slices(ROOT / "data/knowledge/slices.jsonl")[2]["content"]

    def req(seed: int) -> dict:
        user = DistillParams().prompt.replace("{content}", passage)
        messages = [
            {"role": "system", "content": DistillParams().system_prompt},
            {"role": "user", "content": user},
        ]
        return {"messages": messages, "temperature": 0.8, "seed": seed, "max_tokens": 48}

    async def ask(urls) -> list[str]:
        client = LLMClient(Endpoint.resolve("g", EndpointSpec(), urls))
        try:
            # The second request shares the whole prompt with the first; the third repeats the first.
            return [(await client.complete(req(s))).content for s in (1, 2, 1)]
        finally:
            await client.close()

    import asyncio

    with local_servers(LocalServerSpec(servers=1)) as urls:
        first, other, again = asyncio.run(ask(urls))
    assert first and first != other and again == first


def test_local_servers_start_only_for_requests_the_cache_cannot_answer(tmp_path, monkeypatch):
    import contextlib

    import sftpipe.distill.run as module

    started = []
    with FakeOpenAI() as srv:

        @contextlib.contextmanager
        def fake_local(spec, seed):  # stands in for the llama.cpp servers
            started.append(seed)
            yield [srv.url]

        monkeypatch.setattr(module, "local_servers", fake_local)
        local = {"base_url": None, "model": "local"}
        params = make_params(
            tmp_path, "unused", generator=local, judges=[{"name": "j", **local}], min_votes=1
        )
        distill(params, 1, tmp_path / "first")
        assert started == [1] and srv.n_requests == 14 + 8
        distill(params, 1, tmp_path / "second")  # everything cached: no server
        assert started == [1] and srv.n_requests == 22
        distill(params.model_copy(update={"samples_per_slice": 3}), 1, tmp_path / "more")
        assert started == [1, 1] and srv.n_requests == 22 + 7 + 4  # only the new samples were asked
    assert outputs(tmp_path / "first") == outputs(tmp_path / "second")


def test_an_experiment_workspace_shares_the_cache_of_its_repo(tmp_path, monkeypatch):
    """`dvc exp run --temp/--queue` run in <repo>/.dvc/tmp/exps/<name>/: the relative cache_dir
    resolves to the repo's own .cache/distill there, so no completed request is asked again."""
    repo = tmp_path / "repo"
    workspace = repo / ".dvc" / "tmp" / "exps" / "tmpq1w2e3"
    (workspace / ".dvc").mkdir(parents=True)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    with FakeOpenAI() as srv:
        params = make_params(tmp_path, srv.url, cache_dir=".cache/distill")
        monkeypatch.chdir(repo)
        distill(params, 1, tmp_path / "first")
        asked = srv.n_requests
        assert (repo / ".cache" / "distill" / "requests.sqlite").is_file()
        monkeypatch.chdir(workspace)
        distill(params, 1, tmp_path / "queued")
        assert srv.n_requests == asked  # the queued experiment repeated no completed request
        monkeypatch.setenv("DVC_ROOT", str(workspace))  # as dvc sets it for the stage command
        distill(params, 1, tmp_path / "temp")
        assert srv.n_requests == asked
    assert not (workspace / ".cache").exists()
    assert outputs(tmp_path / "first") == outputs(tmp_path / "queued") == outputs(tmp_path / "temp")


def test_custom_dimensions_with_rubrics_reach_the_judges_and_the_scores(tmp_path):
    bodies = []

    def keep(body, n):
        bodies.append(body)
        return "ok"

    weights = {"accuracy": 2.0, "clarity": 1.0}
    rubrics = {"accuracy": "Agrees with the passage.", "clarity": "Plain words, short sentences."}
    with FakeOpenAI(keep) as srv:
        params = make_params(tmp_path, srv.url, weights=weights, rubrics=rubrics)
        tally, meta = distill(params, 1, tmp_path / "out")
    assert tally.as_dict() == EXPECTED
    system = next(b["messages"][0]["content"] for b in bodies if "reviewer" in b["messages"][0]["content"])
    assert system.endswith("- accuracy: Agrees with the passage.\n- clarity: Plain words, short sentences.")
    record = next(read_jsonl(tmp_path / "out" / "records.jsonl"))
    assert record["meta"]["scores"]["cool"] == {"accuracy": 9, "clarity": 9}
    assert record["meta"]["dimension_scores"] == {"accuracy": 9.0, "clarity": 9.0}
    assert set(meta["scores"]["cool"]["mean"]) == {"accuracy", "clarity", "weighted"}
