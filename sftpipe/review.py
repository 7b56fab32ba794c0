"""Markdown for a pull-request comment: what a change did to the dataset.

    python -m sftpipe.review BASE [HEAD]

BASE and HEAD are git revisions (HEAD defaults to the working tree). Only git-tracked files are
read (params.yaml, reports/metrics.json, the manifest, reports/samples/), so no `dvc pull` is needed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import TypeAlias

import orjson
import yaml

LIMIT = 65_536  # GitHub's comment limit, in characters
SHOW = 3  # examples shown per source and kind


class Revision:
    """Files of the repo at a git revision, or in the working tree when `rev` is None."""

    def __init__(self, root: Path, rev: str | None):
        self.root, self.rev = root, rev

    def read(self, path: str) -> str | None:
        if self.rev is None:
            f = self.root / path
            return f.read_text(encoding="utf-8") if f.is_file() else None
        proc = subprocess.run(["git", "show", f"{self.rev}:{path}"], cwd=self.root, capture_output=True)
        return proc.stdout.decode("utf-8") if proc.returncode == 0 else None

    def listdir(self, path: str) -> list[str]:
        if self.rev is None:
            d = self.root / path
            return sorted(p.name for p in d.iterdir()) if d.is_dir() else []
        proc = subprocess.run(
            ["git", "ls-tree", "--name-only", f"{self.rev}:{path}"],
            cwd=self.root,
            capture_output=True,
            text=True,
        )
        return sorted(proc.stdout.split()) if proc.returncode == 0 else []

    def label(self) -> str:
        return self.rev or "working tree"


def flatten(obj, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, dict):
        out: dict[str, object] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: obj}


Manifest: TypeAlias = dict[str, tuple[str, str, str, str]]
"""id -> (source, split, copies, content hash)."""


def manifest(rev: Revision) -> Manifest:
    """id -> (source, split, copies, content hash)."""
    texts = [rev.read(f"reports/manifest/{n}") for n in rev.listdir("reports/manifest") if n.endswith(".tsv")]
    out: Manifest = {}
    for text in filter(None, texts):
        for line in text.splitlines()[1:]:
            rid, source, split, copies, digest = line.split("\t")
            out[rid] = (source, split, copies, digest)
    return out


def sample_texts(rev: Revision) -> dict[str, dict]:
    out = {}
    for name in rev.listdir("reports/samples"):
        for line in (rev.read(f"reports/samples/{name}") or "").splitlines():
            r = orjson.loads(line)
            out[r["id"]] = r
    return out


def diff_examples(base: Manifest, head: Manifest) -> dict[str, dict[str, list[str]]]:
    """source -> kind -> sorted ids, for kinds added, removed, changed, moved, recounted."""
    out: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for rid in sorted(base.keys() | head.keys()):
        b, h = base.get(rid), head.get(rid)
        if b is None:
            assert h is not None  # rid is a key of base or of head, and no value is None
            out[h[0]]["added"].append(rid)
        elif h is None:
            out[b[0]]["removed"].append(rid)
        else:
            if b[3] != h[3]:
                out[h[0]]["changed"].append(rid)
            if b[1] != h[1]:
                out[h[0]]["moved"].append(rid)
            if b[2] != h[2]:
                out[h[0]]["recounted"].append(rid)
    return out


def _fmt(v: object) -> str:
    return "—" if v is None else f"`{v}`"


def _delta(b: object, h: object) -> str:
    if isinstance(b, int | float) and isinstance(h, int | float) and not isinstance(b, bool):
        d = h - b
        return f"{d:+,}" if isinstance(d, int) else f"{d:+.4g}"
    return ""


def _example(r: dict | None, rid: str) -> str:
    if r is None:
        return f"- `{rid}`"
    turns = "\n".join(
        f"  > **{m['role']}**: {m['content'][:300].replace(chr(10), ' ')}" for m in r.get("messages", [])[:4]
    )
    return f"- `{rid}` ({r.get('split')})\n{turns}"


def _repetition(head: Revision) -> list[str]:
    """A warning for each source that mix capped at `mix.max_repeat`: its rows would have been
    repeated more often than the params allow, so the mix is not what the weights asked for."""
    sources = orjson.loads(head.read("reports/mix.json") or "{}").get("sources", {})
    capped = {s: v for s, v in sources.items() if isinstance(v, dict) and v.get("capped")}
    return [
        f"> **Warning:** mix capped `{s}` at `mix.max_repeat`: each row {v['repeat']:g} times, "
        f"{v['capped']:,} rows not added."
        for s, v in sorted(capped.items())
    ] + ([""] if capped else [])


def render(base: Revision, head: Revision, details: bool = True, max_sources: int | None = None) -> str:
    lines = [f"## Dataset review: `{base.label()}` → `{head.label()}`", ""]
    pb = flatten(yaml.safe_load(base.read("params.yaml") or "{}") or {})
    ph = flatten(yaml.safe_load(head.read("params.yaml") or "{}") or {})
    changed = sorted(k for k in pb.keys() | ph.keys() if pb.get(k) != ph.get(k))
    lines += ["### Params", ""]
    if changed:
        lines += ["| key | before | after |", "|---|---|---|"] + [
            f"| `{k}` | {_fmt(pb.get(k))} | {_fmt(ph.get(k))} |" for k in changed
        ]
    else:
        lines.append("No params changed.")
    lines += _repetition(head)
    mb = flatten(orjson.loads(base.read("reports/metrics.json") or "{}"))
    mh = flatten(orjson.loads(head.read("reports/metrics.json") or "{}"))
    moved = sorted(k for k in mb.keys() | mh.keys() if mb.get(k) != mh.get(k))
    lines += ["", "### Metrics", ""]
    if moved:
        lines += ["| metric | before | after | delta |", "|---|---|---|---|"]
        lines += [
            f"| `{k}` | {_fmt(mb.get(k))} | {_fmt(mh.get(k))} | {_delta(mb.get(k), mh.get(k))} |"
            for k in moved
        ]
    else:
        lines.append("No metric changed.")
    kinds = ("added", "removed", "changed", "moved", "recounted")
    rows_b, rows_h = manifest(base), manifest(head)
    diff = diff_examples(rows_b, rows_h)
    samples_b, samples_h = (sample_texts(base), sample_texts(head)) if details else ({}, {})
    lines += ["", "### Examples", "", "| source | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    touched = sorted(diff, key=lambda s: (-sum(len(v) for v in diff[s].values()), s))
    shown = touched[:max_sources] if max_sources else touched
    for s in shown:
        lines.append(f"| {s} | " + " | ".join(f"{len(diff[s][k]):,}" for k in kinds) + " |")
    if len(shown) < len(touched):
        rest = touched[len(shown) :]
        totals = [sum(len(diff[s][k]) for s in rest) for k in kinds]
        lines.append(f"| {len(rest)} more sources | " + " | ".join(f"{n:,}" for n in totals) + " |")
    all_sources = {v[0] for v in rows_h.values()} | {v[0] for v in rows_b.values()}
    same = sorted(all_sources - set(diff))
    if same:
        lines += ["", f"Unchanged: {', '.join(same)}."]
    if details:
        for s in shown:
            for k in kinds:
                ids = diff[s][k]
                if ids and k != "recounted":
                    pool = samples_b if k == "removed" else samples_h
                    # Prefer ids whose content is in the git-tracked samples, so the reader sees text.
                    pick = sorted(ids, key=lambda i: (i not in pool, i))[:SHOW]
                    body = "\n".join(_example(pool.get(i), i) for i in pick)
                    lines += [
                        "",
                        f"<details><summary>{s}: {len(ids):,} {k}</summary>",
                        "",
                        body,
                        "",
                        "</details>",
                    ]
    return "\n".join(lines) + "\n"


def review(root: Path, base: str, head: str | None) -> str:
    """The comment body, kept under GitHub's limit by dropping details, then folding sources."""
    b, h = Revision(root, base), Revision(root, head)
    text = render(b, h)
    if len(text) >= LIMIT:
        text = render(b, h, details=False)
    n = 200
    while len(text) >= LIMIT and n > 1:
        text, n = render(b, h, details=False, max_sources=n), n // 2
    return text if len(text) < LIMIT else text[: LIMIT - 100] + "\n\n(summary truncated)\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m sftpipe.review",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("base", help="git revision to compare against (e.g. origin/main)")
    ap.add_argument("head", nargs="?", help="git revision to review (default: the working tree)")
    ap.add_argument("--repo", default=".", help="repository root (default: .)")
    args = ap.parse_args(argv)
    sys.stdout.write(review(Path(args.repo), args.base, args.head))


if __name__ == "__main__":
    main()
