"""`dvc repro` of the ingest stages in a temporary copy of the repo: outputs, accounting, and that
changing one source, or a file only it reads, re-ingests only that source."""

import hashlib
import json
import shutil

import pytest

from sftpipe.core.jsonio import read_jsonl
from tests.conftest import copy_repo, dvc

pytestmark = pytest.mark.slow


def test_dvc_repro_ingest_per_source(corpora, tmp_path):
    repo = copy_repo(tmp_path / "repo")
    params = (
        "seed: 1\nsources:\n"
        f"  libre:\n    path: {corpora / 'alpaca_libre_v2.jsonl'}\n    license: cc0-1.0\n"
        f"  seeds:\n    path: {corpora / 'self_instruct_seed_tasks.jsonl'}\n"
    )
    (repo / "params.yaml").write_text(params)
    dvc(repo, "repro", "ingest")
    report = json.loads((repo / "reports/ingest/libre.json").read_text())
    digest = report.pop("input_digest")
    assert report == {"in": 2294, "out": 2280, "dropped": {"invalid_json": 14}, "format": "alpaca"}
    assert digest == "md5:" + hashlib.md5((corpora / "alpaca_libre_v2.jsonl").read_bytes()).hexdigest()
    records = list(read_jsonl(repo / "data/interim/ingest/libre/records.jsonl"))
    assert len(records) == 2280 and records[0]["meta"]["license"] == "cc0-1.0"
    assert json.loads((repo / "reports/ingest/seeds.json").read_text())["out"] == 175

    # Changing one source's params re-runs only its own ingest.
    (repo / "params.yaml").write_text(params.replace("license: cc0-1.0", "license: cc0"))

    def changed() -> set[str]:
        return {s for s in json.loads(dvc(repo, "status", "--json").stdout) if s.startswith("ingest")}

    assert changed() == {"ingest@libre"}
    out = dvc(repo, "repro", "ingest").stdout
    assert "Running stage 'ingest@libre'" in out and "Running stage 'ingest@seeds'" not in out
    assert changed() == set()


def test_a_new_raw_file_re_ingests_only_the_source_that_reads_it(corpora, tmp_path):
    repo = copy_repo(tmp_path / "repo")
    raw = repo / "data/raw"
    (raw / "libre").mkdir()
    shutil.copy(corpora / "alpaca_libre_v2.jsonl", raw / "libre" / "part1.jsonl")
    shutil.copy(corpora / "self_instruct_seed_tasks.jsonl", raw / "seeds.jsonl")
    (repo / "params.yaml").write_text(
        "seed: 1\nsources:\n  libre:\n    path: data/raw/libre\n  seeds:\n    path: data/raw/seeds.jsonl\n"
    )
    dvc(repo, "repro", "ingest")

    def ran() -> set[str]:
        out = dvc(repo, "repro", "ingest").stdout
        return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}

    (raw / "unread.jsonl").write_text('{"text": "no source reads this"}\n')
    assert ran() == {"inputs"}
    lines = (corpora / "alpaca_libre_v2.jsonl").read_text().splitlines()[-3:]
    (raw / "libre" / "part2.jsonl").write_text("\n".join(lines) + "\n")
    assert ran() == {"inputs", "ingest@libre"}
    assert json.loads((repo / "reports/ingest/libre.json").read_text())["in"] == 2294 + 3
    assert not [s for s in json.loads(dvc(repo, "status", "--json").stdout) if s.startswith(("in", "ingest"))]
