"""OpenAI chat `messages`: a list of `{role, content}`; content may be a string or a list of text parts."""

from typing import cast

from sftpipe.core.records import ROLES, Message, Role, message
from sftpipe.io.schemas.base import Converted, Drop, list_field, orig_id, provenance

FIELDS = ("messages",)
ALIASES = {"developer": "system", "function": "tool"}


def _content(value, i: int) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        if any(p.get("type", "text") != "text" for p in value):
            raise Drop("non_text_content", f"message {i} has non-text parts")
        return "".join(str(p.get("text", "")) for p in value)
    raise Drop("wrong_type", f"message {i} content is {type(value).__name__}")


def convert_messages(msgs: list, role_key: str = "role", content_key: str = "content") -> list[Message]:
    out: list[Message] = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise Drop("wrong_type", f"message {i} is {type(m).__name__}, expected an object")
        raw = m.get(role_key)
        role = ALIASES.get(raw, raw) if raw is not None else None
        if role not in ROLES:
            raise Drop("unknown_role", f"message {i} has role {role!r}")
        out.append(message(cast(Role, role), _content(m.get(content_key), i)))
    if not out:
        raise Drop("empty_conversation")
    return out


def convert(row: dict) -> list[Converted]:
    return [(orig_id(row), convert_messages(list_field(row, "messages")), provenance(row))]
