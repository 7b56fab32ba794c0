"""split: train/val/test by dedup cluster, stratified by source; asserts zero overlap between splits.

Reads data/interim/format/data.parquet; writes data/interim/split/{train,val,test}.parquet and
reports/split.json.
"""

import argparse

from sftpipe.core.params import load_params
from sftpipe.data import split
from sftpipe.data.split import SPLITS, SplitParams
from sftpipe.runtime import cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--input", default="data/interim/format/data.parquet", help="the format stage's table")
    ap.add_argument("--out", default="data/interim/split", help="folder for <split>.parquet")
    ap.add_argument("--report", default="reports/split.json", help="accounting and overlap report")
    args = ap.parse_args()

    params = load_params(args.params, split=SplitParams)
    tally, extra = split.run(params.split, params.seed, args.input, args.out)
    report = tally.write(args.report, **extra)
    print(
        "split: "
        + ", ".join(f"{n} {report['splits'][n]['total']}" for n in SPLITS)
        + f"; overlap {report['overlap']}"
    )


if __name__ == "__main__":
    cli.run(main, stage="split")
