"""split: train/val/test by dedup cluster, stratified by source; asserts zero overlap between splits.

Reads data/interim/format/data.parquet; writes data/interim/split/{train,val,test}.parquet and
reports/split.json.
"""

import argparse

import pyarrow.parquet as pq

from sftpipe.core.accounting import Tally
from sftpipe.core.jsonio import atomic_path
from sftpipe.core.params import load_params
from sftpipe.data.split import SPLITS, SplitParams, counts, overlap, split
from sftpipe.io.columnar import write_many
from sftpipe.runtime import cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--input", default="data/interim/format/data.parquet", help="the format stage's table")
    ap.add_argument("--out", default="data/interim/split", help="folder for <split>.parquet")
    ap.add_argument("--report", default="reports/split.json", help="accounting and overlap report")
    args = ap.parse_args()

    params = load_params(args.params, split=SplitParams)
    rows, parts = split(args.input, params.split, params.seed)
    tally = Tally()
    tally.seen(pq.read_metadata(args.input).num_rows)
    tally.kept(sum(len(r) for r in rows.values()))
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        # one pass over the input for all three: each batch is decoded once
        write_many(args.input, {tmp / f"{n}.parquet": (rows[n], None) for n in SPLITS}, desc="split")
    report = tally.write(args.report, splits=counts(parts), overlap=overlap(parts))
    print(
        "split: "
        + ", ".join(f"{n} {report['splits'][n]['total']}" for n in SPLITS)
        + f"; overlap {report['overlap']}"
    )


if __name__ == "__main__":
    cli.run(main, stage="split")
