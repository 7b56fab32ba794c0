"""format: render the deduplicated records with a template, tokenize them and build label masks.

Reads data/interim/dedup/records.jsonl and the tokenizer in models/base; writes
data/interim/format/{data.parquet,rejected.jsonl} and reports/format.json.
"""

import argparse

from sftpipe import cli
from sftpipe.format import FormatError, SanityError, format_file
from sftpipe.params import load_params
from sftpipe.templates import TemplateError
from sftpipe.tokenize import TokenizerError, load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--input", default="data/interim/dedup/records.jsonl", help="canonical records to format")
    ap.add_argument("--tokenizer", default="models/base", help="tokenizer folder (default: models/base)")
    ap.add_argument("--out", default="data/interim/format", help="output folder")
    ap.add_argument("--report", default="reports/format.json", help="stage report")
    args = ap.parse_args()

    params = load_params(args.params).format
    tokenizer = load_tokenizer(args.tokenizer)
    tally, extra = format_file(args.input, tokenizer, params, args.out, tokenizer_path=args.tokenizer)
    report = tally.write(args.report, **extra)
    tokens = report["tokens"]
    print(
        f"format ({params.template}): {report['in']} in, {report['out']} out, dropped {report['dropped']}; "
        f"tokens mean {tokens['mean']}, max {tokens['max']} (max_length {params.max_length})"
    )


if __name__ == "__main__":
    cli.register(FormatError, SanityError, TemplateError, TokenizerError)
    cli.run(main, stage="format")
