"""The dedup stage on `engine: local` and `engine: ray`, side by side in one run on the same input:
wall time, peak memory of the stage's whole process tree (Ray's processes included; sampled every
0.2 s) and a check that both wrote byte-identical outputs.

The default input is the 100,000-conversation corpus of benchmarks/dedup.py (real corpora plus
planted copies and hard negatives; `python benchmarks/dedup.py --only sftpipe` builds it once).

    python benchmarks/dedup_engines.py --workers 2
    python benchmarks/dedup_engines.py --input /tmp/sftpipe-scale/inputs/scale-100000-seed0.jsonl

Each run is `stages/dedup.py` as a subprocess with the project's `dedup` params, so the ray run
includes starting a local Ray instance, as a user's run does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
from scale import tree_memory  # noqa: E402  (benchmarks/ is this script's folder)

OUTPUTS = ("out/records.jsonl", "out/rejected.jsonl", "dedup.json", "dedup_clusters.jsonl")


def run(engine: str, workers: int, source: Path, work: Path) -> dict:
    run_dir = work / engine
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    dedup = yaml.safe_load((ROOT / "params.yaml").read_text()).get("dedup", {})
    params = {"seed": 42, "workers": workers, "engine": engine, "sources": {}, "dedup": dedup}
    (run_dir / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, str(ROOT / "stages/dedup.py"), "--params", str(run_dir / "params.yaml"),
           "--input", str(source), "--out", str(run_dir / "out"), "--reports", str(run_dir)]  # fmt: skip
    env = {**os.environ, "TQDM_DISABLE": "1"}
    peak, t0 = 0, time.perf_counter()
    with open(run_dir / "log.txt", "wb") as log:
        proc = psutil.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        while True:
            peak = max(peak, tree_memory(proc))
            with contextlib.suppress(psutil.TimeoutExpired):
                code = proc.wait(timeout=0.2)
                break
    seconds = time.perf_counter() - t0
    if code:
        raise SystemExit(f"{engine}: exit {code}, see {run_dir / 'log.txt'}")
    report = json.loads((run_dir / "dedup.json").read_text())
    return {
        "seconds": round(seconds, 1),
        "peak_mb": round(peak / 2**20),
        "in": report["in"],
        "out": report["out"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--input", default=str(ROOT / "benchmarks/.work/dedup/corpus.jsonl"), help="canonical records (JSONL)"
    )
    ap.add_argument("--work", default=str(ROOT / "benchmarks/.work/dedup_engines"), help="scratch folder")
    ap.add_argument("--workers", type=int, default=2, help="workers (CPUs) for both engines")
    args = ap.parse_args()
    source, work = Path(args.input), Path(args.work)
    if not source.is_file():
        raise SystemExit(f"{source}: no such file (python benchmarks/dedup.py --only sftpipe builds it)")
    results = {engine: run(engine, args.workers, source, work) for engine in ("local", "ray")}
    same = all((work / "local" / f).read_bytes() == (work / "ray" / f).read_bytes() for f in OUTPUTS)
    mb = source.stat().st_size / 2**20
    print(f"input: {source} ({results['local']['in']} records, {mb:.0f} MB), workers={args.workers}")
    print("| engine | seconds | peak MB (process tree) | records out | time vs local |")
    print("|---|---|---|---|---|")
    for engine, r in results.items():
        ratio = r["seconds"] / results["local"]["seconds"]
        print(f"| {engine} | {r['seconds']} | {r['peak_mb']} | {r['out']} | {ratio:.2f}x |")
    print(f"outputs byte-identical: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
