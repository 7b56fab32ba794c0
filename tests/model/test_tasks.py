"""Task scoring: GSM8K final numbers on real test rows, multiple-choice answers, exact match, and
the decontamination check."""

import json

import pytest

from sftpipe.model.tasks import (
    TaskError,
    TaskSpec,
    choice_index,
    decontaminated,
    exact_correct,
    gsm8k_correct,
    gsm8k_reference,
    load_items,
)


def test_gsm8k_scores_real_rows(corpora):
    spec = TaskSpec(path=str(corpora / "gsm8k_test.jsonl"), kind="gsm8k", max_examples=3)
    items = load_items("gsm8k_test", spec)
    assert [it["id"] for it in items] == ["gsm8k_test/0", "gsm8k_test/1", "gsm8k_test/2"]
    first = items[0]
    assert first["question"].startswith("Janet") and gsm8k_reference(first["answer"]) == 18
    right = "She has 16 - 3 - 4 = 9 eggs left, and 9 * $2 = $18.\nThe answer is 18."
    wrong = "She sells 16 eggs at $2, so she makes $32."
    assert gsm8k_correct(right, first["answer"])
    assert not gsm8k_correct(wrong, first["answer"])
    assert not gsm8k_correct("I do not know.", first["answer"])
    assert gsm8k_correct("#### 1,000", "so #### 1000") and gsm8k_correct("It is 3.0.", "#### 3")


def test_choice_answers_and_exact_match(tmp_path):
    path = tmp_path / "mc.jsonl"
    rows = [
        {"question": "2 + 2?", "choices": ["3", "4", "5"], "answer": 1},
        {"question": "Red?", "choices": ["red", "blue"], "answer": "A"},
        {"question": "Sky?", "options": ["green", "blue"], "answer": "blue"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_items("mc", TaskSpec(path=str(path), kind="choice", max_examples=None))
    assert [it["answer"] for it in items] == [1, 0, 1]
    with pytest.raises(TaskError, match="none of the 2 choices"):
        choice_index("C", ["a", "b"], "x")
    assert exact_correct("  Paris.\nIt is the capital.", "paris")
    assert not exact_correct("The capital is Paris.", "Paris")
    with pytest.raises(TaskError, match="is not a file"):
        load_items("gone", TaskSpec(path=str(tmp_path / "gone.jsonl")))


def test_decontaminated_compares_resolved_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tasks = {"a": TaskSpec(path="data/raw/eval/a.jsonl"), "b": TaskSpec(path="b.jsonl")}
    assert decontaminated(tasks, {"a": "./data/raw/eval/a.jsonl"}) == {"a": True, "b": False}
    assert decontaminated(tasks, None) == {"a": False, "b": False}
