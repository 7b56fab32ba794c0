"""report: metrics, dataset card, stable samples, manifest and plots for review in a pull request.

Reads data/interim/mix/<split>.parquet and every stage's reports/*.json; writes git-tracked files
under reports/ (see sftpipe/data/report.py). Compare two revisions with `python -m sftpipe.review`.
"""

import argparse

from sftpipe.core.params import load_params
from sftpipe.data import report
from sftpipe.data.report import ReportParams
from sftpipe.io.sources import Sources
from sftpipe.runtime import cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--input", default="data/interim/mix", help="folder with the final <split>.parquet")
    ap.add_argument("--reports", default="reports", help="reports folder (read and written)")
    args = ap.parse_args()

    params = load_params(args.params, sources=Sources, report=ReportParams)
    m = report.run(params.report, params.sources, args.input, args.reports)
    print(f"report: {sum(v['total'] for v in m['splits'].values())} examples; see reports/dataset_card.md")


if __name__ == "__main__":
    cli.run(main, stage="report")
