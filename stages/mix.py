"""mix: weighted per-source sampling of train (after the split, so repeats never leak into val/test).

Reads data/interim/split/<split>.parquet; writes data/interim/mix/<split>.parquet and
reports/mix.json (per split accounting; per source: available, weight, target, share).
"""

import argparse
from pathlib import Path

import pyarrow.parquet as pq

from sftpipe import cli
from sftpipe.accounting import Tally
from sftpipe.jsonio import write_json
from sftpipe.mix import MixError, mix_eval, mix_train
from sftpipe.params import load_params
from sftpipe.split import SPLITS, counts, write_parquet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--input", default="data/interim/split", help="folder with <split>.parquet")
    ap.add_argument("--out", default="data/interim/mix", help="folder for the mixed <split>.parquet")
    ap.add_argument("--report", default="reports/mix.json", help="accounting, targets and shares")
    args = ap.parse_args()

    params = load_params(args.params)
    tallies = {n: Tally() for n in SPLITS}
    parts = {n: pq.read_table(Path(args.input) / f"{n}.parquet") for n in SPLITS}
    train, shares = mix_train(parts["train"], params.mix, params.seed, tallies["train"])
    out = {
        "train": train,
        **{n: mix_eval(parts[n], params.mix, params.seed, n, tallies[n]) for n in ("val", "test")},
    }
    for name in SPLITS:
        tallies[name].check()
        write_parquet(out[name], Path(args.out) / f"{name}.parquet")
    total = Tally()
    for t in tallies.values():
        total.merge(t)
    report = {**total.as_dict(), "by_split": {n: t.as_dict() for n, t in tallies.items()}, "sources": shares}
    write_json(args.report, {**report, "splits": counts(out)})
    print("mix: train " + ", ".join(f"{s} {v['target']} ({v['share']:.1%})" for s, v in shares.items()))


if __name__ == "__main__":
    cli.register(MixError)
    cli.run(main, stage="mix")
