"""The team's DVC remote on an S3-compatible store (moto's server on loopback): `dvc repro`,
commit, `dvc push`; a fresh `git clone` + `dvc pull` restores every output byte for byte without
re-running a stage. Credentials come only from the environment and never land in the repo."""

import hashlib
import json
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import copy_repo, dvc

pytestmark = pytest.mark.slow

SECRET = "canary-remote-secret-0b1e"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def s3_remote(monkeypatch):
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "team-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # the remote's endpointurl must do it
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="team-dvc")
    yield endpoint, client
    server.stop()


def test_push_clone_pull_restores_outputs_without_rerunning(corpora, s3_remote, tmp_path):
    endpoint, client = s3_remote
    repo = copy_repo(tmp_path / "repo")
    source = corpora / "self_instruct_seed_tasks.jsonl"
    (repo / "params.yaml").write_text(f"seed: 1\nsources:\n  seeds:\n    path: {source}\n")
    dvc(repo, "remote", "add", "-d", "team", "s3://team-dvc/cache")
    dvc(repo, "remote", "modify", "team", "endpointurl", endpoint)
    dvc(repo, "repro", "ingest")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "ingest seeds")

    dvc(repo, "push")
    stored = [o["Key"] for o in client.list_objects_v2(Bucket="team-dvc")["Contents"]]
    assert all(k.startswith("cache/files/md5/") for k in stored)
    # ingest's records.jsonl, rejected.jsonl and directory listing; inputs' seeds.json, its two
    # empty fingerprints (one object: the same bytes) and directory listing
    assert len(stored) == 6

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert not (clone / "data/interim/ingest/seeds").exists()
    before = json.loads(dvc(clone, "status", "ingest", "--json").stdout)
    assert before == {"ingest@seeds": [
        {"changed deps": {"data/interim/inputs/sources/seeds.json": "deleted"}},  # inputs' output
        {"changed outs": {"data/interim/ingest/seeds": "not in cache"}},
    ]}  # fmt: skip

    pulled = dvc(clone, "pull", "--with-deps", "ingest")  # the stages this test ran (the rest never did)
    assert "Running stage" not in pulled.stdout + pulled.stderr
    assert json.loads(dvc(clone, "status", "ingest", "--json").stdout) == {}
    original = tree_digest(repo / "data/interim/ingest/seeds")
    assert sorted(original) == ["records.jsonl", "rejected.jsonl"]
    assert tree_digest(clone / "data/interim/ingest/seeds") == original
    assert json.loads((clone / "reports/ingest/seeds.json").read_text())["out"] == 175

    # Only the endpoint is configured in the repo; the credentials stayed in the environment.
    config = (repo / ".dvc" / "config").read_text()
    assert f"endpointurl = {endpoint}" in config and "s3://team-dvc/cache" in config
    grep = subprocess.run(
        ["git", "grep", "-I", "-l", SECRET, "HEAD"], cwd=repo, capture_output=True, text=True
    )
    assert grep.returncode == 1 and grep.stdout == ""  # 1: no match anywhere in the commit
    for path in [*(repo / ".dvc").rglob("*"), repo / "dvc.lock", *(clone / ".dvc").rglob("*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


REVIEW = Path(__file__).resolve().parents[1] / ".github" / "scripts" / "dataset-review.sh"


def _review(repo: Path, base: str) -> subprocess.CompletedProcess:
    import os
    import sys

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", str(REVIEW), base], cwd=repo, env=env, capture_output=True, text=True)


def test_review_workflow_pulls_and_rebuilds_only_what_the_pr_changed(corpora, s3_remote, tmp_path):
    from tests.conftest import set_params

    endpoint, _ = s3_remote
    repo = copy_repo(tmp_path / "repo")
    git(repo, "config", "user.email", "t@t")
    git(repo, "config", "user.name", "t")
    sources = {
        "seeds": {"path": str(corpora / "self_instruct_seed_tasks.jsonl")},
        "libre": {"path": str(corpora / "alpaca_libre_v2.jsonl"), "max_samples": 200},
    }
    set_params(repo, sources=sources, **{"distill.enabled": False, "format.max_length": 512})
    dvc(repo, "remote", "add", "-d", "team", "s3://team-dvc/cache")
    dvc(repo, "remote", "modify", "team", "endpointurl", endpoint)
    dvc(repo, "repro", "report")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "main")
    git(repo, "branch", "-M", "main")
    dvc(repo, "push")  # main's outputs are on the remote, as CI on main would leave them

    # The pull request changes one source; its author pushed the commit but not the data.
    git(repo, "checkout", "-qb", "pr")
    sources["libre"]["max_samples"] = 150
    set_params(repo, sources=sources)
    git(repo, "commit", "-qam", "fewer libre rows")

    ci = tmp_path / "ci"  # a fresh checkout of the PR, as actions/checkout leaves it
    git(tmp_path, "clone", "-q", "-b", "pr", str(repo), str(ci))
    git(ci, "fetch", "-q", "origin", "main:refs/remotes/origin/main")
    done = _review(ci, "origin/main")
    assert done.returncode == 0, done.stderr[-3000:]
    ran = {line.split("'")[1] for line in done.stderr.splitlines() if line.startswith("Running stage")}
    # pulled, not rebuilt: the base model, the unchanged source; rebuilt: what depends on the change
    # (inputs re-hashes on any params.yaml change and then leaves ingest@seeds alone)
    rebuilt = {"inputs", "ingest@libre", "clean", "dedup", "format", "split", "mix", "export", "report"}
    assert ran == rebuilt, ran
    assert "| `sources.libre.max_samples` | `200` | `150` |" in done.stdout

    bare = tmp_path / "bare"  # a project that never set up a remote
    git(tmp_path, "clone", "-q", str(repo), str(bare))
    dvc(bare, "remote", "remove", "team")
    failed = _review(bare, "HEAD")
    assert failed.returncode == 1 and "Running stage" not in failed.stderr
    assert failed.stderr.strip().splitlines() == [failed.stderr.strip().splitlines()[-1]]  # one line
    assert failed.stderr.startswith("error: no DVC remote is configured")
