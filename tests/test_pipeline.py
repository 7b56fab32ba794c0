"""The data pipeline end to end through `dvc repro`, in a temporary copy of the repo: every stage's
accounting, reproducible reports, and the pull-request review of a change."""

import json
import subprocess

import pytest

from sftpipe.review import review
from tests.conftest import copy_repo, dvc, set_params

pytestmark = pytest.mark.slow


def git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def manifest(repo):
    rows = {}
    for f in sorted((repo / "reports" / "manifest").glob("*.tsv")):
        for line in f.read_text().splitlines()[1:]:
            rid, source, split, copies, digest = line.split("\t")
            rows[rid] = (source, split, int(copies), digest)
    return rows


def reports_bytes(repo):
    return {
        str(p.relative_to(repo)): p.read_bytes() for p in sorted((repo / "reports").rglob("*")) if p.is_file()
    }


CANARY = "sk-canary-0123456789abcdefSECRET"


def test_pipeline_review_reproducibility_and_no_secret_leaks(corpora, tmp_path, monkeypatch):
    # A key in the environment, as a user with an API key would have; it must reach no output.
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    monkeypatch.setenv("SFTPIPE_TRACKING", "on")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    repo = copy_repo(tmp_path / "repo")
    git(repo, "config", "user.email", "t@t")
    git(repo, "config", "user.name", "t")
    sources = {
        "libre": {"path": str(corpora / "alpaca_libre_v2.jsonl"), "max_samples": 400, "license": "cc0-1.0"},
        "seeds": {"path": str(corpora / "self_instruct_seed_tasks.jsonl"), "license": "apache-2.0"},
    }
    set_params(repo, sources=sources, **{
        "distill.enabled": False, "distill.generator.api_key_env": "OPENAI_API_KEY",
        "format.template": "chatml", "format.max_length": 512,
    })  # fmt: skip
    dvc(repo, "repro", "report")

    # Every stage balances, and what the report counts is what the data stages kept.
    for f in [*(repo / "reports" / "ingest").glob("*.json"), *(repo / "reports").glob("*.json")]:
        r = json.loads(f.read_text())
        if {"in", "out", "dropped"} <= set(r):
            assert r["in"] + r.get("expanded", 0) == r["out"] + sum(r["dropped"].values()), f.name
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    rows = manifest(repo)
    for split, v in metrics["splits"].items():
        assert sum(c for _, s, c, _ in rows.values() if s == split) == v["total"], split
    assert {v[0] for v in rows.values()} == {"libre", "seeds"}
    assert json.loads((repo / "reports" / "split.json").read_text())["overlap"] == {
        "id": 0,
        "text": 0,
        "cluster": 0,
    }
    assert (repo / "reports" / "dataset_card.md").read_text().startswith("---\n")

    # Forcing every stage to run again changes no byte of reports/.
    before = reports_bytes(repo)
    dvc(repo, "repro", "-f", "report")
    assert reports_bytes(repo) == before

    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    sources["libre"]["max_samples"] = 300
    set_params(repo, sources=sources, **{"mix.weights": {"seeds": 2}})
    dvc(repo, "repro", "report")
    after = manifest(repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "head")

    md = review(repo, "HEAD~1", "HEAD")
    removed = sorted(set(rows) - set(after))
    added = sorted(set(after) - set(rows))
    assert removed and all(r.startswith("libre/") for r in removed)
    assert "| `mix.weights.seeds` | — | `2` |" in md
    assert "| `sources.libre.max_samples` | `400` | `300` |" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| libre |"))
    assert line.split(" | ")[1:3] == [f"{len(added):,}", f"{len(removed):,}"]
    assert "| `splits.train.by_source.libre` |" in md
    shown = [rid for rid in removed if f"`{rid}`" in md]
    assert len(shown) == min(3, len(removed))  # a few removed ids are named in a <details> block

    # MLflow saw every data stage, tied to the digests dvc.lock records, and no secret reached
    # MLflow, dvc.lock, params.yaml or reports/.
    import sqlite3

    db = sqlite3.connect(repo / "mlflow.db")
    stages = {v for (v,) in db.execute("select value from tags where key = 'stage'")}
    assert {
        "ingest@libre",
        "ingest@seeds",
        "clean",
        "dedup",
        "format",
        "split",
        "mix",
        "export",
        "report",
    } <= stages
    lock = (repo / "dvc.lock").read_text()
    [(mix_md5,)] = db.execute(
        "select t.value from tags t join runs r on r.run_uuid = t.run_uuid join tags s on s.run_uuid = t.run_uuid "
        "where s.key = 'stage' and s.value = 'mix' and t.key = 'dvc.outs.data/interim/mix' order by r.start_time desc limit 1"
    ).fetchall()
    assert f"md5: {mix_md5}" in lock
    db.close()
    leaks = [p for p in [repo / "mlflow.db", repo / "dvc.lock", repo / "params.yaml", *(repo / "reports").rglob("*"),
                         *(repo / "mlruns").rglob("*")] if p.is_file() and CANARY.encode() in p.read_bytes()]  # fmt: skip
    assert leaks == []
