"""review: Markdown from two git revisions' tracked reports (synthetic repo; the end-to-end run
through the real pipeline is in tests/test_pipeline.py)."""

import json
import subprocess

from sftpipe.review import LIMIT, review


def git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def write_state(repo, weight, rows, metrics):
    (repo / "reports" / "samples").mkdir(parents=True, exist_ok=True)
    (repo / "params.yaml").write_text(f"seed: 1\nmix:\n  weights:\n    a: {weight}\n")
    (repo / "reports" / "metrics.json").write_text(json.dumps(metrics))
    lines = ["id\tsource\tsplit\tcopies\tcontent_hash"] + ["\t".join(map(str, r)) for r in sorted(rows)]
    (repo / "reports" / "manifest").mkdir(exist_ok=True)
    (repo / "reports" / "manifest" / "000.tsv").write_text("\n".join(lines) + "\n")
    samples = [
        {"id": r[0], "split": r[2], "messages": [{"role": "user", "content": f"text of {r[0]}"}]}
        for r in rows
        if r[1] == "a"
    ]
    (repo / "reports" / "samples" / "a.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))


def make_repo(tmp_path):
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "t@t")
    git(repo, "config", "user.name", "t")
    base_rows = [("a/1", "a", "train", 1, "h1"), ("a/2", "a", "train", 1, "h2"), ("a/3", "a", "val", 1, "h3"),
                 ("b/1", "b", "train", 1, "x1"), ("c/1", "c", "train", 1, "y1")]  # fmt: skip
    write_state(repo, 1, base_rows, {"splits": {"train": {"total": 4}}, "tokens": {"train": {"mean": 10.0}}})
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    head_rows = [("a/1", "a", "train", 2, "h1"), ("a/2", "a", "train", 1, "CHANGED"), ("a/3", "a", "test", 1, "h3"),
                 ("a/4", "a", "train", 1, "h4"), ("c/1", "c", "train", 1, "y1")]  # fmt: skip
    write_state(repo, 2, head_rows, {"splits": {"train": {"total": 5}}, "tokens": {"train": {"mean": 12.5}}})
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "head")
    return repo


def test_review_names_params_metrics_and_examples(tmp_path):
    repo = make_repo(tmp_path)
    md = review(repo, "HEAD~1", "HEAD")
    assert "| `mix.weights.a` | `1` | `2` |" in md
    assert (
        "| `splits.train.total` | `4` | `5` | +1 |" in md
        and "| `tokens.train.mean` | `10.0` | `12.5` | +2.5 |" in md
    )
    assert "| a | 1 | 0 | 1 | 1 | 1 |" in md  # added a/4, changed a/2, moved a/3, recounted a/1
    assert "| b | 0 | 1 | 0 | 0 | 0 |" in md  # removed b/1
    assert "Unchanged: c." in md
    assert "<details><summary>a: 1 added</summary>" in md and "text of a/4" in md
    assert "<details><summary>b: 1 removed</summary>" in md and "`b/1`" in md


def test_working_tree_is_the_default_head_and_no_change_says_so(tmp_path):
    repo = make_repo(tmp_path)
    md = review(repo, "HEAD", None)
    assert "No params changed." in md and "No metric changed." in md and "Unchanged: a, c." in md


def test_huge_reviews_stay_under_githubs_limit(tmp_path):
    repo = make_repo(tmp_path)
    rows = [(f"s{i % 3000}/{i}", f"s{i % 3000}", "train", 1, f"h{i}") for i in range(30_000)]
    write_state(repo, 3, rows, {})
    md = review(repo, "HEAD", None)
    assert len(md) < LIMIT and "more sources" in md and "<details>" not in md


def test_review_warns_when_mix_capped_a_source(tmp_path):
    repo = make_repo(tmp_path)
    mix = {"sources": {"a": {"repeat": 4.0, "capped": 92}, "c": {"repeat": 1.0, "capped": 0}}}
    (repo / "reports" / "mix.json").write_text(json.dumps(mix))
    md = review(repo, "HEAD", None)
    assert "mix capped `a` at `mix.max_repeat`: each row 4 times, 92 rows not added" in md
    assert "capped `c`" not in md
