"""dedup on `engine: ray` (scan on Ray Data actors, LSH buckets grouped on Ray Data, verification
in Ray tasks) writes what `engine: local` writes, with one worker or two, on the real corpora."""

import json

import pytest

from sftpipe.core.jsonio import write_jsonl
from sftpipe.data.dedup import scan as scan_mod
from sftpipe.data.dedup.run import DedupParams, dedup
from tests.data.test_dedup import eval_sets, real_corpus

OUTPUTS = ("out/records.jsonl", "out/rejected.jsonl", "dedup.json", "clusters.jsonl")


@pytest.mark.slow  # Ray's start and its first actors and tasks: about half a minute
def test_ray_writes_what_local_writes(tmp_path, corpora, ray_engine, monkeypatch):
    records, planted, originals = real_corpus(corpora, tmp_path)
    # near copies of near copies: verification replayed in pair order must skip the same pairs
    chain = [
        {**p, "id": f"planted2/{k}", "messages": [*p["messages"][:-1], {**p["messages"][-1],
         "content": p["messages"][-1]["content"] + " Good luck!"}]}
        for k, p in enumerate(planted) if not k % 2
    ]  # fmt: skip
    write_jsonl(tmp_path / "in.jsonl", records + planted + chain)
    data = (tmp_path / "in.jsonl").read_bytes()
    (tmp_path / "in.jsonl").write_bytes(b"\n" + data.replace(b"}\n", b"}\n \r\n", 7))  # blank lines
    monkeypatch.setattr(scan_mod, "LINES_PER_PART", 1500)  # several parts per worker
    params = DedupParams(priority=["alpaca", "code_alpaca"], decontaminate={"sets": eval_sets(corpora)})
    got = {}
    # forked workers first: once this process has run rensa (local, 1 worker), its thread pool
    # would deadlock a forked child that runs rensa too
    for engine, workers in (("local", 2), ("local", 1), ("ray", 1), ("ray", 2)):
        out = tmp_path / f"{engine}{workers}"
        dedup(tmp_path / "in.jsonl", out / "out", out / "dedup.json", out / "clusters.jsonl", params,
              seed=42, workers=workers, engine=engine)  # fmt: skip
        got[engine, workers] = [(out / name).read_bytes() for name in OUTPUTS]
    want = got["local", 1]
    for key, outputs in got.items():
        differ = [name for name, a, b in zip(OUTPUTS, want, outputs, strict=True) if a != b]
        assert not differ, f"{key} differs from local with 1 worker in {differ}"
    report = json.loads(want[2])
    assert report["in"] == 5000 + 2017 + 1319 + 100 + 50
    assert report["per_source"]["planted"]["in"] == 150 and report["per_source"]["planted"]["out"] == 0
    assert report["per_source"]["gsm8k"]["dropped"] == {"contaminated:gsm8k": 1319}
    near = report["near"]
    assert near["verified"] >= 100 and near["rejected_by_verification"] > 0
    assert near["skipped_already_clustered"] > 0
