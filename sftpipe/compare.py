"""Compare experiments on the evaluation rows they share: did dataset B beat dataset A?

    python -m sftpipe.compare main exp-more-code              # a git revision vs a DVC experiment
    python -m sftpipe.compare HEAD workspace --plot compare.png
    python -m sftpipe.compare base-exp exp-a exp-b           # each later one against the first

Each experiment is a git revision (branch, tag, commit), a DVC experiment name (resolved to its
commit through refs/exps, where `dvc exp run` keeps it), or `workspace` (the working tree). Its
per-row results are read from the git-tracked reports/eval_rows.jsonl (`git show REV:PATH`), so no
`dvc pull` is needed. Rows pair on (set, metric, id): the trained model of each later experiment
against the first one's, on the rows both scored. Per set and metric, the Markdown table gives both
means, the difference (later - first; token-weighted for loss), its 95% bootstrap interval and the
share of rows that got better. Rows on which the two base models disagree mean those rows' text or
template changed between the experiments; they are counted in a note.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

from sftpipe.core.errors import SftpipeError
from sftpipe.core.jsonio import loads
from sftpipe.model.stats import DIRECTION, paired

ROWS = "reports/eval_rows.jsonl"
WORKSPACE = ("workspace", "WORKSPACE", ".")


class CompareError(SftpipeError, ValueError):
    """An experiment cannot be resolved or has no per-row results; one line naming which."""


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)


def resolve(repo: Path, name: str) -> str | None:
    """The commit of `name` (a revision or a DVC experiment); None for the workspace."""
    if name in WORKSPACE:
        return None
    proc = _git(repo, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}")
    if proc.returncode == 0 and proc.stdout.strip():
        return proc.stdout.strip()
    refs = _git(repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps")
    for line in refs.stdout.splitlines():
        ref, _, commit = line.partition(" ")
        if ref.rsplit("/", 1)[-1] == name:
            return commit
    raise CompareError(f"{name}: neither a git revision nor a DVC experiment (see `dvc exp show`)")


def read_rows(repo: Path, name: str, path: str = ROWS) -> tuple[str, dict[tuple, dict]]:
    """(label, rows by (set, metric, id)) of experiment `name`."""
    commit = resolve(repo, name)
    if commit is None:
        file = repo / path
        if not file.is_file():
            raise CompareError(f"workspace: no {path} (run the evaluate stage)")
        text, label = file.read_text(encoding="utf-8"), "workspace"
    else:
        proc = _git(repo, "show", f"{commit}:{path}")
        if proc.returncode != 0:
            raise CompareError(f"{name}: {path} is not in commit {commit[:10]} (did its evaluate stage run?)")
        text, label = proc.stdout, f"{name} ({commit[:7]})" if not commit.startswith(name) else commit[:7]
    rows = {}
    for line in text.splitlines():
        if line.strip():
            r = loads(line)
            rows[(r["set"], r["metric"], r["id"])] = r
    return label, rows


def compare_rows(a: dict[tuple, dict], b: dict[tuple, dict], seed: int = 0) -> list[dict]:
    """One entry per (set, metric): b's trained model against a's on their shared rows."""
    out = []
    groups = sorted({(s, m) for (s, m, _) in a} | {(s, m) for (s, m, _) in b})
    for s, m in groups:
        keys = sorted(k for k in a if k[:2] == (s, m) and k in b and a[k]["trained"] is not None)
        keys = [k for k in keys if b[k]["trained"] is not None]
        only_a = sum(1 for k in a if k[:2] == (s, m) and k not in b)
        only_b = sum(1 for k in b if k[:2] == (s, m) and k not in a)
        weights = [a[k].get("tokens", 1) for k in keys] if m == "loss" else None
        p = paired(
            [a[k]["trained"] for k in keys],
            [b[k]["trained"] for k in keys],
            weights,
            lower_is_better=DIRECTION.get(m) is not False,
            seed=seed,
        )
        base_moved = sum(
            1
            for k in keys
            if a[k].get("base") is not None
            and b[k].get("base") is not None
            and abs(a[k]["base"] - b[k]["base"]) > 1e-4
        )
        out.append({"set": s, "metric": m, **p, "only_a": only_a, "only_b": only_b, "base_moved": base_moved})
    return out


def _num(x: float, metric: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.1f}" if metric == "length" else f"{x:.4f}"


def markdown(labels: list[str], results: list[list[dict]]) -> str:
    """The comparison as Markdown: one table row per (experiment, set, metric)."""
    lines = [f"## Evaluation: {', '.join(labels[1:])} vs {labels[0]}", ""]
    lines.append(
        "Trained models compared on the evaluation rows both experiments scored (reports/eval_rows.jsonl); "
        "Δ = experiment − baseline, token-weighted for loss, with a 95% bootstrap CI over rows."
    )
    lines += ["", "| experiment | set | metric | rows | baseline | experiment | Δ | 95% CI | better |"]
    lines.append("|---|---|---|---|---|---|---|---|---|")
    notes = []
    for label, res in zip(labels[1:], results, strict=True):
        for r in res:
            m = r["metric"]
            better = (
                "—"
                if DIRECTION.get(m) is None or not r["n"]
                else f"{r['improved']}/{r['n']} ({100 * r['improved_share']:.0f}%)"
            )
            ci = "—" if math.isnan(r["ci_low"]) else f"{_num(r['ci_low'], m)} to {_num(r['ci_high'], m)}"
            lines.append(
                f"| {label} | {r['set']} | {m} | {r['n']} | {_num(r['a'], m)} | {_num(r['b'], m)} | "
                f"{_num(r['delta'], m)} | {ci} | {better} |"
            )
            if r["only_a"] or r["only_b"]:
                notes.append(
                    f"{label}, {r['set']} {m}: {r['only_a']} rows only in {labels[0]}, {r['only_b']} only in {label}"
                )
            if r["base_moved"]:
                notes.append(
                    f"{label}, {r['set']} {m}: the base model scored {r['base_moved']} shared rows differently "
                    "(their text or template changed)"
                )
    lines += ["", "Lower is better for loss and repetition; higher for accuracy, stop and win."]
    if notes:
        lines += ["", "<details><summary>Notes</summary>", "", *[f"- {n}" for n in notes], "", "</details>"]
    return "\n".join(lines) + "\n"


def plot(labels: list[str], results: list[list[dict]], path: str | Path) -> None:
    """Each difference with its 95% CI, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted({r["metric"] for res in results for r in res if r["n"]})
    fig, axes = plt.subplots(
        len(metrics),
        1,
        figsize=(7, 1.2 + 0.45 * sum(1 for res in results for r in res if r["n"])),
        squeeze=False,
    )
    for ax, m in zip(axes[:, 0], metrics, strict=True):
        names, deltas, lows, highs = [], [], [], []
        for label, res in zip(labels[1:], results, strict=True):
            for r in res:
                if r["metric"] == m and r["n"]:
                    names.append(f"{label}: {r['set']}")
                    deltas.append(r["delta"])
                    lows.append(r["delta"] - r["ci_low"] if not math.isnan(r["ci_low"]) else 0)
                    highs.append(r["ci_high"] - r["delta"] if not math.isnan(r["ci_high"]) else 0)
        y = list(range(len(names)))
        ax.errorbar(deltas, y, xerr=[lows, highs], fmt="o", capsize=3)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(y, names)
        ax.set_title(f"{m}: Δ vs {labels[0]} (95% CI)", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiments", nargs="+", help="git revisions, DVC experiment names or `workspace`")
    ap.add_argument("--rows", default=ROWS, help=f"per-row results file in each revision (default: {ROWS})")
    ap.add_argument("--plot", default="compare.png", help="PNG to write (default: compare.png); '' = none")
    ap.add_argument("--repo", default=".", help="git repository (default: the current directory)")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    args = ap.parse_args(argv)
    if len(args.experiments) < 2:
        ap.error("give at least two experiments: a baseline and one to compare with it")
    repo = Path(args.repo)
    loaded = [read_rows(repo, name, args.rows) for name in args.experiments]
    labels = [label for label, _ in loaded]
    base = loaded[0][1]
    results = [compare_rows(base, rows, args.seed) for _, rows in loaded[1:]]
    sys.stdout.write(markdown(labels, results))
    if args.plot:
        plot(labels, results, args.plot)
        print(f"compare: plot written to {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    from sftpipe.runtime import cli

    cli.run(main)
