"""export: the mixed splits as an HF DatasetDict, JSONL in every trainer format, Parquet, and
metadata.json; fails when a sanity check fails (decoded tokens != text, overlong rows, empty
prompts or completions, overlap between splits, bad collated shapes).

Reads data/interim/mix/<split>.parquet (streamed in batches, so memory stays flat at any size) and
the tokenizer in models/base; writes data/processed/, reports/export.json and reports/sanity.json.
"""

import argparse
from pathlib import Path

from transformers import AutoTokenizer

from sftpipe.core.accounting import Tally
from sftpipe.core.jsonio import atomic_path, write_json
from sftpipe.core.params import load_params
from sftpipe.data.clean.rules import CleanParams
from sftpipe.data.dedup.params import DedupParams
from sftpipe.data.export import ExportParams, metadata, sanity, survey, write_outputs
from sftpipe.data.format.formatter import FormatParams
from sftpipe.data.mix import MixParams
from sftpipe.data.split import SPLITS, SplitParams
from sftpipe.io.sources import Sources
from sftpipe.runtime import cli

DATA_SECTIONS = ("seed", "sources", "clean", "dedup", "format", "split", "mix", "export")


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
    p = params.export
    splits = {n: Path(args.input) / f"{n}.parquet" for n in SPLITS}
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    facts = survey(splits, p.sanity_samples)
    checks = sanity(facts, tokenizer, params.format.max_length)

    data_params = {k: v for k, v in params.model_dump(mode="json").items() if k in DATA_SECTIONS}
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        write_outputs(splits, p.formats, p.parquet, tmp, workers=params.n_workers)
        write_json(
            tmp / "metadata.json", metadata(data_params, list(params.sources), facts, Path(args.reports))
        )

    tally = Tally()
    tally.seen(sum(f.rows for f in facts.splits.values()))
    tally.kept(tally.n_in)
    write_json(Path(args.reports) / "sanity.json", checks)
    tally.write(Path(args.reports) / "export.json", splits=facts.counts(), formats=list(p.formats))
    print(f"export: {', '.join(f'{n} {f.rows}' for n, f in facts.splits.items())} -> {args.out}")


if __name__ == "__main__":
    cli.run(main, stage="export")
