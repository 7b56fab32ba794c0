"""PII redaction: emails, phone numbers, API-key-like secrets and public IP addresses become
placeholders (`<EMAIL>`, `<PHONE>`, `<API_KEY>`, `<IP>`); nothing is dropped.

Regexes, not an NER model: their misses and false hits are predictable, and they are fast. One
RE2 pass (a linear-time automaton) over a text's UTF-8 bytes looks for anything that could be PII;
only the few texts it flags (~4% of ShareGPT turns) run the exact Python patterns, whose
lookarounds RE2 lacks. Matches that need it are checked further (IPs with `ipaddress`, base64-like
tokens for a random-looking mix of characters), so version numbers, loopback/private/
documentation addresses and long identifiers in code stay as they are.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable

import re2

KINDS = ("api_key", "email", "ip", "phone")
PLACEHOLDER = {"api_key": "<API_KEY>", "email": "<EMAIL>", "ip": "<IP>", "phone": "<PHONE>"}

_API_KEY = re.compile(
    r"""(?<![\w-])(?:
        sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}    # OpenAI / Anthropic
      | AKIA[0-9A-Z]{16}                         # AWS access key id
      | (?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})  # GitHub
      | xox[abprs]-[A-Za-z0-9-]{10,}             # Slack
      | AIza[0-9A-Za-z_-]{35}                    # Google
      | hf_[A-Za-z0-9]{30,}                      # Hugging Face
      | [0-9a-fA-F]{32,}                         # long hex secrets (and digests)
      | [A-Za-z0-9+/_-]{40,}={0,2}               # base64-like tokens, checked in _api_key
    )(?![\w-])""",
    re.X,
)
_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
_IPV4 = re.compile(r"(?<![\w.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?!\w|\.[0-9])")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")
_PHONE = re.compile(
    r"""(?<![\w+.-])(?:
        \+[0-9]{1,3}(?:[ .-]?\(?[0-9]{1,4}\)?){2,5}           # international, with a leading +
      | (?:\([0-9]{3}\)[ ]?|[0-9]{3}[-. ])[0-9]{3}[-. ][0-9]{4}  # North American, with separators
    )(?![\w-]|\.[0-9])""",
    re.X,
)
# Per kind, an RE2 pattern matching wherever the exact pattern could (a superset: no lookarounds).
_CANDIDATE = {
    "api_key": r"sk-|AKIA|gh[pousr]_|github_pat_|xox[abprs]-|AIza|hf_|[0-9a-fA-F]{32}|[A-Za-z0-9+/_-]{40}",
    "email": r"@[A-Za-z0-9-]+\.",
    "ip": r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}",
    "phone": r"\+[0-9]|\([0-9]{3}\) ?[0-9]{3}[-. ][0-9]{4}|[0-9]{3}[-. ][0-9]{3}[-. ][0-9]{4}",
}
_KNOWN_PREFIX = ("sk-", "AKIA", "gh", "github_pat_", "xox", "AIza", "hf_")


_PIECES = re.compile(r"[/+_-]")


def _api_key(m: re.Match) -> str | None:
    tok = m.group(0)
    if tok.startswith(_KNOWN_PREFIX) or all(c in "0123456789abcdefABCDEF" for c in tok):
        return PLACEHOLDER["api_key"]
    # Base64-like: random strings mix cases and digits; identifiers rarely have 4+ digits.
    digits = sum(c.isdigit() for c in tok)
    if digits < 4 or not any(c.islower() for c in tok) or not any(c.isupper() for c in tok):
        return None
    # URL paths and slugs (uploads/2021/07/Measure-What-Matters) are mostly words; random base64
    # rarely has an all-letter piece between separators, and then not one cased like a word.
    in_words = sum(len(p) for p in _PIECES.split(tok) if _wordlike(p))
    # Alphabets ("ABC...XYZabc...xyz0123456789", for random-string code) are not secrets.
    steps = sum(ord(b) - ord(a) == 1 for a, b in zip(tok, tok[1:], strict=False))
    return None if 2 * in_words >= len(tok) or 2 * steps >= len(tok) else PLACEHOLDER["api_key"]


def _wordlike(piece: str) -> bool:
    if len(piece) < 3 or not piece.isalpha():
        return False
    return piece.islower() or piece.isupper() or sum(c.isupper() for c in piece) <= len(piece) // 4


def _ip(m: re.Match) -> str | None:
    try:
        addr = ipaddress.ip_address(m.group(0))
    except ValueError:
        return None
    # Only public addresses point at someone; loopback, private and documentation ranges are
    # the stuff of tutorials and configs.
    return PLACEHOLDER["ip"] if addr.is_global else None


def _phone(m: re.Match) -> str | None:
    digits = sum(c.isdigit() for c in m.group(0))
    return PLACEHOLDER["phone"] if 8 <= digits <= 15 else None


# kind -> (cheap precondition, pattern, replacement or None to keep the match)
_RULES: dict[str, list[tuple[Callable[[str], bool], re.Pattern, Callable[[re.Match], str | None]]]] = {
    "api_key": [(lambda s: True, _API_KEY, _api_key)],
    "email": [(lambda s: "@" in s, _EMAIL, lambda m: PLACEHOLDER["email"])],
    "ip": [(lambda s: "." in s, _IPV4, _ip), (lambda s: "::" in s or s.count(":") >= 2, _IPV6, _ip)],
    "phone": [(lambda s: True, _PHONE, _phone)],
}


class Redactor:
    """Replaces the chosen kinds of PII, in the fixed order of KINDS (keys before the hex and
    digit runs inside them could be read as something else)."""

    def __init__(self, kinds: Iterable[str] = KINDS, prefilter: bool = True):
        """`prefilter=False` runs the exact patterns on every text (same output, slower)."""
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown PII kinds {sorted(unknown)}; known: {list(KINDS)}")
        self.rules = [(k, rule) for k in KINDS if k in set(kinds) for rule in _RULES[k]]
        options = re2.Options()
        options.log_errors = False
        candidates = "|".join(f"(?:{_CANDIDATE[k]})" for k in KINDS if k in set(kinds))
        self._maybe = re2.compile(candidates.encode(), options) if candidates and prefilter else None

    def __call__(self, text: str) -> tuple[str, Counter]:
        """Redacted `text` and the number of replacements per kind."""
        counts: Counter[str] = Counter()
        if self._maybe is not None and not self._maybe.search(text.encode("utf-8", "surrogatepass")):
            return text, counts
        for kind, (cheap, pattern, replace) in self.rules:
            if not cheap(text):
                continue

            def sub(m: re.Match, kind=kind, replace=replace) -> str:
                new = replace(m)
                if new is None:
                    return m.group(0)
                counts[kind] += 1
                return new

            text = pattern.sub(sub, text)
        return text, counts
