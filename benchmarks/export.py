"""Export (issue 8): the streaming export against the whole-table export of git revision `--before`.

Both sides run `python stages/export.py` as dvc.yaml does (a subprocess, MLflow tracking off), on
the same mix folder, interleaved `--repeat` times; best wall time wins, peak memory is the largest
sampled summed RSS of the process tree (every 0.1 s). `before` is that revision's sftpipe/ and
stages/ (git archive) on PYTHONPATH. The script checks both wrote the same JSONL, metadata.json,
reports, Parquet rows and HF rows (the HF shard bytes and fingerprints differ by design).

The input is a finished run folder (params.yaml, models/base, reports/, data/interim/mix/), e.g.
one of benchmarks/scale.py's; `--repeat-train k` writes a k-times larger train split (rows repeated
in 16384-row groups, as mix writes them) to see how each side scales.

    python benchmarks/export.py --run /tmp/sftpipe-scale/runs/local-100000 --before 75bf274 --repeat-train 5
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def checkout(rev: str, dest: Path) -> Path:
    """sftpipe/ and stages/ of git revision `rev` in dest."""
    tar = subprocess.run(
        ["git", "archive", rev, "sftpipe", "stages"], cwd=ROOT, check=True, capture_output=True
    )
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as t:
        t.extractall(dest, filter="data")
    return dest


def larger_mix(src: Path, dest: Path, k: int) -> Path:
    """src's splits with train repeated k times (overlap stays 0: only val/test are compared)."""
    dest.mkdir(parents=True)
    for name in ("val", "test"):
        shutil.copyfile(src / f"{name}.parquet", dest / f"{name}.parquet")
    train = pq.read_table(src / "train.parquet")
    pq.write_table(
        pa.concat_tables([train] * k), dest / "train.parquet", compression="zstd", row_group_size=16384
    )
    return dest


def run(argv: list[str], cwd: Path, env: dict) -> tuple[float, int]:
    """Wall seconds and peak summed RSS (bytes) of the process tree."""
    start, peak = time.perf_counter(), 0
    with open(os.devnull, "wb") as null:
        proc = psutil.Popen(argv, cwd=cwd, env=env, stdout=null, stderr=subprocess.PIPE)
        while proc.poll() is None:
            total = 0
            with contextlib.suppress(psutil.Error):
                for p in [proc, *proc.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
            peak = max(peak, total)
            time.sleep(0.1)
    if proc.returncode:
        raise SystemExit(f"{argv} failed:\n{proc.stderr.read().decode()[-2000:]}")
    return time.perf_counter() - start, peak


def same_outputs(a: Path, b: Path) -> None:
    """Same JSONL, metadata and reports bytes; same Parquet and HF rows."""
    import datasets

    for sub in ("out/jsonl", "reports"):
        cmp = filecmp.dircmp(a / sub, b / sub)
        assert not (cmp.diff_files or cmp.left_only or cmp.right_only), f"{sub} differs"
        for d in cmp.subdirs.values():
            assert not (d.diff_files or d.left_only or d.right_only), f"{sub} differs"
    assert filecmp.cmp(a / "out/metadata.json", b / "out/metadata.json", shallow=False)
    for f in sorted((a / "out/parquet").glob("*.parquet")):
        assert pq.read_table(f).equals(pq.read_table(b / "out/parquet" / f.name)), f.name
    da, db = datasets.load_from_disk(str(a / "out/hf")), datasets.load_from_disk(str(b / "out/hf"))
    for name in da:
        assert da[name].features == db[name].features and da[name].data.table.equals(db[name].data.table), (
            name
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--run", type=Path, required=True, help="run folder: params.yaml, models/base, reports, mix"
    )
    ap.add_argument("--before", default="75bf274", help="git revision of the whole-table export")
    ap.add_argument("--repeat", type=int, default=1, help="runs per side (best wall time wins)")
    ap.add_argument("--repeat-train", type=int, default=1, help="repeat the train split k times")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        tmp = Path(tmp)
        old = checkout(args.before, tmp / "rev")
        mix = args.run / "data" / "interim" / "mix"
        if args.repeat_train > 1:
            mix = larger_mix(mix, tmp / "mix", args.repeat_train)
        rows = sum(pq.ParquetFile(mix / f"{n}.parquet").metadata.num_rows for n in ("train", "val", "test"))
        sides = {
            "before": (old / "stages" / "export.py", str(old)),
            "streaming": (ROOT / "stages" / "export.py", ""),
        }
        best: dict[str, tuple[float, int]] = {}
        for _ in range(args.repeat):
            for side, (script, pythonpath) in sides.items():
                out = tmp / side
                shutil.rmtree(out, ignore_errors=True)
                shutil.copytree(args.run / "reports", out / "reports")
                env = {**os.environ, "SFTPIPE_TRACKING": "off", "PYTHONPATH": pythonpath}
                argv = [sys.executable, str(script), "--input", str(mix), "--out", str(out / "out"),
                        "--reports", str(out / "reports")]  # fmt: skip
                secs, peak = run(argv, args.run, env)
                print(f"{side}: {secs:.1f} s, peak {peak / 1e6:.0f} MB", file=sys.stderr)
                prev = best.get(side)
                best[side] = (min(secs, prev[0]) if prev else secs, max(peak, prev[1]) if prev else peak)
        same_outputs(tmp / "before", tmp / "streaming")

    print(f"rows {rows}; outputs equal (HF shard bytes aside)\n")
    print("| side | seconds | peak MB |\n|---|---|---|")
    for side, (secs, peak) in best.items():
        print(f"| {side} | {secs:.1f} | {peak / 1e6:.0f} |")
    (bs, bp), (ss, sp) = best["before"], best["streaming"]
    print(f"\nstreaming vs before: {bs / ss:.2f}x faster, {bp / sp:.2f}x less peak memory")


if __name__ == "__main__":
    main()
