"""Pass 3 of dedup: stream the input again and write survivors (with `meta.cluster`) and rejected
records; then the report (counts per reason and source, cluster sizes, decontamination) and the
largest clusters listed for review (reports/dedup_clusters.jsonl)."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import orjson

from sftpipe.core.accounting import Tally
from sftpipe.core.jsonio import JsonlWriter, atomic_path
from sftpipe.core.progress import bar
from sftpipe.data.dedup.decontam import EvalIndex
from sftpipe.data.dedup.scan import Scan

MAX_LISTED = 20  # members shown per cluster in dedup_clusters.jsonl


def listed_clusters(root: np.ndarray, alive: np.ndarray, ids: list[str], count: int):
    """Cluster sizes, the multi-member ones, the `count` largest of those (by size, then root id)
    and the members of each of these."""
    sizes = Counter(root[alive].tolist())
    multi = {r: s for r, s in sizes.items() if s > 1}
    top = sorted(multi, key=lambda r: (-multi[r], ids[r]))[:count]
    top_set = set(top)
    members = defaultdict(list)
    for i in alive.tolist():
        if root[i] in top_set:
            members[root[i]].append(i)
    return sizes, multi, top, members


def report_stats(
    sizes: Counter, multi: dict, stats: dict, index: EvalIndex | None, reason: np.ndarray
) -> dict:
    """What the report says beyond the counts: cluster sizes, the passes' counters, and what each
    evaluation set dropped."""
    out = {
        "clusters": {
            "clusters": len(sizes),
            "multi_member": len(multi),
            "records_in_multi_member": int(sum(multi.values())),
            "largest": max(multi.values(), default=1),
            "sizes": _histogram(multi.values()),
        },
        **stats,
    }
    if index:
        out["decontamination"] = {
            name: {**index.stats[name], "dropped": int(np.sum(reason == f"contaminated:{name}"))}
            for name in index.names
        }
    return out


def write_records(
    path: Path, out_dir: Path, scan: Scan, index: EvalIndex | None, root: np.ndarray, reason: np.ndarray,
    listed: dict, snippet_chars: int,
) -> tuple[Tally, dict[str, Tally], dict[int, str]]:  # fmt: skip
    """Stream `path` again: survivors to `out_dir`/records.jsonl, the rest to rejected.jsonl with
    their reason. Returns the tally, the tally per source, and the snippets of `listed` members."""
    ids = scan.ids
    snippets: dict[int, str] = {}
    per_source: dict[str, Tally] = defaultdict(Tally)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        with JsonlWriter(tmp / "records.jsonl") as out, JsonlWriter(tmp / "rejected.jsonl") as rej:
            tally = Tally(rej)
            with open(path, "rb") as fh:
                i = 0
                for line in bar(fh, total=len(ids), desc="dedup write", unit=" rec"):
                    if not line.strip():
                        continue
                    rec = orjson.loads(line)
                    src = per_source[rec["source"]]
                    tally.seen()
                    src.seen()
                    if listed and root[i] in listed:
                        snippets[i] = _snippet(rec, snippet_chars)
                    why = reason[i]
                    if not why:
                        rec["meta"] = {**rec.get("meta", {}), "cluster": ids[i]}
                        out.write(rec)
                        tally.kept()
                        src.kept()
                    elif why.startswith("contaminated:"):
                        assert index is not None  # only a scan with an index marks records contaminated
                        sets = index.set_names(int(scan.cmask[i]))
                        tally.drop(why, rec, eval_sets=sets, matching_ngrams=int(scan.ccount[i]))
                        src.drop(why)
                    else:
                        tally.drop(why, rec, duplicate_of=ids[root[i]], cluster=ids[root[i]])
                        src.drop(why)
                    i += 1
    return tally, per_source, snippets


def _histogram(sizes) -> dict[str, int]:
    bins = {"2": 0, "3-5": 0, "6-10": 0, "11+": 0}
    for s in sizes:
        bins["2" if s == 2 else "3-5" if s <= 5 else "6-10" if s <= 10 else "11+"] += 1
    return bins


def _snippet(rec: dict, chars: int) -> str:
    first = next((m["content"] for m in rec["messages"] if m["role"] == "user"), None)
    text = first if first is not None else (rec["messages"][0]["content"] if rec["messages"] else "")
    return " ".join(text.split())[:chars]


def cluster_rows(top, members, ids, scan, rank, reason, snippets):
    for r in top:
        group = sorted(members[r], key=lambda i: rank[i])
        yield {
            "cluster": ids[r],
            "size": len(group),
            "members": [
                {
                    "id": ids[i],
                    "source": scan.source_names[scan.sources[i]],
                    "status": reason[i] or "kept",
                    "snippet": snippets.get(i, ""),
                }
                for i in group[:MAX_LISTED]
            ],
        }
