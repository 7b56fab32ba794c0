"""Pass 1 of dedup, on the engine: what every record is, as flat arrays, and its tokens spilled to
files.

The scan runs over parts of LINES_PER_PART input lines that each worker reads itself (local worker
processes, or Ray Data actors; see `sftpipe.core.engine`): per record its id, source, quality
score (characters of assistant content), exact key (hash of its normalized tokens, see
`sftpipe.data.dedup.minhash`), MinHash signature, token counts by bucket (for the bounds of
`sftpipe.data.dedup.verify.rejected_unread`) and evaluation-set n-gram matches. The workers write
each part's tokens to a temporary folder beside the output (`data/interim/.dedup-tokens-*`), where
verification reads them (`Tokens`): on a Ray cluster that folder must be on a filesystem every
node shares, like the input.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext
from itertools import accumulate, pairwise
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson
from numpy.typing import DTypeLike

from sftpipe.core.engine import Engine, Part, ordered_map, split_lines
from sftpipe.core.hashing import digest
from sftpipe.core.progress import bar
from sftpipe.core.records import turn_text
from sftpipe.data.dedup.decontam import EvalIndex
from sftpipe.data.dedup.minhash import codepoints, sequence_keys, shingles, signatures, tokenize
from sftpipe.data.dedup.params import DedupParams

LINES_PER_PART = 2048  # input lines per scan task (outputs never depend on it, nor on the workers)
CHUNK_BYTES = 2 << 20  # input bytes tokenized at once: big enough for numpy, small enough for memory
BAG_BUCKETS = 128  # token-count buckets per record for the bounds that reject pairs unread


def conversation_text(messages: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


ROLE = {"system": 1, "user": 2, "assistant": 3, "tool": 4}


def scan_state(params: DedupParams, seed: int, index: EvalIndex | None, tmp: str) -> dict:
    return {"params": params, "seed": seed, "index": index, "tmp": Path(tmp)}


def _scan(ctx: dict, lines: list[bytes]) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Arrays for one batch of records, and its tokens (as code points), message token offsets and
    message roles."""
    params: DedupParams = ctx["params"]
    recs = [orjson.loads(line) for line in lines]
    msgs = [m for r in recs for m in r["messages"]]
    n_msgs = np.fromiter((len(r["messages"]) for r in recs), dtype=np.int64, count=len(recs))
    msg_start = np.zeros(len(recs) + 1, dtype=np.int64)
    np.cumsum(n_msgs, out=msg_start[1:])
    tok, moff = tokenize([turn_text(m) for m in msgs])  # calls and reasoning count too
    coff = moff[msg_start]  # token offsets of whole conversations
    roles = np.array([ROLE.get(m["role"], 0) for m in msgs], dtype=np.uint8)
    # exact key: the order of (role, message key) pairs, so turn boundaries and roles count
    mkeys = sequence_keys(tok, moff) + roles.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    keys = sequence_keys(mkeys, msg_start)
    empty = np.diff(coff) == 0
    for i in np.flatnonzero(empty):  # nothing to normalize: only byte-identical content is equal
        blob = orjson.dumps([[m["role"], turn_text(m)] for m in recs[i]["messages"]])
        keys[i] = np.frombuffer(digest(blob, size=8), dtype=np.uint64)[0]
    out = {
        "ids": [r["id"] for r in recs],
        "sources": [r["source"] for r in recs],
        "scores": np.array(
            [sum(len(turn_text(m)) for m in r["messages"] if m["role"] == "assistant") for r in recs],
            dtype=np.int64,
        ),
        "keys": keys,
        "empty": empty,
        "first": msg_start[:-1],
        "n_msgs": n_msgs,
        "n_tok": np.diff(coff),
    }
    cp = np.zeros(0, dtype=np.uint32)
    if params.near.enabled:
        grams, goff = shingles(tok, coff, params.near.ngram)
        out["sigs"] = signatures(grams, goff, params.near.num_perm, ctx["seed"])
        cp = codepoints(tok)
        out["bags"], out["n_qtok"] = _bags(cp, moff, roles, msg_start)
    index: EvalIndex | None = ctx["index"]
    if index:
        mask, count = index.match(tok, moff)  # per message: an eval text sits inside one turn
        rec_of = np.repeat(np.arange(len(recs)), n_msgs)
        out["cmask"] = np.zeros(len(recs), dtype=np.uint64)
        np.bitwise_or.at(out["cmask"], rec_of, mask)
        out["ccount"] = np.bincount(rec_of, weights=count, minlength=len(recs)).astype(np.int64)
    return out, cp, moff, roles


def _bags(cp: np.ndarray, moff: np.ndarray, roles: np.ndarray, msg_start: np.ndarray):
    """Per record, its tokens counted by bucket (code point mod BAG_BUCKETS): [n, 2, BAG_BUCKETS]
    uint8 over all its tokens, then over its questions' (every turn but the assistant's); counts
    past 254 are 255. And each record's number of question tokens. See `rejected_unread`."""
    n = len(msg_start) - 1
    per_msg = np.diff(moff)
    question = np.repeat(roles != ROLE["assistant"], per_msg)
    record = np.repeat(np.repeat(np.arange(n), np.diff(msg_start)), per_msg)
    cell = record * BAG_BUCKETS + (cp % BAG_BUCKETS).astype(np.int64)
    whole = np.bincount(cell, minlength=n * BAG_BUCKETS)
    asked = np.bincount(cell[question], minlength=n * BAG_BUCKETS)
    bags = np.stack([whole, asked], axis=0).reshape(2, n, BAG_BUCKETS).transpose(1, 0, 2)
    return np.minimum(bags, 255).astype(np.uint8), np.bincount(record[question], minlength=n)


def _by_size(lines: list[bytes], size: int):
    """Runs of lines of about `size` bytes (the last may be shorter)."""
    start = total = 0
    for k, line in enumerate(lines):
        total += len(line)
        if total >= size:
            yield lines[start : k + 1]
            start, total = k + 1, 0
    if start < len(lines):
        yield lines[start:]


def scan_part(ctx: dict, part: Part) -> dict | None:
    """What pass 1 learns about a part's records (None for a part of blank lines). With near
    duplicates on, the part's tokens, message token offsets and roles go to files in the temp dir,
    where verification reads them."""
    lines = [line for _, line in part.lines()]
    if not lines:
        return None
    got: dict[str, list] = defaultdict(list)
    moffs, roles = [np.zeros(1, dtype=np.int64)], []
    n_msgs = n_tok = 0
    near = ctx["params"].near.enabled
    with open(_spill(ctx["tmp"], part.index, "u32"), "wb") if near else nullcontext() as tokens:
        for batch in _by_size(lines, CHUNK_BYTES):  # bounded memory, whatever a part's bytes
            out, cp, moff, role = _scan(ctx, batch)
            out["first"] += n_msgs
            for k, v in out.items():
                got[k].append(v)
            if near:
                assert tokens is not None  # the spill file is open whenever near is on
                cp.tofile(tokens)
                moffs.append(moff[1:] + n_tok)
                roles.append(role)
            n_msgs, n_tok = n_msgs + len(role), n_tok + int(moff[-1])
    result = {
        k: [x for v in vs for x in v] if k in ("ids", "sources") else np.concatenate(vs)
        for k, vs in got.items()
    }
    if near:
        np.save(_spill(ctx["tmp"], part.index, "moff.npy"), np.concatenate(moffs))
        np.save(_spill(ctx["tmp"], part.index, "roles.npy"), np.concatenate(roles))
    return result


def _spill(tmp: Path, part: int, kind: str) -> Path:
    return tmp / f"{part:06d}.{kind}"


class Conv(NamedTuple):
    """A conversation as verification reads it: roles, token strings, and both joined once."""

    roles: tuple[int, ...]
    texts: tuple[str, ...]
    joined: str
    starts: tuple[int, ...]  # where each message starts in `joined` (and its length, last)

    @classmethod
    def of(cls, messages: list[tuple[int, str]]) -> Conv:
        roles, texts = zip(*messages, strict=True) if messages else ((), ())
        return cls(roles, texts, "".join(texts), (0, *accumulate(map(len, texts))))


class Tokens:
    """Records as verification reads them (`Conv`: role codes and tokens as strings), from the
    scan's files in `tmp` (each part's files opened once)."""

    def __init__(self, tmp: str):
        self.tmp = Path(tmp)
        self.parts: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def conversation(self, part: int, first: int, n: int) -> Conv:
        got = self.parts.get(part)
        if got is None:
            f = _spill(self.tmp, part, "u32")
            empty = f.stat().st_size == 0  # mmap refuses empty files
            # a plain ndarray over the map: slicing a np.memmap costs ~10x more per call
            tokens = (
                np.zeros(0, np.uint32) if empty else np.memmap(f, dtype=np.uint32, mode="r").view(np.ndarray)
            )
            moff, roles = (np.load(_spill(self.tmp, part, kind)) for kind in ("moff.npy", "roles.npy"))
            got = self.parts[part] = (tokens, moff, roles)
        tokens, moff, roles = got
        lo = int(moff[first])
        starts = tuple((moff[first : first + n + 1] - lo).tolist())
        joined = tokens[lo : lo + starts[-1]].tobytes().decode("utf-32-le")  # one decode per record
        texts = tuple(joined[a:b] for a, b in pairwise(starts))
        return Conv(tuple(roles[first : first + n].tolist()), texts, joined, starts)


class Scan:
    """What pass 1 learns about every record, as flat arrays (tokens stay in files under `tmp`)."""

    def __init__(
        self, path: Path, params: DedupParams, seed: int, index, tmp: Path, engine: Engine, workers: int
    ):
        self.parts = split_lines(path, LINES_PER_PART)
        got: dict[str, list] = defaultdict(list)
        chunk: list[np.ndarray] = []
        progress = bar(total=sum(p.n_lines for p in self.parts), desc="dedup scan", unit=" line")
        results = ordered_map(
            scan_part, self.parts, setup=scan_state, setup_args=(params, seed, index, str(tmp)),
            engine=engine, workers=workers,
        )  # fmt: skip
        for part, result in zip(self.parts, results, strict=True):
            progress.update(part.n_lines)
            if result is None:
                continue
            for k, v in result.items():
                got[k].append(v)
            chunk.append(np.full(len(result["ids"]), part.index, dtype=np.int64))
        progress.close()
        self.tmp = tmp
        self.ids: list[str] = [i for p in got["ids"] for i in p]
        names = sorted({s for p in got["sources"] for s in p})
        code = {s: k for k, s in enumerate(names)}
        self.source_names = names
        self.sources = np.array([code[s] for p in got["sources"] for s in p], dtype=np.int32)
        n = len(self.ids)

        def cat(key: str, dtype: DTypeLike) -> np.ndarray:
            return np.concatenate(got[key]) if got[key] else np.zeros(n, dtype=dtype)

        self.scores = cat("scores", np.int64)
        self.keys = cat("keys", np.uint64)
        self.empty = cat("empty", bool)
        self.cmask = cat("cmask", np.uint64)
        self.ccount = cat("ccount", np.int64)
        self.sigs = np.concatenate(got["sigs"]) if got["sigs"] else None
        # where each record's messages and tokens are: its part, and its first message there
        self.chunk = np.concatenate(chunk) if chunk else np.zeros(0, np.int64)
        self.first = cat("first", np.int64)
        self.n_msgs = cat("n_msgs", np.int64)
        self.n_tok = cat("n_tok", np.int64)
        self.n_qtok = cat("n_qtok", np.int64)
        self.bags = np.concatenate(got["bags"]) if got["bags"] else None

    def locations(self) -> np.ndarray:
        """(part, first message, messages) of every record, int32 [n, 3]: what `Tokens.conversation`
        takes. Verification workers get it once and look pairs up in it."""
        return np.stack([self.chunk, self.first, self.n_msgs], axis=1).astype(np.int32)
