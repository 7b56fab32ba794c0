"""Where the format stage's time goes: `format_file` under cProfile, in one process, split by phase.

One worker in this process (`workers: 1`), so every phase is in one profile: the set-up a worker
needs (tokenizer, template, tiktoken encoder), reading and parsing the input, rendering and
tokenizing (the length policy's shorter forms of long conversations included), label ranges from
offsets, the sanity checks (decode included), building the Arrow table, and writing. With several workers the same phases
run on each (forked from this state, see `sftpipe.core.engine.ordered_map`); the driver only
merges and writes. cProfile adds its own cost to every Python call, so read the shares, not the
seconds.

    python benchmarks/format_profile.py                 # 20k Alpaca rows, GPT-2, alpaca template
    python benchmarks/format_profile.py --corpus chat --n 20000   # real records, SmolLM2 template
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def phases() -> dict[str, list]:
    """Phase -> the functions whose cumulative time it is: Python functions, or the names of
    built-in methods as cProfile shows them."""
    import pyarrow.parquet as pq

    from sftpipe.core.engine import Part
    from sftpipe.core.jsonio import JsonlWriter
    from sftpipe.data.format import formatter as f
    from sftpipe.data.format import tokenizer as t

    return {
        "set-up (tokenizer, template, tiktoken encoder)": [t.load_tokenizer, f.Formatter.__init__],
        "read and parse input lines": [Part.lines, "<orjson.loads>"],
        "render (template)": [f.Formatter._rendered, f.Formatter._messages],
        "tokenize (BPE)": [
            "<method 'encode' of 'builtins.CoreBPE' objects>",
            "<method 'encode_batch' of 'tokenizers.Tokenizer' objects>",
        ],
        "label ranges from offsets": [t.encode],
        "sanity checks (decode included)": [f._Stats.add],
        "Arrow table (labels as numpy)": [f.to_table],
        "write Parquet and rejected": [
            pq.ParquetWriter.write_table,
            JsonlWriter.write_all,
            JsonlWriter.write,
        ],
    }


def cumulative(stats: pstats.Stats, targets: list) -> float:
    """Time in the targets, each call counted once (not again when a target calls another)."""
    keys = set()
    for target in targets:
        if isinstance(target, str):
            keys.add(("~", 0, target))
        else:
            code = target.__code__
            keys.add((code.co_filename, code.co_firstlineno, code.co_name))
    total = 0.0
    for key, (_cc, _nc, _tt, _ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if key in keys:
            # only the calls from outside the phase: a target called by a target is inside it
            total += sum(v[3] for caller, v in callers.items() if caller not in keys)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", choices=("alpaca", "chat"), default="alpaca")
    ap.add_argument("--n", type=int, default=20_000)
    args = ap.parse_args()

    from format import inputs

    from sftpipe.core.jsonio import write_jsonl

    t0 = time.perf_counter()
    from sftpipe.data.format.formatter import format_file
    from sftpipe.data.format.tokenizer import load_tokenizer

    load_tokenizer  # noqa: B018
    import transformers.models.auto.tokenization_auto  # noqa: F401  (what load_tokenizer imports)

    imports = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        recs, tokenizer, params, _ = inputs(args.corpus, args.n, Path(tmp))
        src = Path(tmp) / "records.jsonl"
        write_jsonl(src, recs)
        profile = cProfile.Profile()
        t0 = time.perf_counter()
        profile.enable()
        tally, _ = format_file(src, tokenizer, params, Path(tmp) / "out", workers=1)
        profile.disable()
        wall = time.perf_counter() - t0
    stats = pstats.Stats(profile)
    total = stats.total_tt  # type: ignore[attr-defined]
    shares = {phase: cumulative(stats, targets) for phase, targets in phases().items()}
    shares["label ranges from offsets"] -= shares["tokenize (BPE)"]  # the BPE runs inside it
    print(f"{args.n} {args.corpus} records -> {tally.n_out} rows; {wall:.2f} s wall under cProfile")
    print(
        f"(before it: importing the stage's modules, transformers and torch, {imports:.2f} s, not profiled)"
    )
    print("| phase | s (profiled) | share |")
    print("|---|---|---|")
    for phase, s in shares.items():
        print(f"| {phase} | {s:.2f} | {s / total:.0%} |")
    rest = total - sum(shares.values())
    print(f"| other (length checks, record objects, counting, merging) | {rest:.2f} | {rest / total:.0%} |")
    print(f"| total | {total:.2f} | 100% |")


if __name__ == "__main__":
    main()
