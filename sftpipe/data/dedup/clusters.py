"""Clusters of duplicates: one union-find whose root is each cluster's survivor, the rank that
decides it, exact groups, and the replay of near-duplicate verdicts in pair order.

A cluster's survivor is its best member by rank: `priority` (listed sources first, in order; the
rest by name), then quality score (characters of assistant content), then id.
"""

from __future__ import annotations

import numpy as np

from sftpipe.core.unionfind import UnionFind
from sftpipe.data.dedup.scan import Scan


def replay(uf: UnionFind[np.ndarray], pairs: np.ndarray, same: np.ndarray) -> np.ndarray:
    """Replay the verdicts in pair order through the clusters, as one loop over all pairs would:
    a pair whose records are already joined by earlier pairs is skipped, a `same` one (verified a
    duplicate) joins them. Applies the joins to `uf`; returns which pairs were skipped.

    Only `same` pairs can join, so only they are looped over (a few percent of the pairs). Each join
    is also linked, with its pair number, into a forest joined by size (at most log2(n) deep, no
    path compression): a link sits at a root when made, so link numbers rise towards the roots,
    and a record's cluster before pair k is found by climbing only the links made before k. All
    the other pairs climb at once, in numpy. (That forest is no second `UnionFind`: it remembers
    when each link was made, so it must keep its paths.)"""
    n = len(uf.rank)
    up, size = list(range(n)), [1] * n
    when = np.full(n, len(pairs), dtype=np.int64)  # the pair that linked each record up (none: never)
    joined = np.zeros(len(pairs), dtype=bool)

    def root(x: int) -> int:
        while up[x] != x:
            x = up[x]
        return x

    joins = np.flatnonzero(same)
    for k, (a, b) in zip(joins.tolist(), pairs[joins].tolist(), strict=True):
        ra, rb = root(a), root(b)
        if ra == rb:
            joined[k] = True
            continue
        uf.union(a, b)
        if size[ra] < size[rb]:
            ra, rb = rb, ra
        up[rb], when[rb] = ra, k
        size[ra] += size[rb]
    up_arr = np.array(up, dtype=np.int64)
    rest = np.flatnonzero(~same)
    ends = [pairs[rest, 0], pairs[rest, 1]]
    for cur in ends:  # each record's cluster just before its pair: climb the links made before it
        going = np.arange(len(rest))
        while len(going := going[when[cur[going]] < rest[going]]):
            cur[going] = up_arr[cur[going]]
    joined[rest] = ends[0] == ends[1]
    return joined


def ranks(scan: Scan, priority: list[str]) -> np.ndarray:
    """Each record's rank (0 = best): its source (listed ones first, in order, then the rest by
    name), then more assistant content, then id."""
    n, ids = len(scan.ids), scan.ids
    order_of = {s: k for k, s in enumerate(priority)}
    for s in scan.source_names:  # already sorted by name
        order_of.setdefault(s, len(order_of))
    prio = np.array([order_of[s] for s in scan.source_names], dtype=np.int64)[scan.sources]
    order = sorted(range(n), key=lambda i: (prio[i], -scan.scores[i], ids[i]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    return rank


def join_exact(uf: UnionFind[np.ndarray], keys: np.ndarray, alive: np.ndarray) -> None:
    """Join the `alive` records of the same exact key: each group chained in rank order, so its
    best member is the root."""
    by_key = alive[np.lexsort((uf.rank[alive], keys[alive]))]
    same = keys[by_key[1:]] == keys[by_key[:-1]]
    for a, b in zip(by_key[:-1][same].tolist(), by_key[1:][same].tolist(), strict=True):
        uf.union(a, b)


def roots(uf: UnionFind[np.ndarray]) -> np.ndarray:
    """The cluster root of every record."""
    return np.array([uf.find(i) for i in range(len(uf.rank))], dtype=np.int64)
