"""OpenAssistant (OASST1) message trees, in tree form (`message_tree_id` + `prompt`) or as a nested
root message (`message_id` + `replies`). Flattened into conversations: `best` follows the
best-ranked reply at each level, `all` yields every root-to-leaf path; deleted messages and messages
that failed review are skipped, with everything below them. A path ends on an assistant turn.
"""

from sftpipe.core.records import Role, message
from sftpipe.io.schemas.base import Converted, Drop, text_field

FIELDS = ("message_id", "replies")
ROLES: dict[str, Role] = {"prompter": "user", "assistant": "assistant"}


def _usable(msg: dict, langs: set[str] | None) -> bool:
    if not isinstance(msg, dict) or msg.get("deleted") or msg.get("review_result") is False:
        return False
    if msg.get("role") not in ROLES or not isinstance(msg.get("text"), str):
        return False
    return langs is None or msg.get("lang") in langs


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
