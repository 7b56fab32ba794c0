"""The sanity checks format and export share: each check fails on its own, and counts merge in row
order keeping the first failing row's id."""

import pytest

from sftpipe.data.format.checks import Problems, SanityError, blank, blank_column, check_decoded, check_row

GOOD = {"n_tokens": 8, "n_trained": 3, "max_length": 8, "prompt_blank": False, "completion_blank": False,
        "is_text": False}  # fmt: skip


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"n_tokens": 9}, "over_max_length"),
        ({"n_trained": 0}, "nothing_trained"),
        ({"completion_blank": True}, "empty_completion"),
        ({"prompt_blank": True}, "empty_prompt"),
        ({"n_labels": 7}, "labels_length"),
    ],
)
def test_each_row_check_fails_alone(change, problem):
    problems = Problems()
    check_row(problems, "a/1", **GOOD)
    check_row(problems, "a/2", **GOOD, n_labels=8)
    check_row(problems, "a/3", **{**GOOD, **change})
    assert problems.report() == {"problems": {problem: 1}, "first_problem_id": {problem: "a/3"}}


def test_a_text_record_has_no_prompt_to_check():
    problems = Problems()
    check_row(problems, "t/1", **{**GOOD, "prompt_blank": True, "is_text": True})
    assert not problems


def test_blank_is_the_same_on_python_strings_and_arrow_arrays():
    import pyarrow as pa

    texts = ["", " ", "\n\t ", "\u00a0\u3000", "a", " a ", "\u200b"]
    assert blank_column(pa.array(texts)) == [blank(t) for t in texts] == [True] * 4 + [False] * 3


def test_merge_keeps_the_first_id_in_row_order():
    early, late = Problems(), Problems()
    check_decoded(early, "a/1", "x", "y")
    check_decoded(late, "a/2", "x", "y")
    check_row(late, "a/3", **{**GOOD, "n_trained": 0})
    check_decoded(late, "a/4", "same", "same")
    early.merge(late)
    assert early.report() == {
        "problems": {"decode_mismatch": 2, "nothing_trained": 1},
        "first_problem_id": {"decode_mismatch": "a/1", "nothing_trained": "a/3"},
    }
    assert early.message("export") == (
        "export: sanity checks failed: {'decode_mismatch': 2, 'nothing_trained': 1} "
        "(first ids: {'decode_mismatch': 'a/1', 'nothing_trained': 'a/3'})"
    )
    assert issubclass(SanityError, AssertionError)
