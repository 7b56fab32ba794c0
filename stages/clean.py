"""clean: merge every source's ingested records and apply the clean rules of params.yaml `clean:`.

Reads <ingest>/<name>/records.jsonl for every name in `sources:` (sorted), then each --extra file
that exists; writes data/interim/clean/{records,rejected}.jsonl and reports/clean.json.
"""

import argparse

from sftpipe.core.params import load_params
from sftpipe.data.clean.rules import CleanParams, clean, input_files
from sftpipe.io.sources import Sources
from sftpipe.runtime import cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--ingest", default="data/interim/ingest", help="folder of per-source ingest outputs")
    ap.add_argument(
        "--extra",
        action="append",
        default=[],
        help="another canonical records.jsonl to clean after the sources, if it exists (repeatable)",
    )
    ap.add_argument("--out", default="data/interim/clean", help="output folder")
    ap.add_argument("--report", default="reports/clean.json", help="report file")
    args = ap.parse_args()

    params = load_params(args.params, sources=Sources, clean=CleanParams)
    inputs = input_files(args.ingest, params.sources, args.extra)
    tally, extra = clean(inputs, args.out, params.clean, workers=params.n_workers, engine=params.engine)
    report = tally.write(args.report, **extra)
    dropped = sum(report["dropped"].values())
    print(f"clean: {report['in']} in, {report['out']} out, {dropped} dropped {report['dropped']}")


if __name__ == "__main__":
    cli.run(main, stage="clean")
