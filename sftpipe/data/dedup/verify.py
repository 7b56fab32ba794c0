"""Near-duplicate verification: which candidate pairs are duplicates, read on the workers.

Verification decides on the parts that differ: leading messages equal in both conversations
(a shared system prompt, a shared first question) are set aside, then the rest must be similar
as a whole, and its questions and its answers each similar enough on their own. So two exchanges
under one long system prompt, one instruction with different inputs and answers, or one question
with different answers are not duplicates, while a copy with edits, a cut tail or an appended
sentence is. Similarity is rapidfuzz's Indel ratio on token sequences, or for a cut/extended
copy the share of the shorter sequence found in order in the longer one.

Pairs that verify would reject, as their lengths or their token counts by bucket prove, are
rejected unread (`rejected_unread`: most hard negatives, like one answer under two questions);
each other pair is verified on its tokens, by connected components of the candidate graph on the
workers when there are several (`check_pairs`); a component bigger than a task is cut into slices,
each verified in order with its own union-find, so a worker may verify a pair the whole loop would
skip: the driver's replay (`sftpipe.data.dedup.clusters.replay`) decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from rapidfuzz.distance import Indel, LCSseq

from sftpipe.core.engine import Engine, ordered_map
from sftpipe.core.progress import bar
from sftpipe.core.unionfind import UnionFind
from sftpipe.data.dedup.params import NearParams
from sftpipe.data.dedup.ray import verify_tasks
from sftpipe.data.dedup.scan import ROLE, Conv, Tokens

SEEN_RECORDS = 1 << 15  # decoded records a verification worker keeps (each a few KB)
PAIRS_PER_TASK = 4096  # candidate pairs per verification task (bigger components are sliced)

# what became of a candidate pair: UNEQUAL and FEW_SHARED were rejected unread (`rejected_unread`)
TO_VERIFY, SKIPPED, SAME, DIFFERENT, UNEQUAL, FEW_SHARED = -1, 0, 1, 2, 3, 4


def _related(x: str, y: str, threshold: float) -> bool:
    """Similar token strings, or the shorter one, in order, inside the longer (a cut or an append)."""
    if not x or not y:
        return not x and not y
    if Indel.normalized_similarity(x, y, score_cutoff=threshold):
        return True
    short = min(len(x), len(y))
    return LCSseq.similarity(x, y, score_cutoff=int(np.ceil(threshold * short))) > 0


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
    assistant = ROLE["assistant"]

    def joined(rest: list, answers: bool) -> str:
        return "".join(t for r, t in rest if (r == assistant) == answers)

    pairs = [(joined(ra, False), joined(rb, False))]
    if a.roles[k:] == b.roles[k:]:  # same turns: each answer against its counterpart
        pairs += [(x, y) for (r, x), (_, y) in zip(ra, rb, strict=True) if r == assistant]
    else:
        pairs.append((joined(ra, True), joined(rb, True)))
    return all(_related(x, y, near.part_threshold) for x, y in pairs)


def rejected_unread(
    pairs: np.ndarray, bags: np.ndarray, n_tok: np.ndarray, n_qtok: np.ndarray, near: NearParams
) -> np.ndarray:
    """UNEQUAL or FEW_SHARED for each pair verify would reject, as its lengths or its token counts
    (`sftpipe.data.dedup.scan`'s bags) prove without reading its tokens; TO_VERIFY for the others.

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


def _verify_in_order(near: NearParams, tmp: str, pairs: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Verify candidate pairs in their order, skipping a pair whose records are already joined
    through pairs verified before it (a union-find over the task's records). Over whole
    components of the candidate graph this skips and verifies exactly the pairs that the same loop
    over all pairs would: components never share a record, so they cannot affect each other. Over
    a slice of a component it skips a subset of those (what it joins, the whole loop has joined
    too), so every pair the loop would verify has a verdict, and the driver's replay decides."""
    out = np.empty(len(pairs), dtype=np.int8)
    tokens = _tokens(tmp)
    last, conv_a = None, None
    seen: dict[int, Conv] = {}  # second records read lately: most recur in a component
    nodes, local = np.unique(pairs, return_inverse=True)  # the union-find over these records only
    clusters = UnionFind(np.arange(len(nodes)))
    for k, ((a, b), (la, lb), (where_a, where_b)) in enumerate(_rows(pairs, local.reshape(-1, 2), where)):
        if clusters.find(la) == clusters.find(lb):
            out[k] = SKIPPED
            continue
        if a != last:  # pairs come sorted by their first record: read it once
            last, conv_a = a, tokens.conversation(*where_a)
        conv_b = seen.get(b)
        if conv_b is None:
            if len(seen) >= SEEN_RECORDS:
                seen.clear()
            conv_b = seen[b] = tokens.conversation(*where_b)
        assert conv_a is not None  # read above: the first pair verified has a != last (None)
        if verify(conv_a, conv_b, near):
            clusters.union(la, lb)
            out[k] = SAME
        else:
            out[k] = DIFFERENT
    return out


def _rows(*arrays: np.ndarray, step: int = 1 << 16):
    """Rows of same-length arrays as Python lists, a slice at a time: `.tolist()` of a whole giant
    component (tens of millions of pairs) costs ~100x the arrays' memory."""
    for lo in range(0, len(arrays[0]), step):
        yield from zip(*(x[lo : lo + step].tolist() for x in arrays), strict=True)


@dataclass(frozen=True)
class _PairTask:
    """Candidate pairs (whole components or slices of one, in pair order)."""

    index: int
    pairs: np.ndarray  # [k, 2] records


@lru_cache(maxsize=1)
def _tokens(tmp: str) -> Tokens:
    """One reader of the spill files per process: a task would otherwise load again the index of
    every part its records are in (hundreds, for a slice of a big component)."""
    return Tokens(tmp)


def _verify_state(near: NearParams, tmp: str, locations: np.ndarray) -> tuple[NearParams, str, np.ndarray]:
    return near, tmp, locations


def _verify_task(ctx: tuple[NearParams, str, np.ndarray], task: _PairTask) -> np.ndarray:
    near, tmp, locations = ctx
    return _verify_in_order(near, tmp, task.pairs, locations[task.pairs])


def pair_tasks(pairs: np.ndarray, size: int) -> list[np.ndarray]:
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


def check_pairs(
    pairs: np.ndarray, locations: np.ndarray, near: NearParams, tmp: str, engine: Engine, workers: int
) -> np.ndarray:
    """SKIPPED, SAME or DIFFERENT for each candidate pair: components of the candidate graph (or
    slices of big ones) go to the engine's workers, which read the records' tokens from the spill
    files and verify in pair order (see `_verify_in_order`); every pair one loop over all of them
    would verify gets its verdict, and the caller's replay decides what is skipped."""
    size = max(1, min(PAIRS_PER_TASK, -(-len(pairs) // max(1, workers))))
    tasks = pair_tasks(pairs, size)
    jobs = [_PairTask(k, pairs[t]) for k, t in enumerate(tasks)]
    if engine == "ray":
        results = verify_tasks(jobs, _verify_task, (near, tmp, locations), workers)
    else:
        results = ordered_map(
            _verify_task, jobs, setup=_verify_state, setup_args=(near, tmp, locations), workers=workers
        )
    status = np.full(len(pairs), -1, dtype=np.int8)
    with bar(total=len(pairs), desc="dedup verify", unit=" pair") as progress:
        for t, got in zip(tasks, results, strict=True):
            status[t] = got
            progress.update(len(t))
    _tokens.cache_clear()  # when verified in this process: the spill files go next
    return status
