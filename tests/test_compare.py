"""sftpipe.compare on two small per-row results in a temporary git repo: revisions, a DVC
experiment ref and the workspace resolve, and the printed difference is the one the per-row files
give."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sftpipe.compare import CompareError, compare_rows, read_rows, resolve
from tests.conftest import ROOT

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def _rows(losses: dict[str, tuple[float, float, int]], acc: dict[str, float]) -> str:
    lines = [
        {
            "set": "val",
            "id": rid,
            "source": rid.split("/")[0],
            "metric": "loss",
            "tokens": n,
            "base": b,
            "trained": t,
        }
        for rid, (b, t, n) in losses.items()
    ]
    lines += [
        {"set": "task/gsm8k", "id": rid, "source": "gsm8k", "metric": "accuracy", "base": 0.0, "trained": v}
        for rid, v in acc.items()
    ]
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in lines)


def _commit(repo: Path, text: str, message: str) -> str:
    (repo / "reports").mkdir(exist_ok=True)
    (repo / "reports" / "eval_rows.jsonl").write_text(text)
    subprocess.run([*GIT, "add", "reports"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", message], cwd=repo, check=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> dict:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    a = _commit(
        repo,
        _rows(
            {"s/1": (2.0, 1.9, 10), "s/2": (1.5, 1.4, 30), "s/3": (1.0, 1.0, 5), "s/9": (3.0, 3.0, 7)},
            {"gsm8k/0": 0.0, "gsm8k/1": 1.0},
        ),
        "A",
    )
    b = _commit(
        repo,
        _rows(
            {"s/1": (2.0, 1.8, 10), "s/2": (1.5, 1.45, 30), "s/3": (1.0, 0.9, 5), "s/4": (2.2, 2.0, 8)},
            {"gsm8k/0": 1.0, "gsm8k/1": 1.0},
        ),
        "B",
    )
    # A DVC experiment is a commit kept under refs/exps (as `dvc exp run` leaves it).
    subprocess.run(["git", "update-ref", "refs/exps/ab/cd0123/exp-more-code", b], cwd=repo, check=True)
    return {"repo": repo, "a": a, "b": b}


def test_resolve_revisions_experiments_and_the_workspace(repo):
    r = repo["repo"]
    assert resolve(r, "HEAD~1") == repo["a"] and resolve(r, "exp-more-code") == repo["b"]
    assert resolve(r, "workspace") is None
    with pytest.raises(CompareError, match="neither a git revision nor a DVC experiment"):
        resolve(r, "no-such-exp")


def test_printed_difference_equals_the_per_row_files(repo):
    r = repo["repo"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "sftpipe.compare", "HEAD~1", "exp-more-code", "--plot", "cmp.png"],
        cwd=r,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # From the files: shared loss rows s/1..s/3, weighted by tokens; s/9 and s/4 are unshared.
    a = {x["id"]: x for x in map(json.loads, (r / "reports/eval_rows.jsonl").read_text().splitlines())}
    old = {
        x["id"]: x
        for x in map(
            json.loads,
            subprocess.run(
                ["git", "show", "HEAD~1:reports/eval_rows.jsonl"], cwd=r, capture_output=True, text=True
            ).stdout.splitlines(),
        )
    }
    shared = ["s/1", "s/2", "s/3"]
    tokens = sum(old[k]["tokens"] for k in shared)
    want = sum(old[k]["tokens"] * (a[k]["trained"] - old[k]["trained"]) for k in shared) / tokens
    loss_line = next(ln for ln in out.splitlines() if "| val | loss |" in ln)
    cells = [c.strip() for c in loss_line.strip("|").split("|")]
    assert cells[3] == "3"  # rows
    assert float(cells[6]) == pytest.approx(want, abs=1e-4)
    assert cells[8] == "2/3 (67%)"  # s/1 and s/3 improved, s/2 got worse
    acc_line = next(ln for ln in out.splitlines() if "| task/gsm8k | accuracy |" in ln)
    assert float([c.strip() for c in acc_line.strip("|").split("|")][6]) == pytest.approx(0.5)
    assert "1 rows only in" in out and "1 only in exp-more-code" in out
    assert (r / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_rows_on_the_workspace(repo):
    r = repo["repo"]
    (r / "reports" / "eval_rows.jsonl").write_text(
        _rows({"s/1": (2.5, 1.0, 10)}, {})  # the base scored s/1 differently: its text changed
    )
    _, ws = read_rows(r, "workspace")
    _, head = read_rows(r, "HEAD")
    (res,) = [x for x in compare_rows(head, ws) if x["set"] == "val"]
    assert res["n"] == 1 and res["delta"] == pytest.approx(1.0 - 1.8) and res["base_moved"] == 1
