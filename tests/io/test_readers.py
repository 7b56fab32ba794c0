"""The streaming JSON array reader against orjson reading the whole file, on tricky strings and
every block size."""

import json
import random

import pytest

from sftpipe.io import readers

PIECES = [
    "}, {",
    '}, {"k0": ',
    '}, {"k0": 1}, ',
    "}]",
    '"',
    "\\",
    "[",
    "{",
    ",",
    " ",
    "\n",
    "é",
    "😀",
    "\\u00e9",
    "x",
    "}, ",
    "]",
]


def _row(rng: random.Random, depth: int = 0) -> dict:
    row = {}
    for k in range(rng.randint(0, 4)):
        kind = rng.random()
        if kind < 0.5 or depth > 3:
            row[f"k{k}"] = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 12)))
        elif kind < 0.75:
            row[f"k{k}"] = [_row(rng, depth + 1) for _ in range(rng.randint(0, 3))]
        else:
            row[f"k{k}"] = _row(rng, depth + 1)
    return row


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 23])
def test_array_elements_match_a_whole_parse(tmp_path, monkeypatch, block):
    monkeypatch.setattr(readers, "CHUNK", block)
    rng = random.Random(block)
    for n in range(40):
        rows = [_row(rng) for _ in range(rng.randint(0, 12))]
        f = tmp_path / f"{n}.json"
        f.write_text(json.dumps(rows, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 1])))
        got = list(readers.read_file(f))
        assert [r for _, r in got] == rows
        assert [w["index"] for w, _ in got] == list(range(len(rows)))


def test_a_bad_element_is_one_drop_and_the_rest_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "CHUNK", 16)
    f = tmp_path / "a.json"
    f.write_text('[{"a": "}, {"}, {"b": nope}, {"c": "]"}]')
    got = [(w["index"], r.reason if isinstance(r, readers.Drop) else r) for w, r in readers.read_file(f)]
    assert got == [(0, {"a": "}, {"}), (1, "invalid_json"), (2, {"c": "]"})]
