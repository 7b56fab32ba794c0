"""Score pairs you already have with the configured gates: `python -m sftpipe.distill score`.

Each pair (JSONL rows {"slice", "instruction", "input"?, "response", ...}) is judged by the
configured judges and the grounding gate against its slice's passage, exactly as the stage judges
its own pairs, with the same control pairs to measure the judges. Each row comes back with its
scores and its verdict (`kept`, or why not); other fields (a `label`, say) are kept as they are.
With 0/1 labels, the summary also gives each gate's AUC on them: how the gate itself is measured.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from sftpipe.core.jsonio import JsonlWriter
from sftpipe.core.records import Drop
from sftpipe.distill.controls import auc
from sftpipe.distill.run import (
    DistillParams,
    Unit,
    control_units,
    control_verdicts,
    judging,
    preflight,
    score,
)
from sftpipe.distill.slices import Chunk, DistillError, chunks_of, read_slices
from sftpipe.io.readers import ReadError, read_file

FIELDS = ("slice", "instruction", "input", "response")


def read_pairs(path: str | Path) -> list[dict]:
    """The rows of `path`, checked: one line naming the file, the line and the problem."""
    try:
        rows = list(read_file(Path(path)))
    except (ReadError, OSError) as exc:
        raise DistillError(f"--pairs: {exc}") from None
    out = []
    for where, row in rows:
        pos = f"{where['file']}: line {where.get('line', where.get('index'))}"
        if isinstance(row, Drop):
            raise DistillError(f"{pos}: {row.reason}: {row.detail}")
        for name in ("slice", "instruction", "response"):
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise DistillError(f"{pos}: '{name}' must be a non-empty string")
        if not isinstance(row.get("input", ""), str):
            raise DistillError(f"{pos}: 'input' must be a string")
        out.append({**row, "input": row.get("input", ""), "_pos": pos})
    return out


def _passages(slices: list[dict], params: DistillParams) -> dict[str, Chunk]:
    """Passages by slice id (the whole slice) and by chunk id ("<slice>#<k>")."""
    found = {s["id"]: Chunk(s["id"], s["id"], s["content"], s["metadata"]) for s in slices}
    found.update({c.id: c for c in chunks_of(slices, params.chunk_chars)})
    return found


def _verdicts(units: list[Unit]) -> dict[str, Any]:
    return dict(sorted(Counter(u.status for u in units).items()))


def labelled_auc(units: list[Unit], rows: list[dict], judges: list[str]) -> dict[str, Any]:
    """Each judge's and each grounding signal's AUC on the rows' 0/1 labels, and how the verdicts
    split them; {} when the rows carry no labels."""
    labelled = [(u, r["label"]) for u, r in zip(units, rows, strict=True) if r.get("label") in (0, 1)]
    if not labelled:
        return {}

    def split(value) -> float | None:
        good = [v for u, lab in labelled if lab and (v := value(u)) is not None]
        bad = [v for u, lab in labelled if not lab and (v := value(u)) is not None]
        return auc(good, bad)

    out: dict[str, Any] = {n: split(lambda u, n=n: u.verdicts.get(n, {}).get("weighted")) for n in judges}
    out["grounding"] = split(lambda u: u.grounding)
    out["end_logprob"] = split(lambda u: u.end_logprob)
    out["min_token_gain"] = split(lambda u: u.min_token_gain)
    if any(u.contradiction is not None for u, _ in labelled):
        out["nli"] = split(lambda u: None if u.contradiction is None else 1 - u.contradiction)
    out["gate"] = split(lambda u: float(u.status == "kept"))
    out["kept_good"] = sum(u.status == "kept" for u, lab in labelled if lab)
    out["kept_bad"] = sum(u.status == "kept" for u, lab in labelled if not lab)
    out["good"], out["bad"] = sum(lab for _, lab in labelled), sum(1 - lab for _, lab in labelled)
    return out


def score_pairs(params: DistillParams, seed: int, slices: str, pairs: str, out: str | Path) -> dict:
    """Score every pair of `pairs` against `slices`, write the rows to `out`; return the summary."""
    slice_rows = read_slices(slices)
    passages = _passages(slice_rows, params)
    rows = read_pairs(pairs)
    for row in rows:
        if row["slice"] not in passages:
            raise DistillError(f"{row['_pos']}: slice {row['slice']!r} is not in {slices}")
    preflight(params)

    def make_units() -> list[Unit]:
        given = [
            Unit(i, passages[r["slice"]], i, pair={k: r[k].strip() for k in FIELDS[1:]}, status="ok")
            for i, r in enumerate(rows)
        ]
        return given + control_units(params, chunks_of(slice_rows, params.chunk_chars), len(given))

    units, calibration, used = score(params, seed, make_units)
    given = [u for u in units if u.control is None]
    with JsonlWriter(out) as writer:
        for u, row in zip(given, rows, strict=True):
            extra = {k: v for k, v in row.items() if k not in FIELDS and k != "_pos"}
            pair = {k: row[k].strip() for k in FIELDS[1:]}
            writer.write({"slice": row["slice"], **pair, **extra, **judging(u), "verdict": u.status})
    names = [j.name for j in params.judges]
    return {
        "pairs": len(given),
        "verdicts": _verdicts(given),
        "judges_used": used,
        "calibration": calibration,
        "control_verdicts": control_verdicts(units),
        "labelled_auc": labelled_auc(given, rows, names),
    }
