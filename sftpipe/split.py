"""split: train/val/test by dedup cluster, stratified by source, with zero overlap proven.

A group is a dedup cluster, widened to every record that renders to the same text (so even with
dedup switched off no identical example straddles two splits). Within each source, groups are
ordered by a seeded hash of their key and filled into test, then val, then train. Hash order,
not a shuffled list, keeps the split stable: adding a source or a record moves nothing else
(only records at the quota boundary can shift), so a dataset diff shows real changes.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import model_validator

from sftpipe.config import Section

SPLITS = ("train", "val", "test")


class SplitParams(Section):
    val: float = 0.05
    """Share of each source's records in the validation split (0-1)."""
    test: float = 0.05
    """Share of each source's records in the test split (0-1)."""

    @model_validator(mode="after")
    def _shares(self) -> SplitParams:
        if not (0 <= self.val < 1 and 0 <= self.test < 1 and self.val + self.test < 1):
            raise ValueError(f"val + test must be in [0, 1) (got {self.val} + {self.test})")
        return self


class LeakageError(AssertionError):
    """An example appears in more than one split."""


def _hash(*parts: str) -> str:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=12).hexdigest()


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def groups(ids: list[str], clusters: list[str], texts: list[str]) -> list[int]:
    """For each row, the index of its group's first row: rows sharing a cluster or a text are one group."""
    uf = _UnionFind(len(ids))
    first: dict[tuple[str, str], int] = {}
    for i, (cluster, text) in enumerate(zip(clusters, texts, strict=True)):
        for key in (("c", cluster), ("t", _hash(text))):
            if key in first:
                uf.union(first[key], i)
            else:
                first[key] = i
    return [uf.find(i) for i in range(len(ids))]


def assign(table: pa.Table, params: SplitParams, seed: int) -> list[str]:
    """The split name of every row of `table` (needs columns id, source, cluster, text)."""
    ids, sources = table["id"].to_pylist(), table["source"].to_pylist()
    root = groups(ids, table["cluster"].to_pylist(), table["text"].to_pylist())
    members: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(root):
        members[r].append(i)
    by_source: dict[str, list[int]] = defaultdict(list)
    for r, rows in members.items():
        # A group spanning sources belongs to the source of its smallest id.
        by_source[sources[min(rows, key=lambda i: ids[i])]].append(r)
    out = [""] * len(ids)
    for source in sorted(by_source):
        roots = sorted(by_source[source], key=lambda r: _hash(str(seed), ids[r]))
        total = sum(len(members[r]) for r in roots)
        quota = {"test": round(total * params.test), "val": round(total * params.val)}
        filled = {"test": 0, "val": 0}
        for r in roots:
            name = next((s for s in ("test", "val") if filled[s] < quota[s]), "train")
            if name != "train":
                filled[name] += len(members[r])
            for i in members[r]:
                out[i] = name
    return out


def overlap(tables: dict[str, pa.Table]) -> dict[str, int]:
    """How many ids, rendered texts and clusters occur in more than one split (must all be 0)."""
    result = {}
    for column in ("id", "text", "cluster"):
        seen: dict[str, str] = {}
        shared = set()
        for name, table in tables.items():
            for value in table[column].to_pylist():
                key = _hash(value) if column == "text" else value
                if seen.setdefault(key, name) != name:
                    shared.add(key)
        result[column] = len(shared)
    return result


def split(src: str | Path, params: SplitParams, seed: int) -> dict[str, pa.Table]:
    """Read the format stage's table and return the three splits, each sorted by id."""
    table = pq.read_table(src)
    names = pa.array(assign(table, params, seed))
    parts = {}
    for name in SPLITS:
        part = table.filter(pc.equal(names, name))
        parts[name] = part.take(pc.sort_indices(part, sort_keys=[("id", "ascending")]))
    shared = overlap(parts)
    if any(shared.values()):
        raise LeakageError(f"examples shared between splits: {shared}")
    return parts


def write_parquet(table: pa.Table, path: str | Path) -> None:
    """Deterministic Parquet: no pandas metadata, fixed row-group size, zstd."""
    from sftpipe.jsonio import atomic_path

    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(None), tmp, compression="zstd", row_group_size=16384)


def counts(parts: dict[str, pa.Table]) -> dict[str, dict]:
    """Per split: total and per-source row counts."""
    out = {}
    for name, table in parts.items():
        per_source: dict[str, int] = defaultdict(int)
        for s in table["source"].to_pylist():
            per_source[s] += 1
        out[name] = {"total": table.num_rows, "by_source": dict(sorted(per_source.items()))}
    return out
