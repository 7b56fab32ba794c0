"""Hostile input files for tests/test_hostile.py: damaged, malformed, huge or odd inputs, each with
what ingest must make of it. `"records"` means records plus balanced accounting (with at least
these drop reasons); `"error"` means one line naming the file.

    python tests/hostile_inputs.py OUT_DIR      # write them all, to try by hand
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path


def _pair(i: int) -> dict:
    return {"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."}


def _lines(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _array(rows: list[dict]) -> str:
    return json.dumps(rows, indent=1)


def make(folder: Path, big_mb: int = 50) -> dict[str, tuple[Path, str, set[str]]]:
    """Write every case into `folder`: name -> (file, "records" | "error", drop reasons expected)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [_pair(i) for i in range(300)]
    cases: dict[str, tuple[str, bytes, str, set[str]]] = {}

    def add(name: str, file: str, data: bytes | str, expect: str, reasons: set[str] | None = None) -> None:
        cases[name] = (file, data.encode() if isinstance(data, str) else data, expect, reasons or set())

    gz = gzip.compress(_lines(rows))
    add("truncated_gzip", "trunc.jsonl.gz", gz[: len(gz) // 2], "records", {"truncated"})
    damaged = bytearray(gz)
    damaged[len(gz) * 2 // 3] ^= 0xFF
    add("corrupt_gzip", "corrupt.jsonl.gz", bytes(damaged), "records", set())
    add("fake_gzip", "fake.jsonl.gz", _lines(rows), "error")
    add("empty_gzip_member", "cut.json.gz", gz[:12], "error")
    add(
        "truncated_json_gz",
        "trunc.json.gz",
        gzip.compress(_array(rows).encode())[:-40],
        "records",
        {"truncated"},
    )
    add("fake_parquet", "fake.parquet", _lines(rows), "error")
    add("lone_surrogate", "surrogate.json", _array(rows[:5]).replace("Answer 2.", "Answer \\ud800"), "records",
        {"invalid_json"})  # fmt: skip
    deep = '{"instruction": "x", "output": ' + "[" * 10_000 + "]" * 10_000 + "}"
    add("deep_json", "deep.json", "[" + json.dumps(rows[0]) + ",\n" + deep + ",\n" + json.dumps(rows[1]) + "]",
        "records", {"invalid_json"})  # fmt: skip
    add("deep_jsonl", "deep.jsonl", _lines(rows[:2]) + deep.encode() + b"\n" + b'{"instruction": "x", "meta": '
        + b"[" * 400 + b"]" * 400 + b', "output": "y"}\n', "records", {"invalid_json", "too_deep"})  # fmt: skip
    add("not_utf8_json", "latin1.json", _array(rows[:4]).replace("Answer 3.", "R\xe9ponse").encode("latin-1"),
        "records", {"not_utf8"})  # fmt: skip
    add("not_utf8_jsonl", "latin1.jsonl", _lines(rows[:3]) + b'{"instruction": "caf\xe9", "output": "x"}\n',
        "records", {"not_utf8"})  # fmt: skip
    add(
        "not_utf8_csv",
        "latin1.csv",
        b'instruction,output\na,b\n"c\xe9\nmore",d\ne,f\n',
        "records",
        {"not_utf8"},
    )
    add("bad_record_in_array", "bad.json", _array(rows[:5]).replace('"Answer 1."', "Answer 1."), "records",
        {"invalid_json"})  # fmt: skip
    add("huge_csv_field", "huge.csv", 'instruction,output\n"' + "x" * 200_000 + '",y\nq,a\n', "records")
    add("csv_extra_fields", "extra.csv", "instruction,output\na,b\nc,d,e\nf,g\n", "records", {"wrong_type"})
    add("array_in_jsonl", "array.jsonl", _array(rows[:5]), "error")  # 0 of N kept: on_empty
    add("bom", "bom.jsonl", b"\xef\xbb\xbf" + _lines(rows[:3]), "records")
    add("empty", "empty.jsonl", b"", "records")
    add("blank_only", "blank.json", "  \n\n ", "records")
    add("wrong_types", "types.jsonl", _lines([{"instruction": 3, "output": "x"}, rows[0], {"instruction": "q", "output": None}]),
        "records")  # fmt: skip
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "hello"}]}]}  # fmt: skip
    add("content_parts", "parts.jsonl", _lines([parts, parts]), "records")
    odd = {"messages": [{"role": "narrator", "content": "x"}, {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a"}]}  # fmt: skip
    add("odd_roles", "roles.jsonl", _lines([odd, {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]),
        "records")  # fmt: skip
    add("truncated_array", "trunc.json", _array(rows[:4])[:-30], "records", {"truncated"})
    add("ids_x_x2_x", "ids.jsonl", _lines([{**rows[0], "id": "x"}, {**rows[1], "id": "x~2"}, {**rows[2], "id": "x"}]),
        "records")  # fmt: skip
    big = {"instruction": "q", "output": "a ```x``` " * (big_mb * (1 << 20) // 10)}
    add("big_line", "big.jsonl", _lines([big, rows[0]]), "records")

    out = {}
    for name, (file, data, expect, reasons) in cases.items():
        path = folder / file
        path.write_bytes(data)
        out[name] = (path, expect, reasons)
    return out


if __name__ == "__main__":
    for name, (path, expect, reasons) in make(Path(sys.argv[1])).items():
        print(f"{name}: {path} -> {expect} {sorted(reasons)}")
