"""The Ray path of dedup (`engine: ray`): LSH buckets paired on Ray Data, and verification
tasks run as Ray tasks. Both give exactly what the local path gives (`minhash.candidate_pairs`,
and `verify.check_pairs` on local workers)."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import numpy as np

from sftpipe.core.engine import EngineError, init_ray
from sftpipe.data.dedup.minhash import band_key, bucket_pairs, pair_codes, unique_pairs

LSH_SHARDS = 64  # at least this many groups of LSH buckets on Ray, each paired in one call
LSH_ROWS_PER_BLOCK = 16384  # signatures per Ray block


def band_rows(batch: dict, bands: int, shards: int) -> dict:
    """One row per record and band: its bucket key, and the shard that holds the bucket."""
    sigs, rows = batch["sig"], batch["row"]
    keys = np.concatenate([band_key(sigs, band, bands) for band in range(bands)])
    return {
        "shard": (keys % np.uint64(shards)).astype(np.int64),
        "band": np.repeat(np.arange(bands, dtype=np.int64), len(rows)),
        "key": keys,
        "row": np.tile(rows, bands),
    }


def shard_pairs(group: dict, max_bucket: int, n: int) -> dict:
    """`candidate_pairs` over whole buckets: rows of one (band, key) in ascending order, as there."""
    band, key, row = group["band"], group["key"], group["row"]
    order = np.lexsort((row, key, band))
    band, key, row = band[order], key[order], row[order]
    new = np.ones(len(row), dtype=bool)
    new[1:] = (band[1:] != band[:-1]) | (key[1:] != key[:-1])
    pairs = bucket_pairs(row, new, max_bucket)
    return {"code": pair_codes(pairs, n)}


def ray_candidate_pairs(sigs: np.ndarray, bands: int, max_bucket: int, workers: int) -> np.ndarray:
    """`minhash.candidate_pairs` on Ray Data: (band, bucket key, row) rows grouped by shards of
    buckets, each shard's buckets paired at once (a call per bucket would cost more than the work)."""
    import pyarrow as pa
    import ray
    from ray.data.extensions import ArrowTensorArray

    n = len(sigs)
    if not n:
        return np.zeros((0, 2), dtype=np.int64)
    init_ray(workers)
    shards = max(LSH_SHARDS, 4 * workers)
    blocks = [
        pa.table(
            {
                "row": np.arange(lo, min(lo + LSH_ROWS_PER_BLOCK, n)),
                "sig": ArrowTensorArray.from_numpy(sigs[lo : lo + LSH_ROWS_PER_BLOCK]),
            }
        )
        for lo in range(0, n, LSH_ROWS_PER_BLOCK)
    ]
    ds: ray.data.Dataset = ray.data.from_arrow(blocks)
    # this dataset's own context: a sort shuffle measured far faster here than a hash shuffle
    ds.context.shuffle_strategy = "sort_shuffle_pull_based"
    # Ray's stubs type the function as taking the batch alone: they miss what fn_kwargs passes
    ds = ds.map_batches(
        band_rows,  # type: ignore[arg-type]
        fn_kwargs={"bands": bands, "shards": shards},
        batch_size=None,
        batch_format="numpy",
    )
    ds = ds.groupby("shard", num_partitions=max(1, workers)).map_groups(
        shard_pairs,  # type: ignore[arg-type]  # as above: fn_kwargs
        fn_kwargs={"max_bucket": max_bucket, "n": n},
        batch_format="numpy",
    )
    return unique_pairs([b["code"] for b in ds.iter_batches(batch_size=None, batch_format="numpy")], n)


def _task_rows(batch: dict, fn: Callable[[Any, Any], np.ndarray], ctx: Any) -> dict:
    tasks = [pickle.loads(blob) for blob in batch["task"]]
    done = [pickle.dumps(fn(ctx, t), protocol=5) for t in tasks]
    return {"index": batch["index"], "status": done}


def verify_tasks(jobs: list, fn: Callable[[Any, Any], np.ndarray], ctx: Any, workers: int):
    """`fn(ctx, job)` of each verification job (with its `index`) as Ray tasks, a row each (so a
    job is never cut); results in order."""
    if not jobs:
        return
    import ray

    init_ray(workers)
    rows = [{"index": j.index, "task": pickle.dumps(j, protocol=5)} for j in jobs]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        _task_rows,  # type: ignore[arg-type]  # Ray's stubs miss what fn_kwargs passes
        fn_kwargs={"fn": fn, "ctx": ctx}, batch_size=1,
        compute=ray.data.TaskPoolStrategy(size=max(1, workers)), num_cpus=1,
    )  # fmt: skip
    for expected, row in enumerate(ds.iter_rows()):
        if int(row["index"]) != expected:
            raise EngineError(
                f"engine: ray returned verification task {row['index']} where {expected} was due"
            )
        yield pickle.loads(row["status"])
