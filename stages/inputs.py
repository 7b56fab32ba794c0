"""inputs: fingerprint the files each stage reads, so each depends on its own inputs only.

Writes data/interim/inputs/sources/<source>.json (what ingest@<source> reads),
data/interim/inputs/decontaminate.json (dedup's evaluation sets),
data/interim/inputs/evaluate.json (evaluate's task and prompt files) and
data/interim/inputs/distill.json (the NLI model and GGUF file distill's params name). A new or
changed file under data/raw/ re-runs this stage, and then only the stages whose fingerprint changed.
"""

import argparse

from sftpipe.core.params import load_params, read
from sftpipe.data import inputs
from sftpipe.io.sources import Sources
from sftpipe.runtime import cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--out", default="data/interim/inputs", help="folder for the fingerprints")
    args = ap.parse_args()

    params = load_params(args.params, sources=Sources)
    counts = inputs.write(args.out, params.sources, read(args.params))
    print(
        f"inputs: fingerprinted {counts['sources']} sources, {counts['decontaminate']} decontamination"
        f" sets, {counts['evaluate']} evaluation files, {counts['distill']} distill models"
    )


if __name__ == "__main__":
    cli.run(main, stage="inputs")
