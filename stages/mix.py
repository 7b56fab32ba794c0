"""mix: weighted per-source sampling of train (after the split, so repeats never leak into val/test).

Reads data/interim/split/<split>.parquet; writes data/interim/mix/<split>.parquet and
reports/mix.json (per split accounting; per source: available, weight, target, share).
"""

import argparse

from sftpipe.core.params import load_params
from sftpipe.data import mix
from sftpipe.data.mix import MixParams
from sftpipe.io.sources import Sources
from sftpipe.runtime import cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--input", default="data/interim/split", help="folder with <split>.parquet")
    ap.add_argument("--out", default="data/interim/mix", help="folder for the mixed <split>.parquet")
    ap.add_argument("--report", default="reports/mix.json", help="accounting, targets and shares")
    args = ap.parse_args()

    params = load_params(args.params, sources=Sources, mix=MixParams)
    # distill's pairs are a source of their own
    known = [*params.sources, "distill"]
    tally, extra = mix.run(params.mix, params.seed, args.input, args.out, known)
    shares = tally.write(args.report, **extra)["sources"]
    print("mix: train " + ", ".join(f"{s} {v['target']} ({v['share']:.1%})" for s, v in shares.items()))


if __name__ == "__main__":
    cli.run(main, stage="mix")
