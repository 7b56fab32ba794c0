"""Union-find whose root is always the member of best rank (lowest number): dedup's survivor of
a cluster, split's first row of a group. One implementation for both, with path compression."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

import numpy as np

# the ranks as given: dedup indexes them with arrays, so it keeps them an array
RankT = TypeVar("RankT", Sequence[int], np.ndarray)


class UnionFind(Generic[RankT]):
    """Union-find over `len(rank)` members; `rank` decides which member is the root."""

    def __init__(self, rank: RankT):
        self.parent = list(range(len(rank)))
        self.rank: RankT = rank

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if self.rank[ra] < self.rank[rb]:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb
