"""Format-stage throughput and peak memory on 20,000 Alpaca rows with the GPT-2 tokenizer.

Sides, each in its own subprocess (peak RSS is its own), interleaved `--repeat` times; best time
wins, so load from other processes on the machine hurts every side alike:
- `sftpipe`: `format_records` as the stage runs it: render (alpaca template), tokenize in batch,
  label masks from offsets, length policy, sanity checks, Parquet + rejected file written;
- `encode_batch`: the raw fast tokenizer (`tokenizer._tokenizer.encode_batch`) on the same
  rendered texts: no rendering, no labels, no output (the ceiling);
- `tokenizer_call`: `tokenizer(texts)` on the same texts (Python lists of ids, no labels);
- `datasets_map`: a plain batched `datasets` `map` of `tokenizer(batch["text"])` (no labels);
- `tutorial`: the Alpaca tutorial's way (alpaca-lora's `generate_and_tokenize_prompt`), one example
  at a time through `datasets` `map`: tokenize the full text and the prompt separately, mask the
  first len(prompt ids) labels with -100;
- `tutorial_loop`: the same per-example function in a plain Python loop (no `datasets`).

The 20,000 rows are alpaca_5000.json four times; copies 1-3 carry a marker in the instruction and
the output so the tokenizer sees new text.

    python benchmarks/format.py [--repeat 3] [--n 20000]
"""

from __future__ import annotations

import argparse
import json
import resource
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


def records(n: int, tmp: Path) -> list[dict]:
    from sftpipe.ingest import ingest
    from sftpipe.jsonio import read_jsonl
    from sftpipe.sources import SourceSpec

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


def child(which: str, n: int) -> None:
    from functools import partial

    from datasets import Dataset
    from transformers import AutoTokenizer

    from sftpipe.format import FormatParams, format_records
    from sftpipe.templates import Renderer

    with tempfile.TemporaryDirectory() as tmp:
        recs = records(n, Path(tmp))
        tok = AutoTokenizer.from_pretrained(GPT2)
        render = Renderer("alpaca", tok)
        rendered = [render(r["messages"], r["meta"]) for r in recs] if which != "sftpipe" else []
        texts = [r.text for r in rendered]
        # The tutorial appends EOS itself after tokenizing: give it the text without ours.
        columns = {
            "prompt": [r.prompt for r in rendered],
            "text": [r.text.removesuffix(tok.eos_token) for r in rendered],
        }
        t0, c0 = time.perf_counter(), _cpu()
        if which == "sftpipe":
            params = FormatParams(template="alpaca", max_length=MAX_LENGTH, overlong="drop")
            tally, extra = format_records(recs, tok, params, Path(tmp) / "out")
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
            ds = Dataset.from_dict(columns).map(
                partial(tutorial_example, tok), remove_columns=["prompt", "text"]
            )
            rows, tokens = len(ds), sum(map(len, ds["input_ids"]))
        else:
            examples = [
                tutorial_example(tok, {"prompt": p, "text": t})
                for p, t in zip(*columns.values(), strict=True)
            ]
            rows, tokens = len(examples), sum(len(e["input_ids"]) for e in examples)
        dt, cpu = time.perf_counter() - t0, _cpu() - c0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "tokens": tokens, "seconds": dt, "cpu": cpu, "peak_mb": peak_mb}))


def _cpu() -> float:
    """CPU seconds of this process, every thread: less sensitive than wall time to other load."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def tutorial_example(tok, example: dict) -> dict:
    """alpaca-lora's generate_and_tokenize_prompt (train_on_inputs=False, add_eos_token=True)."""

    def tokenize(text: str) -> dict:
        result = tok(text, truncation=True, max_length=MAX_LENGTH, padding=False, return_tensors=None)
        if result["input_ids"][-1] != tok.eos_token_id and len(result["input_ids"]) < MAX_LENGTH:
            result["input_ids"].append(tok.eos_token_id)
            result["attention_mask"].append(1)
        result["labels"] = result["input_ids"].copy()
        return result

    full = tokenize(example["text"])
    prompt_len = len(tokenize(example["prompt"])["input_ids"]) - 1
    full["labels"] = [-100] * prompt_len + full["labels"][prompt_len:]
    return full


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--repeat", type=int, default=3, help="runs per side, interleaved; the best time is reported"
    )
    ap.add_argument("--n", type=int, default=20_000, help="rows (alpaca_5000 repeated with variations)")
    ap.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.n)
    runs: dict[str, list[dict]] = {s: [] for s in SIDES}
    for _ in range(args.repeat):
        for side in SIDES:
            cmd = [sys.executable, __file__, "--child", side, "--n", str(args.n)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
            runs[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    best = {s: min(r, key=lambda x: x["seconds"]) for s, r in runs.items()}
    cpu = {s: min(x["cpu"] for x in r) for s, r in runs.items()}
    times = "; ".join(f"{s} " + ", ".join(f"{r['seconds']:.2f}" for r in runs[s]) for s in SIDES)
    print(f"{args.n} Alpaca rows, GPT-2 tokenizer, best of {args.repeat} (every run, wall s: {times})")
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
        "(sftpipe vs side > 1 means sftpipe is faster; the target is >= 0.7 vs encode_batch, >= 5 vs tutorial)"
    )


if __name__ == "__main__":
    main()
