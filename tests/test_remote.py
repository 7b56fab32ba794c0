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
    # records.jsonl, rejected.jsonl and the directory listing itself
    assert len(stored) == 3

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert not (clone / "data/interim/ingest/seeds").exists()
    before = json.loads(dvc(clone, "status", "ingest", "--json").stdout)
    assert before == {"ingest@seeds": [{"changed outs": {"data/interim/ingest/seeds": "not in cache"}}]}

    pulled = dvc(clone, "pull", "ingest")  # the stages this test ran (the rest never did)
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
