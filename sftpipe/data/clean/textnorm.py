"""Text normalization that leaves fenced code blocks byte for byte as they were.

Prose is NFC-normalized, stripped of control and invisible characters, given `\\n` line endings,
trimmed, and runs of blank lines are collapsed to one. Inside ``` or ~~~ fences nothing changes:
indentation, trailing spaces and blank lines are meaning in code (Python, YAML, Makefiles, diffs).
"""

from __future__ import annotations

import functools
import re
import unicodedata

# Control characters except \t and \n (\r is handled as a line ending), plus invisible code points
# that only break tokenization and matching: zero-width space, word joiner, BOM, Mongolian vowel
# separator. ZWJ/ZWNJ (U+200C/U+200D) stay: they shape emoji sequences and Persian/Indic script.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2060\ufeff\u180e]")
_CR = re.compile(r"\r\n?")
# Three or more line breaks with nothing but spaces/tabs between them: one blank line is enough.
_BLANKS = re.compile(r"\n(?:[ \t]*\n){2,}")


# A fence opens on a line whose first non-blank characters are 3+ backticks or tildes. Both
# patterns are anchored at line starts and read each line at most once, so finding every fence is
# linear in the text (searching for each backtick run and then scanning back and forth to its
# line's ends was quadratic on a line full of inline ```x``` runs: hours for one 50 MB turn).
_OPENING = re.compile(r"^[ \t]*(`{3,}|~{3,})([^\n]*)", re.M)


@functools.lru_cache(maxsize=64)
def _closing_pattern(fence: str) -> re.Pattern[str]:
    """A line closing `fence`: the same character at least as many times, nothing else but
    spaces, tabs (and a stray \\r) on the line."""
    return re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t\r]*$", re.M)


def _opening(text: str, pos: int) -> tuple[int, str, int] | None:
    """The next opening fence at or after `pos`: (line start, fence, line end)."""
    for m in _OPENING.finditer(text, pos):
        # Backticks in the info string make it inline code such as ```x```, not a fence.
        if not (m.group(1)[0] == "`" and "`" in m.group(2)):
            return m.start(), m.group(1), m.end()
    return None


def _closing(text: str, fence: str, pos: int) -> int:
    """End of the line closing `fence`, searching from `pos` (a line start); the end of the text
    when the block is never closed."""
    m = _closing_pattern(fence).search(text, pos)
    return m.end() if m else len(text)


def split_code(text: str) -> list[tuple[bool, str]]:
    """`text` as `(is_code, part)` pieces that join back to it; a code piece runs from its opening
    fence line to the end of its closing fence line (or to the end of the text when unclosed).

    Fences follow CommonMark (3+ backticks or tildes, closed by a line of at least as many of the
    same), except that any indentation is allowed: ChatGPT nests fences deep in list items, and
    reading more as code only ever protects more text.
    """
    # One-character checks first: they are several times faster than looking for three.
    if not any(m[0] in text and m in text for m in ("```", "~~~")):
        return [(False, text)]
    parts: list[tuple[bool, str]] = []
    pos = 0
    while pos < len(text) and (fence := _opening(text, pos)):
        start, mark, line_end = fence
        end = _closing(text, mark, line_end + 1) if line_end < len(text) else len(text)
        if start > pos:
            parts.append((False, text[pos:start]))
        parts.append((True, text[start:end]))
        pos = end
    if pos < len(text):
        parts.append((False, text[pos:]))
    return parts


def prose(text: str) -> str:
    """Only the text outside code fences (for language detection)."""
    return "".join(part for is_code, part in split_code(text) if not is_code)


# The steps, in order; each name is what `normalize` reports as changed.
STEPS = ("line_endings", "control", "nfc", "blank_lines", "trim")


def _line_endings(s: str) -> str:
    return _CR.sub("\n", s) if "\r" in s else s


def _control(s: str) -> str:
    return _CONTROL.sub("", s)


def _nfc(s: str) -> str:
    return s if unicodedata.is_normalized("NFC", s) else unicodedata.normalize("NFC", s)


def _blank_lines(s: str) -> str:
    return _BLANKS.sub("\n\n", s)


_FUNCS = (_line_endings, _control, _nfc, _blank_lines)


def normalize(text: str) -> tuple[str, set[str]]:
    """Normalized `text` and the names of the steps that changed it."""
    if not (  # what any step could change: most texts have none of it, and skip the steps
        "\r" in text
        or text[:1].isspace()
        or text[-1:].isspace()
        or _CONTROL.search(text)
        or _BLANKS.search(text)  # separate searches: an alternation of them scans ~5x slower
        or not unicodedata.is_normalized("NFC", text)
    ):
        return text, set()
    parts = split_code(text)
    changed: set[str] = set()
    for name, func in zip(STEPS, _FUNCS, strict=False):
        for i, (is_code, part) in enumerate(parts):
            if not is_code:
                new = func(part)
                if new != part:
                    parts[i] = (False, new)
                    changed.add(name)
    # Trim only prose ends: whitespace closing an unclosed code block belongs to the code.
    if parts and not parts[0][0] and parts[0][1] != parts[0][1].lstrip():
        parts[0] = (False, parts[0][1].lstrip())
        changed.add("trim")
    if parts and not parts[-1][0] and parts[-1][1] != parts[-1][1].rstrip():
        parts[-1] = (False, parts[-1][1].rstrip())
        changed.add("trim")
    return "".join(part for _, part in parts), changed
