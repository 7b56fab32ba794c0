"""dedup: exact, near-duplicate (MinHash LSH verified with rapidfuzz) and optional semantic
deduplication across all sources at once, plus decontamination against evaluation sets.

Two streaming passes over the input, so no record is held as a Python object beyond its batch:
1. scan, on the engine (`scan`): per record its id, source, quality score, exact key, MinHash
   signature, token counts by bucket and evaluation-set n-gram matches; its tokens go to files
   in a temporary folder beside the output, where verification reads them;
2. decide on those arrays: contaminated records out; exact groups (`clusters`); LSH candidate
   pairs among exact-group representatives (`minhash`; on `engine: ray`, Ray Data groups the
   (band, bucket key, record) rows by shards of buckets: the same pairs, `ray`); pairs rejected
   unread by their lengths or token counts, each other pair verified on its tokens (`verify`);
   the verdicts replayed in pair order through a union-find of clusters, which decides what is
   skipped (`clusters.replay`); optional semantic clusters among the survivors (`semantic`: close
   embeddings, verified like near pairs at looser thresholds, replayed alike); one survivor per
   cluster, the best by rank (`clusters.ranks`);
3. write (`report`): stream the input again, writing survivors (with `meta.cluster`) and rejected
   records, then the report and the largest clusters.

Outputs do not depend on the engine, the workers or the part size. What stays on the driver, per
record: its id, a few numbers, its signature until the LSH step (4 * num_perm bytes), its token
counts by bucket until the bounds (2 * BAG_BUCKETS bytes) and its union-find entry; per candidate
pair, about 40 bytes at the LSH step's peak. The driver's RSS
peaked at 290 MB for the 100,000 records of benchmarks/dedup.py (60 MB of it the libraries); on
benchmarks/scale.py's 1,000,000, whose reused questions and answers give 17.5 million candidate
pairs, the stage (driver and workers) peaked at 3.3 GB PSS. Clusters are computed where they fit, one machine's memory;
past that, exact groups and connected components would have to be distributed too (not done).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sftpipe.core.engine import Engine
from sftpipe.core.jsonio import scratch, write_jsonl
from sftpipe.core.unionfind import UnionFind
from sftpipe.data.dedup.clusters import join_exact, ranks, replay, roots
from sftpipe.data.dedup.decontam import EvalIndex
from sftpipe.data.dedup.minhash import candidate_pairs
from sftpipe.data.dedup.params import DedupParams, NearParams, SemanticParams
from sftpipe.data.dedup.ray import ray_candidate_pairs
from sftpipe.data.dedup.report import cluster_rows, listed_clusters, report_stats, write_records
from sftpipe.data.dedup.scan import Scan
from sftpipe.data.dedup.verify import (
    DIFFERENT,
    FEW_SHARED,
    SAME,
    SKIPPED,
    TO_VERIFY,
    UNEQUAL,
    check_pairs,
    rejected_unread,
)

__all__ = ["DedupParams", "dedup"]  # the stage's entry and its params section


def dedup(
    input_path: str | Path,
    out_dir: str | Path,
    report_path: str | Path,
    clusters_path: str | Path,
    params: DedupParams,
    seed: int = 42,
    workers: int = 1,
    engine: Engine = "local",
) -> dict:
    """Deduplicate and decontaminate `input_path` into `out_dir`/{records,rejected}.jsonl; write the
    report and the largest clusters; return the report. The scan, and on `engine: ray` also the
    LSH buckets, run on the engine's `workers`; verification too when there are several."""
    path = Path(input_path)
    index = (
        EvalIndex(params.decontaminate.sets, params.decontaminate.ngram)
        if params.decontaminate.sets
        else None
    )
    Path(out_dir).parent.mkdir(parents=True, exist_ok=True)
    with scratch(Path(out_dir).parent, "dedup-tokens") as tmp:
        # absolute: a Ray worker, here or on another node, has another working directory
        scan = Scan(path, params, seed, index, Path(tmp).absolute(), engine, workers)
        uf, exact_root, stats = _exact_and_near(scan, params, engine, workers)
        alive = np.flatnonzero(scan.cmask == 0)
        near_root = roots(uf)
        if params.semantic.enabled:  # inside: its candidates are verified on the spilled tokens
            stats["semantic"] = _semantic(scan, uf, alive, near_root, params.semantic, engine, workers)
    root = roots(uf)
    reason = _reasons(scan, index, alive, root, exact_root, near_root)

    sizes, multi, top, listed = listed_clusters(root, alive, scan.ids, params.report_clusters)
    stats = report_stats(sizes, multi, stats, index, reason)
    tally, per_source, snippets = write_records(
        path, Path(out_dir), scan, index, root, reason, listed, params.snippet_chars
    )
    report = tally.write(
        report_path,
        per_source={s: t.as_dict() for s, t in sorted(per_source.items())},
        **stats,
    )
    write_jsonl(clusters_path, cluster_rows(top, listed, scan.ids, scan, uf.rank, reason, snippets))
    return report


def _exact_and_near(
    scan: Scan, params: DedupParams, engine: Engine, workers: int
) -> tuple[UnionFind[np.ndarray], np.ndarray, dict]:
    """Union-find over all records after the exact and near-duplicate passes, the exact-group
    root of each record, and the near pass's counters."""
    uf = UnionFind(ranks(scan, params.priority))
    alive = np.flatnonzero(scan.cmask == 0)
    if params.exact:
        join_exact(uf, scan.keys, alive)
    exact_root = roots(uf)
    stats: dict = {}
    if params.near.enabled and scan.sigs is not None:
        reps = alive[(exact_root[alive] == alive) & ~scan.empty[alive]]
        stats["near"] = _near(scan, uf, reps, params.near, engine, workers)
    return uf, exact_root, stats


def _near(
    scan: Scan, uf: UnionFind[np.ndarray], reps: np.ndarray, near: NearParams, engine: Engine, workers: int
) -> dict:
    """Join near-duplicates among the exact-group representatives `reps`: LSH candidate pairs,
    those the bounds reject unread, the others verified, the verdicts replayed in pair order.
    Returns the pass's counters."""
    sigs, bags = scan.sigs, scan.bags
    # the scan keeps both whenever near is on, and this runs only then (`_exact_and_near`)
    assert sigs is not None and bags is not None
    if engine == "ray":
        found = ray_candidate_pairs(sigs[reps], near.bands, near.max_bucket, workers)
    else:
        found = candidate_pairs(sigs[reps], near.bands, near.max_bucket)
    pairs = reps[found]
    scan.sigs = None
    del sigs  # the signatures' memory goes now
    status = rejected_unread(pairs, bags, scan.n_tok, scan.n_qtok, near)
    scan.bags = None
    del bags
    close = np.flatnonzero(status == TO_VERIFY)
    status[close] = check_pairs(pairs[close], scan.locations(), near, str(scan.tmp), engine, workers)
    joined = replay(uf, pairs, status == SAME)
    astray = np.flatnonzero(~joined & (status == SKIPPED))
    if len(astray):
        a, b = pairs[astray[0]].tolist()
        raise RuntimeError(f"dedup: verification of ({scan.ids[a]}, {scan.ids[b]}) went astray (a bug)")
    skipped = int(joined.sum())
    verified = int(np.count_nonzero(~joined & (status == SAME)))
    return {
        "candidate_pairs": len(pairs),
        "verified": verified,
        "rejected_by_verification": len(pairs) - skipped - verified,
        "rejected_by_length": int(np.count_nonzero(~joined & (status == UNEQUAL))),
        "rejected_by_token_counts": int(np.count_nonzero(~joined & (status == FEW_SHARED))),
        "skipped_already_clustered": skipped,
    }


def _semantic(
    scan: Scan, uf: UnionFind[np.ndarray], alive: np.ndarray, near_root: np.ndarray, sem: SemanticParams,
    engine: Engine, workers: int,
) -> dict:  # fmt: skip
    """Join the near-cluster survivors whose embeddings are close and whose differing parts verify
    (near dedup's check at the semantic thresholds); returns the pass's counters."""
    from sftpipe.data.dedup.semantic import CHARS_PER_TOKEN, embed, similar_pairs, texts

    survivors = alive[near_root[alive] == alive]
    vecs = embed(
        texts(scan, survivors, sem.text, sem.max_seq_length * CHARS_PER_TOKEN),
        sem.model, sem.batch_size, sem.max_seq_length, sem.backend,
    )  # fmt: skip
    pairs = survivors[similar_pairs(vecs, sem.threshold, sem.block)]
    del vecs
    check = NearParams(threshold=sem.verify_threshold, part_threshold=sem.part_threshold)
    status = check_pairs(pairs, scan.locations(), check, str(scan.tmp), engine, workers)
    joined = replay(uf, pairs, status == SAME)
    return {
        "embedded": len(survivors),
        "candidate_pairs": len(pairs),
        "verified": int(np.count_nonzero(~joined & (status == SAME))),
        "rejected_by_verification": int(np.count_nonzero(~joined & (status == DIFFERENT))),
        "skipped_already_clustered": int(joined.sum()),
    }


def _reasons(
    scan: Scan, index: EvalIndex | None, alive: np.ndarray, root: np.ndarray, exact_root: np.ndarray,
    near_root: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """Why each record goes ("" for a survivor): the first evaluation set it overlaps, or the pass
    that joined it to its cluster."""
    reason = np.full(len(root), "", dtype=object)
    for i in np.flatnonzero(scan.cmask != 0).tolist():
        assert index is not None  # only a scan with an index marks records contaminated
        reason[i] = "contaminated:" + index.set_names(int(scan.cmask[i]))[0]
    for i in alive.tolist():
        r = root[i]
        if r != i:
            reason[i] = (
                "exact_duplicate" if exact_root[i] == exact_root[r]
                else "near_duplicate" if near_root[i] == near_root[r]
                else "semantic_duplicate"
            )  # fmt: skip
    return reason
