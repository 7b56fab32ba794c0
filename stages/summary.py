"""summary: the headline metrics of a build in reports/summary.json (see sftpipe/summary.py).

The one DVC metrics file, so `dvc exp show` and `dvc metrics show` stay a readable table; it is
also logged on the build's MLflow parent run, beside the whole params.
"""

import argparse

from sftpipe import summary
from sftpipe.runtime import cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reports", default="reports", help="folder with the stage reports")
    ap.add_argument("--out", default="reports/summary.json", help="the headline metrics file")
    args = ap.parse_args()

    s = summary.run(args.reports, args.out)
    val = s.get("val")
    line = f"summary: {sum(s.get('rows', {}).values())} rows"
    if val:
        line += (
            f"; val loss {val['loss']:.4f} ({val['delta']:+.4f} vs base, 95% CI"
            f" [{val['ci_low']:+.4f}, {val['ci_high']:+.4f}], {val['better']:.0%} of rows better)"
        )
    print(line)


if __name__ == "__main__":
    cli.run(main, stage="summary")
