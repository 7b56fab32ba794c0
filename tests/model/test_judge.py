"""The LLM judge against the fake OpenAI-compatible server: both orders are asked, position bias
cancels out, and ties are counted."""

import json

import pytest

from sftpipe.distill.llm import EndpointSpec
from sftpipe.model.judge import JudgeParams, judge, order_scores, verdict
from tests.fake_openai import FakeOpenAI


def test_verdict_and_order_scores():
    assert verdict("B is better. [[B]]") == "B" and verdict("no idea") is None
    assert verdict("[[A]] at first, but on reflection [[C]]") == "C"
    # Order 1 shows base as A, order 2 shows trained as A.
    assert order_scores(["B", "A"]) == [1.0, 1.0]
    assert order_scores(["A", "A"]) == [0.0, 1.0]  # position bias: a tie overall
    assert order_scores(["C", None]) == [0.5]


def test_judge_asks_both_orders_and_counts_ties(tmp_path):
    items = [
        {"id": "p/0", "question": "Q0", "base": "meh", "trained": "great [good]"},  # trained wins
        {"id": "p/1", "question": "Q1", "base": "fine [good]", "trained": "meh"},  # base wins
        {"id": "p/2", "question": "Q2", "base": "same", "trained": "same too"},  # tie
        {"id": "p/3", "question": "Q3 [first]", "base": "x", "trained": "y [good]"},  # biased judge: tie
    ]
    with FakeOpenAI() as srv:
        spec = EndpointSpec(base_url=srv.url, model="judge", structured_output="off", max_concurrent=2)
        params = JudgeParams(enabled=True, endpoint=spec, cache_dir=str(tmp_path / "cache"))
        summary, rows = judge(items, params, seed=0)
        assert srv.n_requests == 8  # two orders per prompt
        sent = [e for e in srv.events if e["event"] == "request"]
        assert len({e["key"] for e in sent}) == 8
        assert {r["id"]: r["verdicts"] for r in rows} == {
            "p/0": ["B", "A"],
            "p/1": ["A", "B"],
            "p/2": ["C", "C"],
            "p/3": ["A", "A"],
        }
        assert [r["score"] for r in rows] == [1.0, 0.0, 0.5, 0.5]
        assert summary["wins"] == 1 and summary["losses"] == 1 and summary["ties"] == 2
        assert summary["n"] == 4 and summary["win_rate"] == 0.5 and summary["failed"] == 0
        assert summary["ci_low"] <= 0.5 <= summary["ci_high"]
        assert summary["first_position_share"] == pytest.approx(4 / 8)
        # Re-running answers from the cache: no new request.
        again, _ = judge(items, params, seed=0)
        assert srv.n_requests == 8 and again["win_rate"] == 0.5


def test_failed_verdicts_are_counted_not_scored(tmp_path):
    items = [{"id": "p/0", "question": "Q", "base": "a", "trained": "b"}]
    with FakeOpenAI(behaviour=lambda body, n: ("status", 400)) as srv:
        spec = EndpointSpec(base_url=srv.url, structured_output="off", max_attempts=1)
        summary, rows = judge(items, JudgeParams(enabled=True, endpoint=spec, cache_dir=None))
    assert summary["failed"] == 1 and summary["n"] == 0 and rows == []
    json.dumps(summary)  # a report entry


def test_an_enabled_judge_needs_an_endpoint():
    with pytest.raises(ValueError, match="base_url"):
        JudgeParams(enabled=True)
