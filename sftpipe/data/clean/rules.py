"""clean: named rules, applied in a fixed order, that normalize conversations and drop junk.

    status -> text -> empties -> roles -> lengths -> boilerplate -> lang -> pii

Each rule can be switched off in params. A rule either keeps a record (possibly changed; counted
once per record and change under `changed`, e.g. `text.nfc`, `roles.merged`) or drops it with a
reason (`status`, `roles.late_system`, `boilerplate`, ...) that goes to `reports/clean.json` and,
with the untouched input record, to `rejected.jsonl`. The order is fixed because rules build on
each other: empty turns go before roles are fixed, lengths are measured on merged turns, PII is
redacted only in what survives.

Tool calling and reasoning: an assistant turn that only calls a function is not empty; a tool
result (even an empty one) is kept, and must answer a call of the assistant turn before it
(`roles.tool_without_call` otherwise); merged assistant turns keep every call and trace; text
normalization, lengths and PII cover reasoning too, and lengths count a turn's calls; PII and
boilerplate see the string values of a call's arguments (PII is replaced there, and counted, as in
text; the arguments stay a JSON object of the same shape).
"""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Literal

import orjson
import re2
from pydantic import Field, field_validator, model_validator

from sftpipe.core.accounting import Tally
from sftpipe.core.config import Section
from sftpipe.core.engine import Engine, Part, ordered_map, split_lines
from sftpipe.core.errors import SftpipeError
from sftpipe.core.jsonio import JsonlWriter, atomic_path, dumps, loads
from sftpipe.core.progress import bar
from sftpipe.core.records import Drop, has_output, turn_text
from sftpipe.data.clean.pii import KINDS, Redactor
from sftpipe.data.clean.textnorm import normalize, prose

# `lengths` also runs on the raw turns, right after `status`, at this many times its limits.
RAW_SLACK = 4

RULES = ("status", "text", "empties", "roles", "lengths", "boilerplate", "lang", "pii")

BOILERPLATE = [
    r"\bas an ai language model\b",
    r"\bas a language model\b",
    r"\bas an ai(?: assistant| model)?,? i (?:do not|don['’]t|cannot|can['’]t|am not able|am unable)\b",
    r"\bi['’]m sorry,? but i (?:cannot|can['’]t|am not able|am unable|won['’]t)\b",
    r"\bi (?:cannot|can['’]t|am unable to) (?:fulfill|comply with|assist with|help with) (?:this|that|your) request\b",
    r"\bi (?:do not|don['’]t) have (?:personal )?(?:opinions|feelings|emotions|beliefs|preferences)\b",
    r"\bmy (?:knowledge|training data) (?:cutoff|cut-off)\b",
    r"\bopenai['’]s (?:content|use case|usage) polic",
]


class CleanError(SftpipeError, ValueError):
    """A clean input is missing (its ingest has not run); one line naming the file."""


class LangParams(Section):
    enabled: bool = False
    """Drop conversations whose language is not in `allowed`."""
    allowed: list[str] = ["en"]
    """ISO 639-1 codes as langdetect reports them ("en", "de", "zh-cn"; "zh" allows every zh-*)."""
    max_chars: int = 1000
    """Detect on at most this many characters of user+assistant prose (code fences removed)."""
    min_chars: int = 20
    """Shorter prose has no reliable language: kept, and meta.lang is not set."""


class PiiParams(Section):
    enabled: bool = False
    """Replace PII with placeholders (<EMAIL>, <PHONE>, <API_KEY>, <IP>); never drops."""
    kinds: list[Literal[KINDS]] = list(KINDS)  # type: ignore[valid-type]
    """Which kinds to redact: api_key, email, ip, phone."""


class CleanParams(Section):
    """The `clean` section: each rule's switch followed by its knobs."""

    status: bool = True
    """Drop records whose meta.status exists and is not in `keep_status`."""
    keep_status: list[str] = ["ok"]
    """meta.status values kept (alpaca-libre marks rejected generations with other values)."""
    text: bool = True
    """NFC, strip control/zero-width characters, \\n line endings, trim, collapse blank lines
    (prose only: fenced code blocks stay byte for byte)."""
    empties: bool = True
    """Drop empty (whitespace-only) turns, and conversations left with none."""
    roles: bool = True
    """Fix turn order: merge or drop same-role runs, system only first, cut a leading assistant
    and trailing user turns, require a user and an assistant turn."""
    consecutive: Literal["merge", "drop"] = "merge"
    """Consecutive turns of one role: join them with a blank line, or drop the conversation."""
    lengths: bool = True
    """Drop conversations with a turn or a total outside the limits below (characters)."""
    min_turn_chars: Annotated[int, Field(ge=0)] = 1
    """Shortest turn kept, in characters."""
    max_turn_chars: Annotated[int, Field(ge=1)] | None = 50_000
    """Longest turn kept, in characters; null for no limit."""
    min_conversation_chars: Annotated[int, Field(ge=0)] = 1
    """Shortest conversation (all turns together) kept, in characters."""
    max_conversation_chars: Annotated[int, Field(ge=1)] | None = 200_000
    """Longest conversation kept, in characters; null for no limit."""
    boilerplate: bool = True
    """Drop conversations with an assistant turn matching one of `boilerplate_patterns`."""
    boilerplate_patterns: list[str] = BOILERPLATE
    """Case-insensitive regexes (Python syntax; run by RE2 when it can) for refusals and model
    self-talk, searched in assistant turns (their text and their calls' argument strings)."""
    lang: LangParams = LangParams()
    pii: PiiParams = PiiParams()

    @field_validator("boilerplate_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"pattern {p!r} is not a valid regex: {exc}") from None
        return patterns

    @model_validator(mode="after")
    def _limits(self) -> CleanParams:
        for lo, hi in (
            ("min_turn_chars", "max_turn_chars"),
            ("min_conversation_chars", "max_conversation_chars"),
        ):
            if getattr(self, hi) is not None and getattr(self, hi) < getattr(self, lo):
                raise ValueError(f"{hi}: must be at least {lo} ({getattr(self, lo)})")
        return self


# What one record's pass produced: (cleaned record or None, drop reason or None, detail).
Result = tuple[dict | None, str | None, str]


class Cleaner:
    """The enabled rules, compiled once; call it on a record, or `chunk` on a list of records."""

    def __init__(self, params: CleanParams):
        self.p = params
        on = {name: getattr(params, name) for name in RULES[:6]}
        on["lang"], on["pii"] = params.lang.enabled, params.pii.enabled
        self.rules = [getattr(self, f"_{name}") for name in RULES if on[name]]
        if on["lengths"]:  # the cheap bound first: a 50 MB turn never reaches the text rules
            self.rules.insert(1 if on["status"] else 0, self._lengths_raw)
        self._boiler = _any_of(params.boilerplate_patterns)
        self._redact = Redactor(params.pii.kinds) if params.pii.enabled else None
        self._detector = _detector_factory() if params.lang.enabled else None

    def __call__(self, record: dict, changes: set[str], replaced: Counter) -> Result:
        msgs, meta = record["messages"], record.get("meta") or {}
        new_meta = dict(meta)
        try:
            for rule in self.rules:
                msgs = rule(msgs, new_meta, changes, replaced)
        except Drop as drop:
            return None, drop.reason, drop.detail
        if msgs is record["messages"] and new_meta == meta:
            return record, None, ""
        return {**record, "messages": msgs, "meta": new_meta}, None, ""

    def chunk(self, records: list[dict]) -> tuple[list[Result], Counter, Counter]:
        """Results in input order, plus the changes of the kept records and PII replacements."""
        results: list[Result] = []
        changed: Counter[str] = Counter()
        replaced: Counter[str] = Counter()
        for record in records:
            changes: set[str] = set()
            rec_replaced: Counter[str] = Counter()
            result = self(record, changes, rec_replaced)
            if result[0] is not None:
                changed.update(changes)
                replaced.update(rec_replaced)
            results.append(result)
        return results, changed, replaced

    # --- the rules: (messages, meta, changes, replaced) -> messages, or raise Drop ---

    def _status(self, msgs, meta, changes, replaced):
        status = meta.get("status")
        if status is not None and status not in self.p.keep_status:
            raise Drop("status", f"status {status!r}")
        return msgs

    def _text(self, msgs, meta, changes, replaced):
        out = msgs
        for i, m in enumerate(msgs):
            for key in ("content", "reasoning") if "reasoning" in m else ("content",):
                text, steps = normalize(out[i][key])
                if steps:
                    if out is msgs:
                        out = list(msgs)
                    out[i] = {**out[i], key: text}
                    changes.update(f"text.{s}" for s in steps)
        return out

    def _empties(self, msgs, meta, changes, replaced):
        # A tool result is kept even when empty: it answers a call, and "" is an answer.
        kept = [m for m in msgs if has_output(m) or m["role"] == "tool"]
        if any(m.get("reasoning") for m in msgs if not (has_output(m) or m["role"] == "tool")):
            changes.add("empties.reasoning_only")  # a trace with no answer or call after it
        if not any(has_output(m) for m in kept):
            kept = []
        if not kept:
            raise Drop("empties.conversation", f"{len(msgs)} turns, all empty")
        if len(kept) < len(msgs):
            changes.add("empties.turns")
            return kept
        return msgs

    def _roles(self, msgs, meta, changes, replaced):
        out: list[dict] = []
        for i, m in enumerate(msgs):
            # Tool results in a row are separate calls' outputs, not one message split in two.
            if out and out[-1]["role"] == m["role"] and m["role"] != "tool":
                if self.p.consecutive == "drop":
                    raise Drop("roles.consecutive", f"turns {i - 1} and {i} are both {m['role']}")
                out[-1] = _merge(out[-1], m)
                changes.add("roles.merged")
            else:
                out.append(m)
        if any(m["role"] == "system" for m in out[1:]):
            raise Drop("roles.late_system", "a system turn after the first turn")
        is_text = meta.get("kind") == "text"  # a plain-text record is one assistant turn
        if not is_text:
            start = 1 if out and out[0]["role"] == "system" else 0
            k = start
            while k < len(out) and out[k]["role"] in ("assistant", "tool"):
                k += 1
            if k > start:
                out = out[:start] + out[k:]
                changes.add("roles.leading_assistant")
        last = max((i for i, m in enumerate(out) if m["role"] == "assistant"), default=-1)
        if 0 <= last < len(out) - 1:
            out = out[: last + 1]
            changes.add("roles.trailing_user")
        roles = {m["role"] for m in out}
        if "assistant" not in roles or not (is_text or "user" in roles):
            raise Drop("roles.no_exchange", f"roles left: {[m['role'] for m in out]}")
        if "tool" in roles:
            _check_results(out)
        return out if out != msgs else msgs

    def _lengths(self, msgs, meta, changes, replaced):
        p = self.p
        total = 0
        for i, m in enumerate(msgs):
            n = len(turn_text(m))
            total += n
            if n < p.min_turn_chars and m["role"] != "tool":
                raise Drop("lengths.turn_short", f"turn {i} ({m['role']}): {n} < {p.min_turn_chars} chars")
            if p.max_turn_chars is not None and n > p.max_turn_chars:
                raise Drop("lengths.turn_long", f"turn {i} ({m['role']}): {n} > {p.max_turn_chars} chars")
        if total < p.min_conversation_chars:
            raise Drop("lengths.conversation_short", f"{total} < {p.min_conversation_chars} chars")
        if p.max_conversation_chars is not None and total > p.max_conversation_chars:
            raise Drop("lengths.conversation_long", f"{total} > {p.max_conversation_chars} chars")
        return msgs

    def _lengths_raw(self, msgs, meta, changes, replaced):
        """`lengths` on the raw turns, with limits `RAW_SLACK` times wider: normalization grows a
        turn at most 3x (NFC) and shrinks it only by what it strips, so this drops, before any
        costly rule runs, only what is hopelessly over the limit, with the same reason."""
        p = self.p
        turn_cap = p.max_turn_chars * RAW_SLACK if p.max_turn_chars is not None else None
        conv_cap = p.max_conversation_chars * RAW_SLACK if p.max_conversation_chars is not None else None
        total = 0
        for i, m in enumerate(msgs):
            n = len(m["content"])
            total += n
            if turn_cap is not None and n > turn_cap:
                raise Drop("lengths.turn_long", f"turn {i} ({m['role']}): {n} > {p.max_turn_chars} chars")
        if conv_cap is not None and total > conv_cap:
            raise Drop("lengths.conversation_long", f"{total} > {p.max_conversation_chars} chars")
        return msgs

    def _boilerplate(self, msgs, meta, changes, replaced):
        if self._boiler is None:
            return msgs
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            hit = self._boiler.search(m["content"])
            if hit:
                raise Drop("boilerplate", f"turn {i}: {hit.group(0)!r}")
            # A refusal written into a call (a message to send, a note to file) is the same junk.
            for text in _strings([c["function"].get("arguments") for c in m.get("tool_calls", ())]):
                if hit := self._boiler.search(text):
                    raise Drop("boilerplate", f"turn {i} tool call arguments: {hit.group(0)!r}")
        return msgs

    def _lang(self, msgs, meta, changes, replaced):
        lang = meta.get("lang")
        if not isinstance(lang, str) or not lang:
            lang = self._detect(msgs)
            if lang is None:
                return msgs
            meta["lang"] = lang
            changes.add("lang.detected")
        allowed = self.p.lang.allowed
        if lang not in allowed and lang.split("-")[0] not in allowed:
            raise Drop("lang", f"language {lang!r}")
        return msgs

    def _detect(self, msgs) -> str | None:
        from langdetect.lang_detect_exception import LangDetectException

        cap = self.p.lang.max_chars
        parts, size = [], 0
        for m in msgs:
            if m["role"] in ("user", "assistant") and size < cap:
                parts.append(prose(m["content"]))
                size += len(parts[-1]) + 1
        text = "\n".join(parts)[:cap]
        if len(text.strip()) < self.p.lang.min_chars:
            return None
        assert self._detector is not None  # built when the lang rule is on, and only that rule calls here
        detector = self._detector.create()
        detector.append(text)
        try:
            return detector.detect()
        except LangDetectException:  # no letters to go on (numbers, symbols)
            return None

    def _pii(self, msgs, meta, changes, replaced):
        out = msgs
        for i, m in enumerate(msgs):
            new: dict = {}
            found: Counter[str] = Counter()
            for key in ("content", "reasoning") if "reasoning" in m else ("content",):
                text, counts = self._redact(m[key])
                if counts:
                    new[key] = text
                    found.update(counts)
            if m.get("tool_calls"):
                calls, counts = self._redact_calls(m["tool_calls"])
                if counts:
                    new["tool_calls"] = calls
                    found.update(counts)
            if found:
                if out is msgs:
                    out = list(msgs)
                out[i] = {**m, **new}
                replaced.update(found)
                changes.update(f"pii.{k}" for k in found)
        return out

    def _redact_calls(self, calls: list[dict]) -> tuple[list[dict], Counter]:
        """The calls with PII replaced in every string value of their arguments (keys are the
        function's parameter names, not data), and the replacements per kind."""
        assert self._redact is not None  # built when the pii rule is on, and only that rule calls here
        redact, counts = self._redact, Counter[str]()

        def one(text: str) -> str:
            text, n = redact(text)
            counts.update(n)
            return text

        out = [
            {
                **c,
                "function": {**c["function"], "arguments": _map_strings(c["function"].get("arguments"), one)},
            }
            for c in calls
        ]
        return out, counts


def _merge(a: dict, b: dict) -> dict:
    """Two turns of one role as one: contents and traces joined by a blank line, calls in order."""
    if a.get("tool_calls") or b.get("tool_calls"):  # a call-only turn adds no blank line
        content = "\n\n".join(c for c in (a["content"], b["content"]) if c)
    else:
        content = a["content"] + "\n\n" + b["content"]
    merged = {**a, **b, "content": content}
    traces = [t for t in (a.get("reasoning"), b.get("reasoning")) if t]
    if traces:
        merged["reasoning"] = "\n\n".join(traces)
    calls = [*a.get("tool_calls", ()), *b.get("tool_calls", ())]
    if calls:
        merged["tool_calls"] = calls
    return merged


def _strings(value: object) -> Iterator[str]:
    """Every string value in a JSON value (object keys excluded), depth first."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict | list):
        for v in value.values() if isinstance(value, dict) else value:
            yield from _strings(v)


def _map_strings(value: object, fn: Callable[[str], str]) -> object:
    """`value` (a JSON value) with `fn` applied to each string value; keys and shape are kept."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return value


def _check_results(msgs: list[dict]) -> None:
    """Every tool result answers a call of the assistant turn before it (by id when it has one)."""
    calls: set[str] | None = None  # ids of the calls open for results; None: no call to answer
    for i, m in enumerate(msgs):
        if m["role"] == "assistant":
            calls = {c["id"] for c in m.get("tool_calls", ())} or None
        elif m["role"] == "tool":
            if calls is None or ("tool_call_id" in m and m["tool_call_id"] not in calls):
                raise Drop("roles.tool_without_call", f"turn {i} is a tool result that answers no call")
        else:
            calls = None


def _any_of(patterns: list[str]):
    """One case-insensitive regex matching any of `patterns`: RE2 when it can compile them (a
    linear-time automaton, ~10x faster than Python's backtracking on an alternation), else `re`
    (RE2 has no lookarounds or backreferences)."""
    if not patterns:
        return None
    joined = "|".join(f"(?:{p})" for p in patterns)
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False
    try:
        return re2.compile(joined, options)
    except re2.error:
        return re.compile(joined, re.I)


def _detector_factory():
    """langdetect with a fixed seed: its sampling is random, and outputs must not be."""
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.set_seed(0)
    return factory


# --- running over files, in order, on several processes or on Ray ---
#
# Workers read their own part of a file (sftpipe.core.engine) and hand back serialized lines: parsing
# and serializing are half of the work, and doing them in the main process (plus pickling dicts
# both ways) would cap the stage at one core. Lines are parsed and written with sftpipe.core.jsonio's
# options (`loads`, `dumps`), and written through JsonlWriter as orjson Fragments, so the bytes are
# exactly what read_jsonl -> JsonlWriter would give.

# A line's result: (cleaned line, or the input line when dropped; drop reason or None; detail;
# source).
LineResult = tuple[bytes, str | None, str, str]


def _clean_part(cleaner: Cleaner, part: Part) -> tuple[list[LineResult], Counter, Counter]:
    records, lines = [], []
    for lineno, line in part.lines():
        try:
            records.append(loads(line))
        except ValueError as exc:  # orjson.JSONDecodeError, as read_jsonl reports it
            raise CleanError(f"{part.path}:{lineno}: invalid JSON: {exc}") from None
        lines.append(line)
    results, changed, replaced = cleaner.chunk(records)
    out = [
        (dumps(rec) if rec is not None else line, reason, detail, original.get("source", "?"))
        for line, original, (rec, reason, detail) in zip(lines, records, results, strict=True)
    ]
    return out, changed, replaced


def input_files(ingest_dir: str | Path, names: Iterable[str], extra: Iterable[str | Path] = ()) -> list[Path]:
    """Every source's ingest output (sorted by name), then the `extra` files that exist."""
    files = []
    for name in sorted(names):
        path = Path(ingest_dir) / name / "records.jsonl"
        if not path.is_file():
            raise CleanError(f"{path}: missing; run `dvc repro ingest@{name}` first")
        files.append(path)
    for path in map(Path, extra):
        if path.is_file():
            files.append(path)
        else:
            print(f"clean: {path} does not exist; skipped", file=sys.stderr)
    return files


def clean(
    inputs: list[Path],
    out_dir: str | Path,
    params: CleanParams,
    workers: int = 1,
    chunk_size: int = 1024,
    engine: Engine = "local",
) -> tuple[Tally, dict]:
    """Clean every record of `inputs` (in order) into `out_dir`/{records,rejected}.jsonl.

    Returns the tally and the report's extra fields: inputs, per-source counts, PII replacements.
    The output does not depend on `workers`, `chunk_size` (lines per part) or `engine`.
    """
    parts = [p for path in inputs for p in split_lines(path, chunk_size)]
    per_source: dict[str, Tally] = defaultdict(Tally)
    replaced: Counter[str] = Counter()
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        with JsonlWriter(tmp / "records.jsonl") as out, JsonlWriter(tmp / "rejected.jsonl") as rejected:
            tally = Tally(rejected)
            progress = bar(desc="clean", unit=" rec", mininterval=1)
            results_by_part = ordered_map(
                _clean_part, parts, setup=Cleaner, setup_args=(params,), engine=engine, workers=workers
            )
            for results, changed, chunk_replaced in results_by_part:
                for line, reason, detail, source in results:
                    src = per_source[source]
                    tally.seen()
                    src.seen()
                    if reason is not None:
                        tally.drop(reason, orjson.Fragment(line), detail=detail)
                        src.drop(reason)
                    else:
                        out.write(orjson.Fragment(line))
                        tally.kept()
                        src.kept()
                for name, n in changed.items():
                    tally.change(name, n)
                replaced.update(chunk_replaced)
                progress.update(len(results))
            progress.close()
        tally.check()
    extra = {
        "inputs": [str(p) for p in inputs],
        "sources": {name: per_source[name].as_dict() for name in sorted(per_source)},
    }
    if params.pii.enabled:
        extra["pii_replacements"] = {k: replaced.get(k, 0) for k in params.pii.kinds}
    return tally, extra
