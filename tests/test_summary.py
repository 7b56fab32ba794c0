"""summary: the headline metrics file that `dvc exp show` lists."""

import json
from pathlib import Path

import pytest

from sftpipe import summary

ROOT = Path(__file__).resolve().parents[1]


def _write(folder: Path, name: str, obj: dict) -> None:
    (folder / name).write_text(json.dumps(obj))


def test_summary_of_tiny_reports(tmp_path):
    _write(
        tmp_path,
        "metrics.json",
        {
            "splits": {"train": {"total": 8}, "val": {"total": 1}, "test": {"total": 1}},
            "tokens": {"train": {"total": 800}},
            "stages": {
                "ingest/a": {"in": 10, "out": 9},
                "ingest/b": {"in": 6, "out": 6},
                "distill": {"in": 4, "out": 1},
                "dedup": {"in": 16, "out": 12},
                "export": {"in": 10, "out": 10},
            },
        },
    )
    paired = {
        "base": 2.0,
        "trained": 1.5,
        "delta": -0.5,
        "ci_low": -0.6,
        "ci_high": -0.4,
        "improved_share": 0.75,
    }
    task = {"trained": {"accuracy": 0.3}, "delta": {"delta": 0.1}}
    _write(tmp_path, "evaluate.json", {"paired": {"val": paired}, "tasks": {"gsm8k": task}})
    s = summary.summarize(tmp_path)
    assert s["rows"] == {"test": 1, "train": 8, "val": 1} and s["train_tokens"] == 800
    assert s["kept"] == round(10 / 20, 4)  # exported over read: ingest 16 + distill 4
    assert s["dedup_rate"] == 0.25
    assert s["val"] == {"loss": 1.5, "delta": -0.5, "ci_low": -0.6, "ci_high": -0.4, "better": 0.75}
    assert s["tasks"] == {"gsm8k": {"accuracy": 0.3, "delta": 0.1}}
    assert "test" not in s and "judge" not in s


def test_summary_without_evaluation_keeps_the_data_headline(tmp_path):
    _write(tmp_path, "metrics.json", {"splits": {"train": {"total": 3}}, "stages": {}})
    assert summary.summarize(tmp_path) == {"rows": {"train": 3}, "train_tokens": None}


def test_summary_of_the_committed_default_build_matches_its_reports():
    reports = ROOT / "reports"
    if not (reports / "evaluate.json").is_file():
        pytest.skip("no reports of the default build")
    s = summary.summarize(reports)
    evaluate = json.loads((reports / "evaluate.json").read_text())
    metrics = json.loads((reports / "metrics.json").read_text())
    assert sum(s["rows"].values()) == metrics["stages"]["export"]["out"]
    for split in ("val", "test"):
        assert s[split]["delta"] == evaluate["paired"][split]["delta"]
    assert s["val"]["ci_low"] <= s["val"]["delta"] <= s["val"]["ci_high"]
    assert 0 < s["kept"] <= 1 and 0 <= s["dedup_rate"] < 1
    # the committed summary.json is what the summary stage writes from these reports
    assert json.loads((reports / "summary.json").read_text()) == s


def test_summary_is_the_only_dvc_metric():
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    metrics = [m for s in stages.values() for m in s.get("metrics", s.get("do", {}).get("metrics", []))]
    assert metrics == [{"reports/summary.json": {"cache": False}}]
