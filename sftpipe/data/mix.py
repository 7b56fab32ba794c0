"""mix: weighted sampling per source, applied to train only and after the split.

Up-sampling repeats whole copies and then a seeded subset of the rest; down-sampling takes a
seeded subset without replacement. Because this runs after the split, a repeated example can never
reach val or test. Each row gets a `copy` number (0 for the first) so repeated ids stay traceable.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from sftpipe.core.accounting import Tally
from sftpipe.core.config import Section
from sftpipe.core.errors import SftpipeError
from sftpipe.core.hashing import digest
from sftpipe.core.jsonio import atomic_path
from sftpipe.data.split import SPLITS, counts
from sftpipe.io.columnar import read_column, write_rows


class MixParams(Section):
    weighting: Literal["multiplier", "share"] = "multiplier"
    """How `weights` apply. multiplier: a source keeps its train rows times its weight (1 as it is, 2
    each row twice, 0.5 half), so unnamed sources keep their size; share: each source gets
    weight / sum of weights of the train split, whatever its size."""
    weights: dict[str, float] = {}
    """Weight per source (0 excludes it); a source not named weighs 1. See `weighting`."""
    max_repeat: Annotated[float, Field(ge=1)] = 4.0
    """Most times one row may appear in train; a source asking for more is capped there, with a
    warning and a count under `capped` in reports/mix.json."""
    train_size: Annotated[int, Field(ge=1)] | None = None
    """Rows in the mixed train split (targets scaled to it); null: the weighted natural size."""
    val_size: Annotated[int, Field(ge=1)] | None = None
    """Down-sample val to at most this many rows (seeded, without replacement); null keeps all."""
    test_size: Annotated[int, Field(ge=1)] | None = None
    """Down-sample test to at most this many rows; null keeps all."""

    @field_validator("weights")
    @classmethod
    def _non_negative(cls, weights: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in weights.items() if v < 0}
        if bad:
            raise ValueError(f"weights must be >= 0 (got {bad})")
        return weights


class MixError(SftpipeError, ValueError):
    """Weights that cannot be applied (an unknown source, nothing left to train on)."""


def _round(exact: dict[str, float], size: int) -> dict[str, int]:
    """Integers summing to `size`, by largest remainder (ties by name)."""
    out = {s: math.floor(x) for s, x in exact.items()}
    for s in sorted(exact, key=lambda s: (out[s] - exact[s], s))[: size - sum(out.values())]:
        out[s] += 1
    return out


def targets(available: dict[str, int], params: MixParams) -> tuple[dict[str, int], dict[str, int]]:
    """Train rows to take per source, and how many each lost to `max_repeat`.

    multiplier: available x weight; share: weight / sum of weights of the total. The total is
    `train_size`, else the weighted natural size (multiplier) or all kept rows (share). Sources
    named in `weights` with no train rows take none."""
    w = {s: params.weights.get(s, 1.0) for s in sorted(available) if params.weights.get(s, 1.0) > 0}
    w = {s: v for s, v in w.items() if available[s] > 0}
    if not w:
        raise MixError("mix.weights exclude every source with train rows: nothing to train on")
    if params.weighting == "multiplier":
        exact = {s: available[s] * v for s, v in w.items()}
        size = params.train_size if params.train_size is not None else round(sum(exact.values()))
        scale = size / sum(exact.values())
        want = _round({s: x * scale for s, x in exact.items()}, size)
    else:
        size = params.train_size if params.train_size is not None else sum(available[s] for s in w)
        want = _round({s: size * v / sum(w.values()) for s, v in w.items()}, size)
    capped = {s: n - math.floor(available[s] * params.max_repeat) for s, n in want.items()}
    capped = {s: c for s, c in capped.items() if c > 0}
    for s, c in capped.items():
        want[s] -= c
        print(
            f"warning: mix: source {s} would repeat each of its {available[s]} train rows "
            f"{(want[s] + c) / available[s]:.1f} times; capped at mix.max_repeat {params.max_repeat:g} "
            f"({c} rows not added)",
            file=sys.stderr,
        )
    return want, capped


def _rng(seed: int, *parts: str) -> random.Random:
    return random.Random(int.from_bytes(digest(str(seed), *parts, size=8), "big"))


def sample(n_rows: int, target: int, rng: random.Random) -> list[tuple[int, int]]:
    """(row, copy) pairs: whole copies while they fit, then a random subset of the rows."""
    whole, rest = divmod(target, n_rows) if n_rows else (0, 0)
    picks = [(i, c) for c in range(whole) for i in range(n_rows)]
    extra = rng.sample(range(n_rows), rest)
    return picks + [(i, whole) for i in sorted(extra)]


def train_rows(
    ids: list[str], sources: list[str], params: MixParams, seed: int, tally: Tally
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Rows of the train split to write (in a seeded shuffled order), their copy numbers, and
    per-source figures for the report.

    Accounting: rows not picked are dropped (`downsampled`, `excluded_source`); extra copies of
    picked rows count as `expanded`, so `in + expanded == out + dropped` holds.
    """
    rows_of: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        rows_of.setdefault(s, []).append(i)
    available = {s: len(v) for s, v in sorted(rows_of.items())}
    want, capped = targets(available, params)
    idx, copies = [], []
    for s, n in want.items():
        for i, c in sample(available[s], n, _rng(seed, "mix", s)):
            idx.append(rows_of[s][i])
            copies.append(c)
    order = sorted(
        range(len(idx)),
        key=lambda k: digest(f"{seed}/{ids[idx[k]]}/{copies[k]}", size=8),
    )
    rows = np.array([idx[k] for k in order], dtype=np.int64)
    copy = np.array([copies[k] for k in order], dtype=np.int32)
    tally.seen(len(ids))
    tally.kept(len(rows))
    for s in available:
        distinct = min(want.get(s, 0), available[s])
        tally.expand(want.get(s, 0) - distinct)
        reason = "downsampled" if s in want else "excluded_source"
        if available[s] - distinct:
            tally.dropped[reason] += available[s] - distinct
    total = sum(want.values()) or 1
    report = {
        s: {
            "available": available[s],
            "weight": params.weights.get(s, 1.0),
            "target": want.get(s, 0),
            "share": round(want.get(s, 0) / total, 6),
            "repeat": round(want.get(s, 0) / available[s], 3),
            "upsampled": want.get(s, 0) > available[s],
            "capped": capped.get(s, 0),
        }
        for s in available
    }
    return rows, copy, report


def eval_rows(sources: list[str], params: MixParams, seed: int, name: str, tally: Tally) -> np.ndarray:
    """Rows val/test keep: their natural composition minus excluded sources, then down-sampled to
    the split's size (seeded, without replacement, order kept)."""
    tally.seen(len(sources))
    excluded = {s for s, w in params.weights.items() if w == 0}
    kept = [i for i, s in enumerate(sources) if s not in excluded]
    if len(sources) > len(kept):
        tally.dropped["excluded_source"] += len(sources) - len(kept)
    size = params.val_size if name == "val" else params.test_size
    if size is not None and len(kept) > size:
        tally.dropped["downsampled"] += len(kept) - size
        kept = [kept[k] for k in sorted(_rng(seed, "mix", name).sample(range(len(kept)), size))]
    tally.kept(len(kept))
    return np.array(kept, dtype=np.int64)


def mix_train(train: pa.Table, params: MixParams, seed: int, tally: Tally) -> tuple[pa.Table, dict]:
    """`train_rows` applied to a table in memory (the stage streams the same rows from disk)."""
    rows, copy, report = train_rows(train["id"].to_pylist(), train["source"].to_pylist(), params, seed, tally)
    return train.take(pa.array(rows)).append_column("copy", pa.array(copy)), report


def mix_eval(table: pa.Table, params: MixParams, seed: int, name: str, tally: Tally) -> pa.Table:
    """`eval_rows` applied to a table in memory."""
    kept = table.take(pa.array(eval_rows(table["source"].to_pylist(), params, seed, name, tally)))
    return kept.append_column("copy", pa.array(np.zeros(kept.num_rows, dtype=np.int32)))


def run(
    params: MixParams, seed: int, src_dir: str | Path, out: str | Path, known: Iterable[str]
) -> tuple[Tally, dict]:
    """The stage: write <out>/<split>.parquet (train sampled by weight, val/test down-sampled);
    return the tally over all splits and the report's extras (per split, per source shares).
    `known`: the source names that exist (a weight for any other is warned about)."""
    unknown = sorted(set(params.weights) - set(known))
    if unknown:  # a typo, or a source removed from `sources:` whose weight stayed behind
        have = ", ".join(sorted(known))
        print(f"warning: mix.weights: no source named {', '.join(unknown)} (have: {have})", file=sys.stderr)
    tallies = {n: Tally() for n in SPLITS}
    src = {n: Path(src_dir) / f"{n}.parquet" for n in SPLITS}
    # only id and source decide; the heavy columns stream from disk in the order decided here
    ids, sources = read_column(src["train"], "id"), read_column(src["train"], "source")
    rows, copies, shares = train_rows(ids, sources, params, seed, tallies["train"])
    picked = {"train": {"source": [sources[i] for i in rows.tolist()]}}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        write_rows(
            src["train"], rows, tmp / "train.parquet", extra={"copy": pa.array(copies)}, desc="mix train"
        )
        for name in ("val", "test"):
            sources = read_column(src[name], "source")
            kept = eval_rows(sources, params, seed, name, tallies[name])
            zeros = pa.array(np.zeros(len(kept), dtype=np.int32))
            write_rows(src[name], kept, tmp / f"{name}.parquet", extra={"copy": zeros}, desc=f"mix {name}")
            picked[name] = {"source": [sources[i] for i in kept.tolist()]}
        for name in SPLITS:
            tallies[name].check()
    total = Tally()
    for tally in tallies.values():
        total.merge(tally)
    extra = {
        "by_split": {n: t.as_dict() for n, t in tallies.items()},
        "sources": shares,
        "splits": counts(picked),
    }
    return total, extra
