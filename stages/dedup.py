"""dedup: drop exact, near- and (optionally) semantic duplicates across all sources, and records
that overlap evaluation sets; every survivor gets `meta.cluster`.

Reads data/interim/clean/records.jsonl; writes data/interim/dedup/{records,rejected}.jsonl,
reports/dedup.json and reports/dedup_clusters.jsonl.
"""

import argparse
from pathlib import Path

from sftpipe.core.params import load_params
from sftpipe.data.dedup.run import DedupParams, dedup
from sftpipe.runtime import cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument(
        "--input", default="data/interim/clean/records.jsonl", help="canonical records to deduplicate"
    )
    ap.add_argument(
        "--out", default="data/interim/dedup", help="output folder (records.jsonl, rejected.jsonl)"
    )
    ap.add_argument("--reports", default="reports", help="folder for dedup.json and dedup_clusters.jsonl")
    args = ap.parse_args()

    params = load_params(args.params, dedup=DedupParams)
    if not Path(args.input).is_file():
        raise FileNotFoundError(f"{args.input}: no such file (run the clean stage first)")
    reports = Path(args.reports)
    report = dedup(
        args.input,
        args.out,
        reports / "dedup.json",
        reports / "dedup_clusters.jsonl",
        params.dedup,
        seed=params.seed,
        workers=params.n_workers,
        engine=params.engine,
    )
    dropped = sum(report["dropped"].values())
    print(f"dedup: {report['in']} in, {report['out']} out, {dropped} dropped {report['dropped']}")


if __name__ == "__main__":
    cli.run(main, stage="dedup")
