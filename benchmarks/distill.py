"""distill throughput against the local llama.cpp server (SmolLM2-135M-Instruct), side by side:

- 1 server, max_concurrent 1 (the default);
- 1 server, max_concurrent 4: the llama-cpp-python server has no parallel slots (no --n_parallel;
  one global lock runs one request at a time), so extra concurrency only queues at the server;
- `--servers` servers (1 thread each), max_concurrent 4: parallel requests need more processes.

Each configuration runs the whole stage (generation + judges) on the default knowledge slices with
no request cache, so every pair is generated and judged for real; pairs per minute = slices x
samples / wall minutes. The kept records of every configuration are compared byte for byte (the
output must not depend on concurrency or on which server answered).

    python benchmarks/distill.py [--samples 1] [--judges 1] [--servers 2]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from sftpipe.distill.run import distill
from sftpipe.params import load_params


def run(base, servers: int, concurrent: int, samples: int, judges: int) -> tuple[float, float, int, str]:
    """Wall seconds, CPU seconds of the llama.cpp servers (children, counted once reaped), pairs, digest."""
    gen = base.generator.model_copy(update={"max_concurrent": concurrent})
    js = [j.model_copy(update={"max_concurrent": concurrent}) for j in base.judges[:judges]]
    params = base.model_copy(
        update={
            "generator": gen,
            "judges": js,
            "min_votes": min(base.min_votes, judges),
            "samples_per_slice": samples,
            "cache_dir": None,
            "local": base.local.model_copy(update={"servers": servers, "n_threads": 1}),
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        cpu0, t0 = _children_cpu(), time.perf_counter()
        tally, _ = distill(params, 42, Path(tmp) / "out")
        wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
        digest = hashlib.sha256((Path(tmp) / "out" / "scored.jsonl").read_bytes()).hexdigest()[:12]
    return wall, cpu, tally.n_in, digest


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1, help="pairs per slice (default 1)")
    ap.add_argument("--judges", type=int, default=1, help="judges used, from params.yaml (default 1)")
    ap.add_argument("--servers", type=int, default=2, help="servers in the multi-process run (default 2)")
    args = ap.parse_args()
    base = load_params().distill
    configs = [(1, 1), (1, 4), (args.servers, 4)]
    print(
        f"cpus: {len(os.sched_getaffinity(0))}, load average before: {os.getloadavg()[0]:.1f}",
        file=sys.stderr,
    )
    rows = []
    for servers, conc in configs:
        wall, cpu, pairs, digest = run(base, servers, conc, args.samples, args.judges)
        rows.append((servers, conc, wall, cpu, pairs, pairs / wall * 60, digest))
        print(f"servers {servers}, max_concurrent {conc}: {pairs} pairs in {wall:.1f} s", file=sys.stderr)
    print(
        "| servers | max_concurrent | pairs | wall s | server CPU s | pairs/min | vs 1x1 | scored.jsonl sha256 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for servers, conc, wall, cpu, pairs, ppm, digest in rows:
        ratio = ppm / rows[0][5]
        print(
            f"| {servers} | {conc} | {pairs} | {wall:.1f} | {cpu:.1f} | {ppm:.2f} | {ratio:.2f}x | {digest} |"
        )
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
