"""Text normalization that leaves fenced code blocks byte for byte as they were.

Prose is NFC-normalized, stripped of control and invisible characters, given `\\n` line endings,
trimmed, and runs of blank lines are collapsed to one. Inside ``` or ~~~ fences nothing changes:
indentation, trailing spaces and blank lines are meaning in code (Python, YAML, Makefiles, diffs).
"""

from __future__ import annotations

import re
import unicodedata

# Control characters except \t and \n (\r is handled as a line ending), plus invisible code points
# that only break tokenization and matching: zero-width space, word joiner, BOM, Mongolian vowel
# separator. ZWJ/ZWNJ (U+200C/U+200D) stay: they shape emoji sequences and Persian/Indic script.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2060\ufeff\u180e]")
_CR = re.compile(r"\r\n?")
# Three or more line breaks with nothing but spaces/tabs between them: one blank line is enough.
_BLANKS = re.compile(r"\n(?:[ \t]*\n){2,}")


def _line_start(text: str, i: int) -> int | None:
    """Start of the line holding `i` if only spaces/tabs precede `i` on it, else None."""
    start = text.rfind("\n", 0, i) + 1
    return start if not text[start:i].strip(" \t") else None


def _run_end(text: str, i: int) -> int:
    """End of the run of the character at `i`."""
    c, n = text[i], len(text)
    while i < n and text[i] == c:
        i += 1
    return i


def _line_end(text: str, i: int) -> int:
    end = text.find("\n", i)
    return len(text) if end < 0 else end


def _opening(text: str, pos: int, markers: tuple[str, ...]) -> tuple[int, str, int] | None:
    """The next opening fence at or after `pos`: (line start, fence, line end)."""
    while True:
        i = min((k for k in (text.find(m, pos) for m in markers) if k >= 0), default=-1)
        if i < 0:
            return None
        j = _run_end(text, i)
        start, end = _line_start(text, i), _line_end(text, j)
        # Backticks in the info string make it inline code such as ```x```, not a fence.
        if start is not None and not (text[i] == "`" and "`" in text[j:end]):
            return start, text[i:j], end
        pos = j


def _closing(text: str, fence: str, pos: int) -> int:
    """End of the line closing `fence` (same character, at least as long, nothing else on the
    line), searching from `pos`; the end of the text when the block is never closed."""
    while True:
        i = text.find(fence, pos)
        if i < 0:
            return len(text)
        j = _run_end(text, i)
        end = _line_end(text, j)
        if _line_start(text, i) is not None and not text[j:end].strip(" \t\r"):
            return end
        pos = j


def split_code(text: str) -> list[tuple[bool, str]]:
    """`text` as `(is_code, part)` pieces that join back to it; a code piece runs from its opening
    fence line to the end of its closing fence line (or to the end of the text when unclosed).

    Fences follow CommonMark (3+ backticks or tildes, closed by a line of at least as many of the
    same), except that any indentation is allowed: ChatGPT nests fences deep in list items, and
    reading more as code only ever protects more text.
    """
    # One-character checks first: they are several times faster than looking for three.
    markers = tuple(m for m in ("```", "~~~") if m[0] in text and m in text)
    if not markers:
        return [(False, text)]
    parts: list[tuple[bool, str]] = []
    pos = 0
    while pos < len(text) and (fence := _opening(text, pos, markers)):
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
