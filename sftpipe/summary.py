"""The headline of a build: one small metrics file that `dvc exp show` and `dvc metrics show` list.

Every stage keeps its full report under reports/ (git-tracked, read by review and compare); DVC
metrics are this file only, so an experiment table has a dozen columns, not five hundred:

- `rows`: examples per split, and `train_tokens`;
- `kept`: exported rows over rows read (ingest plus distill), `dedup_rate`: dedup's drop share;
- `val` / `test`: the trained model's loss, its paired difference from the base (with the 95% CI
  on val), and the share of rows it improved (evaluate's `paired`);
- `tasks.<name>`: the trained model's accuracy and its paired difference from the base;
- `judge`: the win rate against the base, when a judge ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftpipe.core.jsonio import loads, write_json


def _read(path: Path) -> dict:
    return loads(path.read_bytes()) if path.is_file() else {}


def _loss(paired: dict, ci: bool) -> dict:
    out = {"loss": paired["trained"], "delta": paired["delta"]}
    if ci:
        out |= {"ci_low": paired["ci_low"], "ci_high": paired["ci_high"]}
    return out | {"better": paired.get("improved_share")}


def summarize(reports: str | Path) -> dict[str, Any]:
    """The headline from the reports folder; a report that is absent leaves its keys out."""
    reports = Path(reports)
    metrics, evaluate = _read(reports / "metrics.json"), _read(reports / "evaluate.json")
    stages, out = metrics.get("stages", {}), {}
    if splits := metrics.get("splits"):
        out["rows"] = {name: split["total"] for name, split in sorted(splits.items())}
        out["train_tokens"] = metrics.get("tokens", {}).get("train", {}).get("total")
    read = sum(s["in"] for name, s in stages.items() if name.startswith("ingest/") or name == "distill")
    if read and "export" in stages:
        out["kept"] = round(stages["export"]["out"] / read, 4)
    if (dedup := stages.get("dedup")) and dedup["in"]:
        out["dedup_rate"] = round(1 - dedup["out"] / dedup["in"], 4)
    for split, paired in sorted(evaluate.get("paired", {}).items()):
        if split in ("val", "test"):  # the test CI stays in evaluate.json, for a narrower table
            out[split] = _loss(paired, ci=split == "val")
    for name, task in sorted(evaluate.get("tasks", {}).items()):
        out.setdefault("tasks", {})[name] = {
            "accuracy": task["trained"]["accuracy"],
            "delta": task["delta"].get("delta"),
        }
    if judge := evaluate.get("judge"):
        out["judge"] = {"win_rate": judge.get("win_rate"), "n": judge.get("n")}
    return out


def run(reports: str | Path, out: str | Path) -> dict[str, Any]:
    summary = summarize(reports)
    write_json(out, summary)
    return summary
