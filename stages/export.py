"""export: the mixed splits as an HF DatasetDict, JSONL in every trainer format, Parquet, and
metadata.json; fails when a sanity check fails: the row checks format runs (overlong rows, nothing
trained, empty prompts or completions, labels not matching the tokens, and decoded tokens != text on
a sample), overlap between splits, bad collated shapes.

Reads data/interim/mix/<split>.parquet (streamed in batches, so memory stays flat at any size) and
the tokenizer in models/base; writes data/processed/, reports/export.json and reports/sanity.json.
"""

import argparse
from pathlib import Path

from sftpipe.core.params import load_params
from sftpipe.data import export
from sftpipe.data.clean.rules import CleanParams
from sftpipe.data.dedup.params import DedupParams
from sftpipe.data.export import ExportParams
from sftpipe.data.format.formatter import FormatParams
from sftpipe.data.mix import MixParams
from sftpipe.data.split import SplitParams
from sftpipe.io.sources import Sources
from sftpipe.runtime import cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--input", default="data/interim/mix", help="folder with the mixed <split>.parquet")
    ap.add_argument("--tokenizer", default="models/base", help="tokenizer folder for the sanity checks")
    ap.add_argument("--out", default="data/processed", help="output folder")
    ap.add_argument("--reports", default="reports", help="folder for export.json and sanity.json")
    args = ap.parse_args()

    params = load_params(
        args.params,
        sources=Sources,
        clean=CleanParams,
        dedup=DedupParams,
        format=FormatParams,
        split=SplitParams,
        mix=MixParams,
        export=ExportParams,
    )
    tally, extra = export.run(params, args.input, args.tokenizer, args.out, args.reports)
    report = tally.write(Path(args.reports) / "export.json", **extra)
    sizes = ", ".join(f"{n} {s['total']}" for n, s in report["splits"].items())
    print(f"export: {sizes} -> {args.out}")


if __name__ == "__main__":
    cli.run(main, stage="export")
