"""OASST flat hub rows: ingest time and peak memory against the same trees in tree form.

The real 100-tree sample (../shared/corpora/oasst1_en_100_flat.jsonl) is copied `k` times with
fresh ids (copy c of message m is `m-c`), rows shuffled across the whole file, so trees arrive in
pieces and out of order as the hub's rows may; the tree form holds the same copies. Each side runs
in its own subprocess (its own peak RSS). Memory of the flat side should stay near flat as `k`
grows: rows wait on disk (SQLite), and one tree at a time is in memory.

    python benchmarks/oasst_flat.py [--copies 10 100]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


def _suffix(row: dict, c: int) -> dict:
    out = dict(row)
    for key in ("message_id", "parent_id", "message_tree_id"):
        if out.get(key) is not None:
            out[key] = f"{out[key]}-{c}"
    if "replies" in out:
        out["replies"] = [_suffix(r, c) for r in out["replies"]]
    if "prompt" in out:
        out["prompt"] = _suffix(out["prompt"], c)
    return out


def make_inputs(folder: Path, k: int) -> tuple[Path, Path]:
    flat = [json.loads(x) for x in (CORPORA / "oasst1_en_100_flat.jsonl").read_text().splitlines()]
    tree = [json.loads(x) for x in (CORPORA / "oasst1_en_100_tree.jsonl").read_text().splitlines()]
    rows = [_suffix(r, c) for c in range(k) for r in flat]
    random.Random(0).shuffle(rows)
    (folder / "flat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "tree.jsonl").write_text(
        "".join(json.dumps(_suffix(t, c)) + "\n" for c in range(k) for t in tree)
    )
    return folder / "flat.jsonl", folder / "tree.jsonl"


def child(path: str) -> None:
    from sftpipe.data.ingest import ingest
    from sftpipe.io.sources import SourceSpec

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        tally = ingest("o", SourceSpec(path=path, mode="all"), Path(tmp) / "out")
        dt = time.perf_counter() - t0
    # VmHWM, not ru_maxrss: the latter carries the parent's peak across fork + exec
    hwm = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM"))
    rss = int(hwm.split()[1]) // 1024
    print(json.dumps({"in": tally.n_in, "out": tally.n_out, "s": round(dt, 2), "rss_mb": rss}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, nargs="+", default=[10, 100], help="copies of the 100 trees")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child)
    print("| copies | form | rows in | conversations out | seconds | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for k in args.copies:
        with tempfile.TemporaryDirectory() as tmp:
            for form, path in zip(("flat (shuffled)", "tree"), make_inputs(Path(tmp), k), strict=True):
                got = subprocess.run(
                    [sys.executable, __file__, "--child", str(path)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                r = json.loads(got.stdout.strip().splitlines()[-1])
                print(f"| {k} | {form} | {r['in']:,} | {r['out']:,} | {r['s']} | {r['rss_mb']} |")


if __name__ == "__main__":
    main()
