"""report: metrics, dataset card, stable samples, manifest and plots for review in a pull request.

Reads data/interim/mix/<split>.parquet and every stage's reports/*.json; writes git-tracked files
under reports/ (see sftpipe/data/report.py). Compare two revisions with `python -m sftpipe.review`.
"""

import argparse
from pathlib import Path

import orjson

from sftpipe.core.jsonio import atomic_path, write_json, write_jsonl
from sftpipe.core.params import load_params
from sftpipe.data.card import render
from sftpipe.data.report import (
    ReportParams,
    histogram_rows,
    languages,
    lengths,
    manifest_rows,
    metrics,
    plot_pngs,
    samples,
    write_csv,
    write_manifest,
)
from sftpipe.data.split import SPLITS
from sftpipe.io.sources import Sources
from sftpipe.runtime import cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--input", default="data/interim/mix", help="folder with the final <split>.parquet")
    ap.add_argument("--reports", default="reports", help="reports folder (read and written)")
    args = ap.parse_args()

    params = load_params(args.params, sources=Sources, report=ReportParams)
    p, reports = params.report, Path(args.reports)
    parts = {n: Path(args.input) / f"{n}.parquet" for n in SPLITS}  # read column by column
    by = lengths(parts)
    m = metrics(parts, reports, by)
    write_json(reports / "metrics.json", m)
    write_manifest(manifest_rows(parts), reports, p.manifest_shards)
    with atomic_path(reports / "samples") as tmp:
        tmp.mkdir()
        for source, rows in samples(parts, p.samples_per_source).items():
            write_jsonl(tmp / f"{source}.jsonl", rows)
    write_csv(reports / "plots" / "token_lengths.csv", histogram_rows(by))
    shares = {s: v for s, v in m["mix_shares"].items() if v is not None}
    write_csv(reports / "plots" / "mix_shares.csv", [{"source": s, "share": v} for s, v in shares.items()])
    plot_pngs(reports / "plots", by, shares)

    fmt = orjson.loads((reports / "format.json").read_bytes()) if (reports / "format.json").exists() else {}
    with atomic_path(reports / "dataset_card.md") as tmp:
        tmp.write_text(render(p.dataset_name, params.sources, m, fmt, languages(parts)), encoding="utf-8")
    print(f"report: {sum(v['total'] for v in m['splits'].values())} examples; see reports/dataset_card.md")


if __name__ == "__main__":
    cli.run(main, stage="report")
