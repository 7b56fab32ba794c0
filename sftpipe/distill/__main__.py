"""`python -m sftpipe.distill score --slices F --pairs P --out O`: score pairs you already have
with the gates configured in params.yaml's distill section (judges, calibration, grounding), and
write each pair's scores and verdict to O; the summary (verdict counts, each judge's AUC on the
control pairs, and on the pairs' own 0/1 `label`s when they carry them) goes to stdout as JSON."""

from __future__ import annotations

import argparse
import json

from sftpipe.core.params import load_params
from sftpipe.runtime import cli


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m sftpipe.distill", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("score", help="score pairs with the configured gates")
    sc.add_argument("--slices", required=True, help="knowledge slices (JSONL {id, content, metadata?})")
    sc.add_argument(
        "--pairs", required=True, help="pairs (JSONL {slice, instruction, input?, response, label?...})"
    )
    sc.add_argument("--out", required=True, help="output JSONL: each pair with its scores and verdict")
    sc.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = ap.parse_args()

    from sftpipe.distill.run import DistillParams
    from sftpipe.distill.score import score_pairs

    params = load_params(args.params, distill=DistillParams)
    summary = score_pairs(params.distill, params.seed, args.slices, args.pairs, args.out)
    print(json.dumps(summary, indent=1, sort_keys=True))


if __name__ == "__main__":
    cli.run(main)
