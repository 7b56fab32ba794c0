"""ingest@<source>: read one source named in params.yaml `sources:` and write canonical records.

Writes data/interim/ingest/<source>/{records,rejected}.jsonl and reports/ingest/<source>.json.
"""

import argparse
from pathlib import Path

from sftpipe.core.config import ParamsError
from sftpipe.core.params import load_params
from sftpipe.data.ingest import ingest
from sftpipe.io.sources import Sources, digest
from sftpipe.runtime import cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("source", help="source name, a key of `sources:` in params.yaml")
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--out", default="data/interim/ingest", help="folder for per-source outputs")
    ap.add_argument("--reports", default="reports/ingest", help="folder for per-source reports")
    args = ap.parse_args()

    params = load_params(args.params, sources=Sources)
    sources = params.sources
    if args.source not in sources:
        raise ParamsError(f"sources.{args.source}: no such source (have: {', '.join(sorted(sources))})")
    spec = sources[args.source]
    tally = ingest(
        args.source, spec, Path(args.out) / args.source, engine=params.engine, workers=params.n_workers
    )
    report = tally.write(
        Path(args.reports) / f"{args.source}.json", format=tally.format, input_digest=digest(spec)
    )
    dropped = sum(report["dropped"].values())
    print(
        f"ingest {args.source}: {report['in']} in, {report['out']} out, {dropped} dropped {report['dropped']}"
    )


if __name__ == "__main__":
    cli.run(main, stage="ingest")
