"""OpenAssistant (OASST1) message trees, in tree form (`message_tree_id` + `prompt`), as a nested
root message (`message_id` + `replies`), or as the hub's flat rows (one message per row with
`message_id`, `parent_id`, `message_tree_id`; see `Trees`). Flattened into conversations: `best`
follows the best-ranked reply at each level, `all` yields every root-to-leaf path; deleted messages
and messages that failed review are skipped, with everything below them. A path ends on an
assistant turn.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import orjson

from sftpipe.core.records import Role, message
from sftpipe.io.schemas.base import Converted, Drop, text_field

FIELDS = ("message_id", "replies")
FLAT_FIELDS = ("message_id", "parent_id", "message_tree_id", "role", "text")
ROLES: dict[str, Role] = {"prompter": "user", "assistant": "assistant"}


def is_flat(row: dict) -> bool:
    """A hub row: one message, its parent named by id, no nested replies."""
    return all(f in row for f in FLAT_FIELDS) and "replies" not in row and "prompt" not in row


def _unusable(msg: dict, langs: set[str] | None) -> str | None:
    """Why a message cannot be part of a conversation, or None."""
    if not isinstance(msg, dict) or msg.get("role") not in ROLES or not isinstance(msg.get("text"), str):
        return "bad_message"
    if msg.get("deleted"):
        return "deleted"
    if msg.get("review_result") is False:
        return "failed_review"
    if langs is not None and msg.get("lang") not in langs:
        return "lang"
    return None


def _usable(msg: dict, langs: set[str] | None) -> bool:
    return _unusable(msg, langs) is None


def _children(msg: dict, langs: set[str] | None) -> list[dict]:
    replies = msg.get("replies") or []
    return [r for r in replies if _usable(r, langs)] if isinstance(replies, list) else []


def _rank(msg: dict) -> tuple:
    rank = msg.get("rank")
    return (rank is None, rank if isinstance(rank, int | float) else 0, str(msg.get("message_id")))


def _paths(root: dict, mode: str, langs: set[str] | None) -> list[list[dict]]:
    paths, stack = [], [[root]]
    while stack:
        path = stack.pop()
        kids = _children(path[-1], langs)
        if mode == "best" and kids:
            kids = [min(kids, key=_rank)]
        if not kids:
            paths.append(path)
        # Reversed so paths come out in the tree's own order.
        stack.extend(path + [k] for k in reversed(kids))
    return paths


def _trim(path: list[dict]) -> list[dict]:
    while path and path[-1].get("role") != "assistant":
        path = path[:-1]
    return path


def convert(row: dict, mode: str = "best", langs: set[str] | None = None) -> list[Converted]:
    root = row.get("prompt") if "message_tree_id" in row else row
    if not isinstance(root, dict):
        raise Drop("wrong_type", "'prompt' is not an object")
    text_field(root, "text")
    if not _usable(root, langs):
        raise Drop("lang" if langs and root.get("lang") not in langs else "deleted_or_failed_review")
    tree_id = str(row.get("message_tree_id") or root.get("message_id"))
    out: list[Converted] = []
    seen: set[tuple] = set()
    for path in _paths(root, mode, langs):
        path = _trim(path)
        key = tuple(m.get("message_id") for m in path)
        if len(path) < 2 or key in seen:
            continue
        seen.add(key)
        msgs = [message(ROLES[m["role"]], m["text"]) for m in path]
        meta = {"tree_id": tree_id, "lang": path[-1].get("lang")}
        out.append((str(path[-1].get("message_id")), msgs, meta))
    if not out:
        raise Drop("no_assistant_reply")
    return out


# --- flat rows: one message per row, in any order, across files ---------------------------------


class Trees:
    """Flat rows gathered by tree in an on-disk SQLite table, then handed back one tree at a time,
    trees in the order their first row came: memory holds the largest tree, not the input."""

    def __init__(self, folder: Path):
        self.path = folder / "oasst_rows.sqlite"
        self.db = sqlite3.connect(self.path)
        self.db.execute("CREATE TABLE rows (seq INTEGER PRIMARY KEY, tree TEXT, at BLOB, row BLOB)")
        self.n = 0

    def add(self, where: dict, row: dict) -> None:
        tree = row.get("message_tree_id")
        self.db.execute(
            "INSERT INTO rows VALUES (?, ?, ?, ?)",
            (self.n, str(tree), orjson.dumps(where), orjson.dumps(row)),
        )
        self.n += 1

    def __iter__(self) -> Iterator[list[tuple[dict, dict]]]:
        self.db.execute("CREATE INDEX by_tree ON rows (tree, seq)")
        order = self.db.execute("SELECT tree FROM rows GROUP BY tree ORDER BY MIN(seq)").fetchall()
        for (tree,) in order:
            got = self.db.execute("SELECT at, row FROM rows WHERE tree = ? ORDER BY seq", (tree,))
            yield [(orjson.loads(at), orjson.loads(row)) for at, row in got]

    def close(self) -> None:
        self.db.close()
        self.path.unlink()


def _links(rows: list[dict]) -> tuple[dict[str, int], dict[int, str], list[int], dict[int, list[int]]]:
    """Index rows by message id: (id -> row, row -> drop reason, roots, row -> child rows)."""
    by_id: dict[str, int] = {}
    fate: dict[int, str] = {}
    for k, row in enumerate(rows):
        mid = row.get("message_id")
        if not isinstance(mid, str) or not mid:
            fate[k] = "bad_message"
        elif mid in by_id:
            fate[k] = "duplicate_message"
        else:
            by_id[mid] = k
    roots, kids = [], defaultdict(list)
    for k in by_id.values():
        parent = rows[k].get("parent_id")
        if parent is None:
            roots.append(k)
        elif parent in by_id:
            kids[by_id[parent]].append(k)
    return by_id, fate, roots, kids


def _unreached(rows: list[dict], by_id: dict[str, int], k: int) -> str:
    """Why a row is on no root's tree: an ancestor is missing (`orphan`) or the parents loop (`cycle`)."""
    seen = {k}
    while True:
        parent = rows[k].get("parent_id")
        if parent not in by_id:
            return "orphan"
        k = by_id[parent]
        if k in seen:
            return "cycle"
        seen.add(k)


def _nest(rows: list[dict], root: int, kids: dict[int, list[int]]) -> tuple[dict[int, dict], list[int]]:
    """Every message under `root` as a nested message (`replies`), by row; and the rows, parents first."""
    order, i = [root], 0
    while i < len(order):
        order.extend(kids.get(order[i], ()))
        i += 1
    nodes = {k: {**rows[k], "replies": []} for k in order}
    for k in order:
        nodes[k]["replies"] = [nodes[c] for c in kids.get(k, ())]
    return nodes, order


def _fates(nodes: dict[int, dict], order: list[int], kids: dict[int, list[int]], langs, fate: dict) -> None:
    """A reason for each message that cannot be used, and `below_dropped` for all under it."""
    for k in order:
        if k in fate:
            fate.update((c, "below_dropped") for c in kids.get(k, ()))
            continue
        why = _unusable(nodes[k], langs)
        if why is not None:
            fate[k] = why
            fate.update((c, "below_dropped") for c in kids.get(k, ()))


def resolve(rows: list[dict], mode: str, langs: set[str] | None) -> tuple[list[Converted], dict[int, str]]:
    """One tree's flat rows -> its conversations, and a reason for every row that ends none.

    Reasons: bad_message, duplicate_message, orphan, cycle, deleted, failed_review, lang,
    below_dropped (under a message dropped for one of those), no_assistant_reply (a root nobody
    answered), oasst.context (a turn inside a kept conversation), oasst.not_selected (on no kept
    path: a lower-ranked branch under `best`, or a prompter leaf)."""
    by_id, fate, roots, kids = _links(rows)
    out: list[Converted] = []
    reached: set[int] = set()
    for root in roots:
        nodes, order = _nest(rows, root, kids)
        reached.update(order)
        _fates(nodes, order, kids, langs, fate)
        if root in fate:
            continue
        row_of = {id(n): k for k, n in nodes.items()}
        kept, seen = [], set()
        for path in map(_trim, _paths(nodes[root], mode, langs)):
            key = tuple(row_of[id(m)] for m in path)
            if len(path) >= 2 and key not in seen:
                seen.add(key)
                kept.append(path)
        ends = {row_of[id(p[-1])] for p in kept}
        inside = {row_of[id(m)] for p in kept for m in p}
        for k in order:
            if k not in fate and k not in ends:
                fate[k] = "oasst.context" if k in inside else "oasst.not_selected"
        if not kept:
            fate[root] = "no_assistant_reply"
        tree_id = str(rows[root].get("message_tree_id") or rows[root]["message_id"])
        for path in kept:
            msgs = [message(ROLES[m["role"]], m["text"]) for m in path]
            meta = {"tree_id": tree_id, "lang": path[-1].get("lang")}
            out.append((str(path[-1]["message_id"]), msgs, meta))
    for k in by_id.values():
        if k not in reached:
            fate[k] = _unreached(rows, by_id, k)
    return out, fate
