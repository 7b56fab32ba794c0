"""export: the mixed splits as an HF DatasetDict, JSONL in every trainer format, Parquet, and
metadata.json; fails when a sanity check fails (decoded tokens != text, overlong rows, empty
prompts or completions, overlap between splits, bad collated shapes).

Reads data/interim/mix/<split>.parquet and the tokenizer in models/base; writes data/processed/,
reports/export.json and reports/sanity.json.
"""

import argparse
from pathlib import Path

import pyarrow.parquet as pq
from transformers import AutoTokenizer

from sftpipe import cli
from sftpipe.accounting import Tally
from sftpipe.export import SanityError, jsonl_rows, metadata, sanity, save_hf
from sftpipe.jsonio import atomic_path, write_json, write_jsonl
from sftpipe.params import load_params
from sftpipe.split import SPLITS, counts, overlap

DATA_SECTIONS = ("seed", "sources", "clean", "dedup", "format", "split", "mix", "export")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--input", default="data/interim/mix", help="folder with the mixed <split>.parquet")
    ap.add_argument("--tokenizer", default="models/base", help="tokenizer folder for the sanity checks")
    ap.add_argument("--out", default="data/processed", help="output folder")
    ap.add_argument("--reports", default="reports", help="folder for export.json and sanity.json")
    args = ap.parse_args()

    params = load_params(args.params)
    p = params.export
    parts = {n: pq.read_table(Path(args.input) / f"{n}.parquet") for n in SPLITS}
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    max_length = params.format.max_length
    checks = sanity(parts, tokenizer, max_length, p.sanity_samples, overlap(parts))

    data_params = {k: v for k, v in params.model_dump(mode="json").items() if k in DATA_SECTIONS}
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        save_hf(parts, tmp / "hf")
        for fmt in p.formats:
            for name, table in parts.items():
                write_jsonl(tmp / "jsonl" / fmt / f"{name}.jsonl", jsonl_rows(table, fmt))
        if p.parquet:
            (tmp / "parquet").mkdir()
            for name, table in parts.items():
                pq.write_table(
                    table.replace_schema_metadata(None),
                    tmp / "parquet" / f"{name}.parquet",
                    compression="zstd",
                )
        write_json(
            tmp / "metadata.json", metadata(data_params, list(params.sources), parts, Path(args.reports))
        )

    tally = Tally()
    tally.seen(sum(t.num_rows for t in parts.values()))
    tally.kept(tally.n_in)
    write_json(Path(args.reports) / "sanity.json", checks)
    tally.write(Path(args.reports) / "export.json", splits=counts(parts), formats=list(p.formats))
    print(f"export: {', '.join(f'{n} {t.num_rows}' for n, t in parts.items())} -> {args.out}")


if __name__ == "__main__":
    cli.register(SanityError)
    cli.run(main, stage="export")
