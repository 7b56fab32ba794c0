"""mix: weighted per-source sampling of train (after the split, so repeats never leak into val/test).

Reads data/interim/split/<split>.parquet; writes data/interim/mix/<split>.parquet and
reports/mix.json (per split accounting; per source: available, weight, target, share).
"""

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa

from sftpipe.core.accounting import Tally
from sftpipe.core.jsonio import atomic_path, write_json
from sftpipe.core.params import load_params
from sftpipe.data.mix import MixParams, eval_rows, train_rows
from sftpipe.data.split import SPLITS, counts
from sftpipe.io.columnar import read_column, write_rows
from sftpipe.runtime import cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--input", default="data/interim/split", help="folder with <split>.parquet")
    ap.add_argument("--out", default="data/interim/mix", help="folder for the mixed <split>.parquet")
    ap.add_argument("--report", default="reports/mix.json", help="accounting, targets and shares")
    args = ap.parse_args()

    params = load_params(args.params, mix=MixParams)
    tallies = {n: Tally() for n in SPLITS}
    src = {n: Path(args.input) / f"{n}.parquet" for n in SPLITS}
    # only id and source decide; the heavy columns stream from disk in the order decided here
    ids, sources = read_column(src["train"], "id"), read_column(src["train"], "source")
    rows, copies, shares = train_rows(ids, sources, params.mix, params.seed, tallies["train"])
    picked = {"train": {"source": [sources[i] for i in rows.tolist()]}}
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        write_rows(
            src["train"], rows, tmp / "train.parquet", extra={"copy": pa.array(copies)}, desc="mix train"
        )
        for name in ("val", "test"):
            sources = read_column(src[name], "source")
            kept = eval_rows(sources, params.mix, params.seed, name, tallies[name])
            zeros = pa.array(np.zeros(len(kept), dtype=np.int32))
            write_rows(src[name], kept, tmp / f"{name}.parquet", extra={"copy": zeros}, desc=f"mix {name}")
            picked[name] = {"source": [sources[i] for i in kept.tolist()]}
        for name in SPLITS:
            tallies[name].check()
    total = Tally()
    for t in tallies.values():
        total.merge(t)
    report = {**total.as_dict(), "by_split": {n: t.as_dict() for n, t in tallies.items()}, "sources": shares}
    write_json(args.report, {**report, "splits": counts(picked)})
    print("mix: train " + ", ".join(f"{s} {v['target']} ({v['share']:.1%})" for s, v in shares.items()))


if __name__ == "__main__":
    cli.run(main, stage="mix")
