"""MLflow tracking overhead per stage run: the same stage-shaped work (load params, hash a folder,
write a report) with tracking off and on, each in a fresh process as DVC runs a stage, `--repeat`
times; median wall time. Also: the first run against a new SQLite store (creates its tables) and
the cost of `import mlflow` alone.

    python benchmarks/tracking.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGE = """
from pathlib import Path
from sftpipe.runtime import tracking
from sftpipe.core.jsonio import write_json
from sftpipe.params import load_params
p = load_params().train
with tracking.stage_run("bench", p, deps=["data"], outs=["report.json"]) as run:
    report = {"in": 1000, "out": 990, "dropped": {"too_long": 10}}
    write_json("report.json", report)
    run.log_metrics(report)
"""


def timed(code: str, cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5, help="runs per side (median is reported)")
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "params.yaml").write_text((root / "params.yaml").read_text())
        (work / "data").mkdir()
        for i in range(20):
            (work / "data" / f"part-{i}.jsonl").write_bytes(os.urandom(50_000))
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
        first = timed(STAGE, work, env)  # creates the store
        on = [timed(STAGE, work, env) for _ in range(args.repeat)]
        off = [timed(STAGE, work, {**env, "SFTPIPE_TRACKING": "off"}) for _ in range(args.repeat)]
        imp = [timed("import mlflow", work, env) for _ in range(args.repeat)]
        bare = [timed("pass", work, env) for _ in range(args.repeat)]
    med_on, med_off = statistics.median(on), statistics.median(off)
    print(f"| case | median s (of {args.repeat}) |")
    print("|---|---|")
    print(f"| stage, tracking off | {med_off:.2f} |")
    print(f"| stage, tracking on | {med_on:.2f} |")
    print(f"| overhead per stage run | {med_on - med_off:.2f} (x{med_on / med_off:.2f}) |")
    print(f"| first run on a new store (creates tables) | {first:.2f} |")
    print(f"| `import mlflow` alone | {statistics.median(imp) - statistics.median(bare):.2f} |")


if __name__ == "__main__":
    main()
