"""format: render the deduplicated records with a template, tokenize them and build label masks.

Reads data/interim/dedup/records.jsonl and the tokenizer in models/base; writes
data/interim/format/{data.parquet,rejected.jsonl} and reports/format.json. Runs on `engine`
with `workers` processes (params.yaml); the outputs do not depend on either.
"""

import argparse

from sftpipe.core.params import load_params
from sftpipe.data.format.formatter import FormatParams, format_file
from sftpipe.runtime import cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--input", default="data/interim/dedup/records.jsonl", help="canonical records to format")
    ap.add_argument("--tokenizer", default="models/base", help="tokenizer folder (default: models/base)")
    ap.add_argument("--out", default="data/interim/format", help="output folder")
    ap.add_argument("--report", default="reports/format.json", help="stage report")
    args = ap.parse_args()

    params = load_params(args.params, format=FormatParams)
    tally, extra = format_file(
        args.input, args.tokenizer, params.format, args.out, engine=params.engine, workers=params.n_workers
    )
    report = tally.write(args.report, **extra)
    tokens = report["tokens"]
    print(
        f"format ({params.format.template}): {report['in']} in, {report['out']} out, "
        f"dropped {report['dropped']}; tokens mean {tokens['mean']}, max {tokens['max']} "
        f"(max_length {params.format.max_length})"
    )


if __name__ == "__main__":
    cli.run(main, stage="format")
