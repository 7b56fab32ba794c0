"""report: the small git-tracked files a reviewer reads in a pull request.

- reports/metrics.json: every stage's accounting, per-source and per-split counts, token lengths,
  mix shares;
- reports/manifest/<nnn>.tsv: one sorted line per final example (id, source, split, copies, content
  hash), so `git diff` names every example added, removed, changed or moved between splits;
- reports/samples/<source>.jsonl: a stable sample per source, chosen by a hash of the id;
- reports/plots/*.csv (DVC plots) and *.png (for people reading the PR in a browser);
- reports/dataset_card.md: a Hugging Face-style card, generated, never hand-edited.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from sftpipe.core.config import Section
from sftpipe.core.hashing import hex_digest
from sftpipe.core.jsonio import atomic_path, write_json, write_jsonl
from sftpipe.data.card import render
from sftpipe.data.split import SPLITS
from sftpipe.io.columnar import batches, num_rows

STAGES = ("distill", "clean", "dedup", "format", "split", "mix", "export")
Split: TypeAlias = pa.Table | Path  # a split in memory, or its Parquet file (read batch by batch)
BINS = (0, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 8192)


class ReportParams(Section):
    samples_per_source: int = 5
    """Examples per source in reports/samples/<source>.jsonl (chosen by id hash, stable)."""
    manifest_shards: int = 1
    """Files in reports/manifest/ (<nnn>.tsv, rows bucketed by id hash); raise it for large datasets."""
    dataset_name: str = "sftpipe-dataset"
    """Name in the dataset card."""


def _h(text: str, n: int = 16) -> str:
    return hex_digest(text, size=16)[:n]


def manifest_rows(parts: dict[str, Split]) -> list[tuple[str, str, str, int, str]]:
    """(id, source, split, copies, text hash) per distinct example, sorted by id."""
    rows = {}
    for split, src in parts.items():
        seen: list[tuple[str, str, str]] = []
        for batch in batches(src, ["id", "source", "text"]):
            cols = [batch[c].to_pylist() for c in ("id", "source", "text")]
            seen += [(rid, source, _h(text)) for rid, source, text in zip(*cols, strict=True)]
        copies = Counter(rid for rid, _, _ in seen)
        for rid, source, content in seen:
            rows[rid] = (rid, source, split, copies[rid], content)
    return [rows[k] for k in sorted(rows)]


def write_manifest(rows: list[tuple], reports: Path, shards: int) -> None:
    header = "id\tsource\tsplit\tcopies\tcontent_hash\n"
    lines = [f"{r[0]}\t{r[1]}\t{r[2]}\t{r[3]}\t{r[4]}\n" for r in rows]
    buckets: dict[int, list[str]] = defaultdict(list)
    for r, line in zip(rows, lines, strict=True):
        buckets[int(_h(r[0], 8), 16) % max(shards, 1)].append(line)
    with atomic_path(reports / "manifest") as tmp:
        tmp.mkdir()
        for b in range(max(shards, 1)):
            (tmp / f"{b:03d}.tsv").write_text(header + "".join(buckets[b]), encoding="utf-8")


def samples(parts: dict[str, Split], k: int) -> dict[str, list[dict]]:
    """Per source, the `k` examples with the smallest id hash: adding data moves nothing else.
    Ids and sources decide; only the chosen rows' messages are read."""
    by_source: dict[str, list[tuple[str, str, int, str]]] = defaultdict(list)
    for split, src in parts.items():
        seen = set()
        for row, (rid, source) in enumerate(zip(*(_column(src, c) for c in ("id", "source")), strict=True)):
            if rid not in seen:
                seen.add(rid)
                by_source[source].append((_h(rid), rid, row, split))
    chosen = {s: sorted(v)[:k] for s, v in sorted(by_source.items())}
    wanted: dict[str, set[int]] = defaultdict(set)
    for picks in chosen.values():
        for _, _, row, split in picks:
            wanted[split].add(row)
    messages = {split: _values_at(parts[split], "messages", rows) for split, rows in wanted.items()}
    return {
        s: [
            {"id": rid, "split": split, "messages": orjson.loads(messages[split][row])}
            for _, rid, row, split in v
        ]
        for s, v in chosen.items()
    }


def _column(src: Split, name: str) -> list:
    return [v for batch in batches(src, [name]) for v in batch[name].to_pylist()]


def _values_at(src: Split, name: str, rows: set[int]) -> dict[int, Any]:
    """row -> value of one column, for a few rows, reading the column batch by batch."""
    out, offset = {}, 0
    for batch in batches(src, [name]):
        hits = [r - offset for r in rows if offset <= r < offset + batch.num_rows]
        for r, value in zip(hits, batch[name].take(pa.array(hits, pa.int64())).to_pylist(), strict=True):
            out[r + offset] = value
        offset += batch.num_rows
    return out


def lengths(parts: dict[str, Split]) -> dict[tuple[str, str], np.ndarray]:
    """Token lengths by (split, source)."""
    out = {}
    for split, src in parts.items():
        n, names = [], []
        for batch in batches(src, ["source", "input_ids"]):
            n.append(pc.list_value_length(batch["input_ids"]).to_numpy(zero_copy_only=False))
            names += batch["source"].to_pylist()
        n_all = np.concatenate(n) if n else np.zeros(0, int)
        src_arr = np.asarray(names, dtype=object)
        for s in sorted(set(names)):
            out[(split, s)] = n_all[src_arr == s]
    return out


def languages(parts: dict[str, Split], min_share: float = 0.01) -> list[str]:
    """Languages (meta.lang) of at least `min_share` of the examples."""
    langs = Counter(orjson.loads(m).get("lang") for src in parts.values() for m in _column(src, "meta"))
    total = sum(langs.values()) or 1
    return sorted(str(k) for k, v in langs.items() if k and v / total >= min_share)


def histogram_rows(by: dict[tuple[str, str], np.ndarray]) -> list[dict]:
    rows = []
    for (split, source), n in sorted(by.items()):
        counts, _ = np.histogram(n, bins=[*BINS, np.inf])
        rows += [
            {"split": split, "source": source, "tokens_from": b, "count": int(c)}
            for b, c in zip(BINS, counts, strict=True)
        ]
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    cols = list(rows[0]) if rows else []
    text = ",".join(cols) + "\n" + "".join(",".join(str(r[c]) for c in cols) + "\n" for r in rows)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _colours(sources: list[str]) -> dict[str, tuple]:
    """One colour per source, the same in every panel and every run (sorted names, tab10)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {s: cmap(i % 10) for i, s in enumerate(sorted(sources))}


def plot_pngs(plots: Path, by: dict[tuple[str, str], np.ndarray], shares: dict[str, float]) -> None:
    """Token-length histograms, one panel per split (train, val, test), a step line per source on
    shared bins with a fixed colour per source; counts on a log axis when a source is too small to
    see beside the largest. And the mix shares. PNGs with no timestamps, so re-runs are bytes-equal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = {s for s, _ in by}
    splits = [s for s in ("train", "val", "test") if s in present] + sorted(
        present - {"train", "val", "test"}
    )
    colour = _colours(sorted({src for _, src in by}))
    longest = max((int(n.max()) for n in by.values() if len(n)), default=1)
    edges = np.linspace(0, longest + 1, 33)
    fig, axes = plt.subplots(1, len(splits) or 1, figsize=(5 * max(len(splits), 1), 3.5), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=False):
        counts = {src: np.histogram(n, bins=edges)[0] for (sp, src), n in sorted(by.items()) if sp == split}
        nonzero = [c[c > 0] for c in counts.values() if c.any()]
        low = min((int(c.min()) for c in nonzero), default=1)
        high = max((int(c.max()) for c in nonzero), default=1)
        for src, c in counts.items():
            n = len(by[(split, src)])
            ax.stairs(c, edges, color=colour[src], linewidth=1.6, label=f"{src} ({n:,})")
        if high > 20 * low:
            ax.set_yscale("log")
            ax.set_ylim(bottom=0.7)  # a bin of 1 stays visible
            ax.set_ylabel("examples (log)")
        else:
            ax.set_ylabel("examples")
        ax.set_title(f"{split}: tokens per example")
        ax.set_xlabel("tokens")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(plots / "token_lengths.png") as tmp:
        fig.savefig(tmp, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 0.5 + 0.4 * max(len(shares), 1)))
    names = sorted(shares)
    ax.barh(names, [shares[n] for n in names], color=[colour.get(n, "grey") for n in names])
    for i, name in enumerate(names):
        v = shares[name]
        label = f"{v:.1%}" if v >= 0.01 or v == 0 else f"{v:.2%}"  # 2 rows of 14k are not "0.0%"
        ax.text(min(v, 0.85) + 0.01, i, label, va="center", fontsize=8)
    ax.set_xlabel("share of train")
    ax.set_xlim(0, 1)
    fig.tight_layout()
    with atomic_path(plots / "mix_shares.png") as tmp:
        fig.savefig(tmp, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)


def stage_reports(reports: Path) -> dict[str, dict]:
    """Every stage's accounting, from reports/<stage>.json and reports/ingest/<source>.json."""
    out = {}
    for f in sorted((reports / "ingest").glob("*.json")):
        r = orjson.loads(f.read_bytes())
        out[f"ingest/{f.stem}"] = {k: r[k] for k in ("in", "out", "expanded", "dropped") if k in r}
    for stage in STAGES:
        f = reports / f"{stage}.json"
        if f.exists():
            r = orjson.loads(f.read_bytes())
            out[stage] = {k: r[k] for k in ("in", "out", "expanded", "dropped") if k in r}
    return out


def tool_use(parts: dict[str, Split]) -> dict[str, dict]:
    """Per split, when any example calls tools or reasons: assistant turns with tool calls, the
    calls, examples with tools and tools per such example, and the share of examples with reasoning.
    Empty for data with neither (the report then looks as it always did)."""
    out = {}
    for split, src in parts.items():
        turns = calls = with_tools = n_tools = reasoned = rows = 0
        for batch in batches(src, ["messages", "meta"]):
            for messages, meta in zip(batch["messages"].to_pylist(), batch["meta"].to_pylist(), strict=True):
                rows += 1
                if '"tools"' in meta:
                    n = len(orjson.loads(meta).get("tools") or ())
                    with_tools, n_tools = with_tools + (n > 0), n_tools + n
                if '"tool_calls"' not in messages and '"reasoning"' not in messages:
                    continue
                assistant = [m for m in orjson.loads(messages) if m["role"] == "assistant"]
                turns += sum(bool(m.get("tool_calls")) for m in assistant)
                calls += sum(len(m.get("tool_calls") or ()) for m in assistant)
                reasoned += any(m.get("reasoning") for m in assistant)
        if turns or with_tools or reasoned:
            out[split] = {
                "tool_call_turns": turns,
                "tool_calls": calls,
                "examples_with_tools": with_tools,
                "tools_per_example": round(n_tools / with_tools, 2) if with_tools else 0.0,
                "reasoning_share": round(reasoned / rows, 4) if rows else 0.0,
            }
    return out


def metrics(parts: dict[str, Split], reports: Path, by: dict[tuple[str, str], np.ndarray]) -> dict:
    from sftpipe.data.export import length_stats

    splits: dict[str, dict] = {}
    for split, src in parts.items():
        c = Counter(_column(src, "source"))
        splits[split] = {"total": num_rows(src), "by_source": dict(sorted(c.items()))}
    sources: dict[str, dict] = defaultdict(dict)
    for split, v in splits.items():
        for s, n in v["by_source"].items():
            sources[s][split] = n
    mix = (
        orjson.loads((reports / "mix.json").read_bytes()).get("sources", {})
        if (reports / "mix.json").exists()
        else {}
    )
    tokens = {
        split: length_stats(
            np.concatenate([n for (sp, _), n in by.items() if sp == split] or [np.array([], int)]).tolist()
        )
        for split in parts
    }
    out = {
        "stages": stage_reports(reports),
        "splits": splits,
        "sources": dict(sorted(sources.items())),
        "tokens": tokens,
        "mix_shares": {s: v.get("share") for s, v in sorted(mix.items())},
    }
    if used := tool_use(parts):
        out["tool_use"] = used
    return out


def run(p: ReportParams, sources: dict, src_dir: str | Path, reports_dir: str | Path) -> dict:
    """The stage: metrics.json, the manifest, samples, plots and the dataset card under
    `reports_dir`, from the mixed splits in `src_dir` and the other stages' reports; returns the
    metrics."""
    reports = Path(reports_dir)
    parts = {n: Path(src_dir) / f"{n}.parquet" for n in SPLITS}  # read column by column
    by = lengths(parts)
    m = metrics(parts, reports, by)
    write_json(reports / "metrics.json", m)
    write_manifest(manifest_rows(parts), reports, p.manifest_shards)
    with atomic_path(reports / "samples") as tmp:
        tmp.mkdir()
        for source, rows in samples(parts, p.samples_per_source).items():
            write_jsonl(tmp / f"{source}.jsonl", rows)
    write_csv(reports / "plots" / "token_lengths.csv", histogram_rows(by))
    shares = {s: v for s, v in m["mix_shares"].items() if v is not None}
    write_csv(reports / "plots" / "mix_shares.csv", [{"source": s, "share": v} for s, v in shares.items()])
    plot_pngs(reports / "plots", by, shares)

    fmt = orjson.loads((reports / "format.json").read_bytes()) if (reports / "format.json").exists() else {}
    with atomic_path(reports / "dataset_card.md") as tmp:
        tmp.write_text(render(p.dataset_name, sources, m, fmt, languages(parts)), encoding="utf-8")
    return m
