"""split: train/val/test by dedup cluster, stratified by source, with zero overlap proven.

A group is a dedup cluster, widened to every record that renders to the same text (so even with
dedup switched off no identical example straddles two splits). Within each source, groups are
ordered by a seeded hash of their key and filled into test, then val, then train. Hash order,
not a shuffled list, keeps the split stable: adding a source or a record moves nothing else
(only records at the quota boundary can shift), so a dataset diff shows real changes.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import model_validator

from sftpipe.core.accounting import Tally
from sftpipe.core.config import Section
from sftpipe.core.errors import SftpipeError
from sftpipe.core.hashing import hex_digest
from sftpipe.core.jsonio import atomic_path
from sftpipe.core.unionfind import UnionFind
from sftpipe.io.columnar import ROW_GROUP, read_column, text_hashes, write_many

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


class LeakageError(SftpipeError, AssertionError):
    """An example appears in more than one split."""


def _hash(*parts: str) -> str:
    return hex_digest(*parts, size=12)


def groups(ids: list[str], clusters: list[str], texts: list[str]) -> list[int]:
    """Group root per row: rows sharing a cluster or a text (any key of it, e.g. its hash) join."""
    uf = UnionFind(range(len(ids)))  # rank = row order: a group's root is its first row
    first: dict[tuple[str, str], int] = {}
    for i, (cluster, text) in enumerate(zip(clusters, texts, strict=True)):
        for key in (("c", cluster), ("t", text)):
            if key in first:
                uf.union(first[key], i)
            else:
                first[key] = i
    return [uf.find(i) for i in range(len(ids))]


def keys(src: str | Path | pa.Table) -> dict[str, list[str]]:
    """What the split decides on, per row: id, source, cluster and a hash of the text; read
    column by column (the text batch by batch), so the heavy columns never sit in memory."""
    if isinstance(src, pa.Table):
        cols = {c: src[c].to_pylist() for c in ("id", "source", "cluster")}
        return {**cols, "text": [_hash(t) for t in src["text"].to_pylist()]}
    return {**{c: read_column(src, c) for c in ("id", "source", "cluster")}, "text": text_hashes(src)}


def assign(src: str | Path | pa.Table | dict, params: SplitParams, seed: int) -> list[str]:
    """The split of every row (a table, a Parquet path, or its `keys`)."""
    cols = src if isinstance(src, dict) else keys(src)
    ids, sources = cols["id"], cols["source"]
    root = groups(ids, cols["cluster"], cols["text"])
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


def overlap(parts: dict[str, dict[str, list[str]]]) -> dict[str, int]:
    """How many ids, texts (by hash) and clusters more than one split holds; `parts` maps each
    split to its `keys`."""
    result = {}
    for column in ("id", "text", "cluster"):
        seen: dict[str, str] = {}
        shared = set()
        for name, cols in parts.items():
            for value in cols[column]:
                if seen.setdefault(value, name) != name:
                    shared.add(value)
        result[column] = len(shared)
    return result


def split(src: str | Path, params: SplitParams, seed: int) -> tuple[dict[str, np.ndarray], dict]:
    """Rows of `src` per split, each sorted by id, and the split's keys (for `overlap`, `counts`).
    Raises LeakageError when an id, text or cluster would sit in two splits."""
    cols = keys(src)
    names = np.array(assign(cols, params, seed))
    order = np.array(sorted(range(len(names)), key=cols["id"].__getitem__), dtype=np.int64)
    rows = {name: order[names[order] == name] for name in SPLITS}
    parts = {name: {c: [v[i] for i in r.tolist()] for c, v in cols.items()} for name, r in rows.items()}
    shared = overlap(parts)
    if any(shared.values()):
        raise LeakageError(f"examples shared between splits: {shared}")
    return rows, parts


def write_parquet(table: pa.Table, path: str | Path) -> None:
    from sftpipe.core.jsonio import atomic_path

    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(None), tmp, compression="zstd", row_group_size=ROW_GROUP)


def counts(parts: dict) -> dict[str, dict]:
    """Rows per split and source; `parts` maps each split to a table or to its `keys`."""
    out = {}
    for name, part in parts.items():
        sources = part["source"].to_pylist() if isinstance(part, pa.Table) else part["source"]
        per_source = Counter(sources)
        out[name] = {"total": len(sources), "by_source": dict(sorted(per_source.items()))}
    return out


def run(params: SplitParams, seed: int, src: str | Path, out: str | Path) -> tuple[Tally, dict]:
    """The stage: write <out>/<split>.parquet; return the tally and the report's extras."""
    rows, parts = split(src, params, seed)
    tally = Tally()
    tally.seen(pq.read_metadata(src).num_rows)
    tally.kept(sum(len(r) for r in rows.values()))
    with atomic_path(out) as tmp:
        tmp.mkdir()
        # one pass over the input for all three: each batch is decoded once
        write_many(src, {tmp / f"{n}.parquet": (rows[n], None) for n in SPLITS}, desc="split")
    return tally, {"splits": counts(parts), "overlap": overlap(parts)}
