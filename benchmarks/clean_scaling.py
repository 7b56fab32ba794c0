"""clean's time against turn size, 1 KB to 50 MB, on the patterns that were quadratic (issue 19):

- `backticks`: one line of inline ```x``` runs (`a ```x``` ` repeated);
- `nested`: fences inside fences (```` ``` ```` / `~~~~` / ```` ```` ```` lines), thousands of blocks;
- `short_lines`: a million short lines (`ab\\n`), with stray `\\r\\n` and blank-line runs;
- `fence_lines`: every line an inline ```x``` that looks like an opening fence.

For each, one record (a user turn and the pathological assistant turn) goes through the clean
rules with the length limits off (so the text really is normalized), and then with the default
limits (the raw length check drops it before normalization). `--baseline REV` also times
`split_code` of that git revision of textnorm.py (the quadratic one: c7c29ce) up to
`--baseline-max` bytes, side by side. Best of `--repeat`; seconds per MB should stay flat.

    python benchmarks/clean_scaling.py [--max-mb 50] [--repeat 2] [--baseline c7c29ce]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

PATTERNS = {
    "backticks": "a ```x``` ",
    "nested": "```\n~~~~\n````\nx\n",
    "short_lines": "ab\n" * 8 + "c\r\n\n\n\n",
    "fence_lines": "```x```\n",
}
SIZES = [1 << 10, 10 << 10, 100 << 10, 300 << 10, 1 << 20, 10 << 20, 50 << 20]


def text_of(pattern: str, size: int) -> str:
    unit = PATTERNS[pattern]
    return (unit * (size // len(unit) + 1))[:size]


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def baseline_module(rev: str):
    """textnorm.py as it was at git revision `rev`, imported under another name."""
    src = subprocess.run(
        ["git", "show", f"{rev}:sftpipe/data/clean/textnorm.py"], check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "textnorm_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("textnorm_baseline", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-mb", type=float, default=50, help="largest turn in MB (default 50)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per point; best wins (default 2)")
    ap.add_argument("--baseline", help="git revision whose split_code to time beside (e.g. c7c29ce)")
    ap.add_argument("--baseline-max", type=int, default=300 << 10, help="largest baseline turn in bytes")
    args = ap.parse_args()

    from sftpipe.data.clean.rules import Cleaner, CleanParams
    from sftpipe.data.clean.textnorm import split_code

    unlimited = Cleaner(CleanParams(max_turn_chars=None, max_conversation_chars=None))
    default = Cleaner(CleanParams())
    old = baseline_module(args.baseline) if args.baseline else None
    sizes = [s for s in SIZES if s <= args.max_mb * (1 << 20)]
    print(
        "| pattern | turn | clean, no length limit (s) | s/MB | clean, default limits (s) | split_code (s) |"
        + (f" split_code at {args.baseline} (s) |" if old else "")
    )
    print("|---|---|---|---|---|---|" + ("---|" if old else ""))
    for pattern in PATTERNS:
        for size in sizes:
            text = text_of(pattern, size)
            rec = {
                "id": "x",
                "source": "s",
                "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": text}],
                "meta": {},
            }
            t_full = best(lambda rec=rec: unlimited(rec, set(), Counter()), args.repeat)
            t_default = best(lambda rec=rec: default(rec, set(), Counter()), args.repeat)
            t_split = best(lambda text=text: split_code(text), args.repeat)
            row = (
                f"| {pattern} | {size / (1 << 20):.3g} MB | {t_full:.3f} | {t_full / (size / (1 << 20)):.3f} "
                f"| {t_default:.4f} | {t_split:.3f} |"
            )
            if old:
                if size <= args.baseline_max:
                    t_old = best(lambda text=text: old.split_code(text), 1)
                    row += f" {t_old:.3f} |"
                else:
                    row += " – |"
            print(row, flush=True)
    print(f"python {sys.version.split()[0]}", file=sys.stderr)


if __name__ == "__main__":
    main()
