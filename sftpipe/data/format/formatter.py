"""format: canonical records -> rendered, tokenized, label-masked rows in one Parquet file.

The input is cut into parts of whole chunks (`sftpipe.core.engine`). Workers (local processes or Ray
actors) load the tokenizer once, read their own parts, and format each chunk: render it
(`sftpipe.data.format.templates`), tokenize it in one batch call with labels from character offsets
(`sftpipe.data.format.tokenizer`), hold it to `max_length` without ever cutting a response, and check it. The
driver takes the chunks back in input order: it counts and writes the drops, appends each chunk's
rows to `data.parquet` as one row group and merges the statistics. Chunks depend only on the input,
so the files are byte-identical for the same input, params and library versions, whatever the
engine and the number of workers.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import field_validator

from sftpipe.core.accounting import Tally
from sftpipe.core.config import Section
from sftpipe.core.engine import Engine, Part, ordered_map, split_lines
from sftpipe.core.errors import SftpipeError
from sftpipe.core.hashing import sha256_hex
from sftpipe.core.jsonio import JsonlWriter, atomic_path, dumps, loads
from sftpipe.core.progress import bar
from sftpipe.core.records import Drop, has_output
from sftpipe.data.format.checks import Problems, SanityError, blank, check_decoded, check_row
from sftpipe.data.format.templates import Rendered, Renderer, require_control_tokens
from sftpipe.data.format.tokenizer import (
    IGNORE,
    Encoded,
    FastBPE,
    bos_prefix,
    encode,
    ensure_pad_token,
    load_tokenizer,
)

CHUNK = 2048  # records per batch call and per Parquet row group
CHUNKS_PER_PART = 1  # chunks per unit of work handed to a worker (small parts balance the load)
# Decode-check the kept rows among the first input records, then among every n-th (by input
# position, which no worker count or engine changes).
DECODE_HEAD, DECODE_EVERY = 100, 50

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("cluster", pa.string()),
        ("messages", pa.string()),
        ("meta", pa.string()),
        ("text", pa.string()),
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("n_tokens", pa.int32()),
    ]
)


class FormatParams(Section):
    """The `format:` section of params.yaml."""

    template: Literal["alpaca", "chatml", "chat", "tokenizer"] = "tokenizer"
    """Prompt template: alpaca, chatml, chat (Human:/Assistant:), or the tokenizer's own chat template."""
    max_length: int = 2048
    """Longest row in tokens; nothing longer is kept and no response is ever cut."""
    overlong: Literal["drop", "drop_history"] = "drop_history"
    """Rows over max_length: drop them, or first remove the oldest exchanges (system prompt kept)."""
    train_on_prompt: bool = False
    """Train on every token (prompt and template text too), not only on assistant turns."""
    train_on_reasoning: bool = True
    """Train on assistant reasoning traces; false masks them (the reply and its tool calls stay trained)."""
    reasoning: Literal["keep", "drop_history"] = "keep"
    """Reasoning of every assistant turn (keep), or only of the turns after the last user turn (drop_history, as Qwen3 renders)."""

    @field_validator("max_length")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("max_length must be at least 1")
        return v


class FormatError(SftpipeError, ValueError):
    """The stage's input is missing or unreadable; the message names it."""


def exchanges(messages: list[dict]) -> tuple[list[dict], list[list[dict]]]:
    """Leading system turns, and the rest as exchanges: each starts at a user turn after a reply."""
    n = 0
    while n < len(messages) and messages[n]["role"] == "system":
        n += 1
    groups: list[list[dict]] = []
    for m in messages[n:]:
        if not groups or (m["role"] == "user" and any(x["role"] == "assistant" for x in groups[-1])):
            groups.append([m])
        else:
            groups[-1].append(m)
    return messages[:n], groups


def drop_history(messages: list[dict], k: int) -> list[dict]:
    """The conversation without its `k` oldest exchanges (system prompt kept)."""
    head, groups = exchanges(messages)
    return head + list(chain.from_iterable(groups[k:]))


class _Item:
    """One record on its way through a chunk."""

    __slots__ = ("record", "messages", "rendered", "enc", "cut", "drop", "pos")

    def __init__(self, record: dict, messages: list[dict], rendered, cut: int = 0, drop=None, pos: int = 0):
        self.record, self.messages, self.rendered, self.cut, self.pos = record, messages, rendered, cut, pos
        self.enc: Encoded | None = None
        self.drop: tuple[str, str] | None = drop

    @property
    def encoded(self) -> Encoded:
        """The tokens, once the chunk has encoded this item (every later step runs after that)."""
        assert self.enc is not None, "item read before it was encoded"
        return self.enc


class Formatter:
    """Renders, tokenizes and length-checks chunks of records, counting every one in a Tally."""

    def __init__(self, tokenizer, params: FormatParams):
        self.tok, self.params = tokenizer, params
        require_control_tokens(params.template, tokenizer)
        self.render = Renderer(params.template, tokenizer, bos_prefix(tokenizer), params.train_on_reasoning)
        self.fast = FastBPE.of(tokenizer)

    def _rendered(self, record: dict, messages: list[dict]):
        """The rendered record, or the drop reason and detail."""
        meta = record.get("meta") or {}
        final = next((m for m in reversed(messages) if m["role"] == "assistant"), None)
        if final is None or not has_output(final):  # a final turn that only calls a function is a completion
            return "empty_completion", "the final assistant turn is empty"
        if meta.get("kind") != "text" and not any(
            m["role"] == "user" and m["content"].strip() for m in messages
        ):
            return "empty_prompt", "no user turn with content"
        try:
            return self.render(messages, meta, record.get("tools"))
        except Drop as drop:
            return drop.reason, drop.detail

    def _messages(self, record: dict, tally: Tally) -> list[dict]:
        """The record's turns, with the reasoning of turns before the last user turn removed under
        `reasoning: drop_history` (counted per record as `reasoning.history_dropped`)."""
        messages = record["messages"]
        if self.params.reasoning == "keep":
            return messages
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
        if not any("reasoning" in m for m in messages[:last_user]):
            return messages
        tally.change("reasoning.history_dropped")
        return [
            {k: v for k, v in m.items() if k != "reasoning"} if i < last_user else m
            for i, m in enumerate(messages)
        ]

    def _encode(self, items: list[_Item]) -> None:
        encoded = self.encode([i.rendered for i in items])
        for item, enc in zip(items, encoded, strict=True):
            item.enc = enc

    def encode(self, rendered: list[Rendered]) -> list[Encoded]:
        return encode(self.tok, rendered, self.params.train_on_prompt, self.fast)

    def _fits(self, item: _Item) -> bool:
        return len(item.encoded.input_ids) <= self.params.max_length

    def _drop_overlong(self, item: _Item, judged: _Item, tally: Tally) -> None:
        """Drop `item`; `judged` is the shortest form tried (the last exchange alone, or itself)."""
        n = len(judged.encoded.input_ids)
        reason = "prompt_too_long" if judged.encoded.first_trained >= self.params.max_length else "too_long"
        tally.drop(reason, item.record, id=item.record["id"], n_tokens=n, exchanges_removed=judged.cut)

    def chunk(self, numbered: Iterable[tuple[int, dict]], tally: Tally) -> list[_Item]:
        """Render, tokenize and length-check a chunk of (input position, record), counting every
        record in `tally` (drops in input order); returns the kept items in input order."""
        items = []
        for pos, record in numbered:
            messages = self._messages(record, tally)
            got = self._rendered(record, messages)
            if isinstance(got, tuple):
                items.append(_Item(record, messages, None, drop=got, pos=pos))
            else:
                items.append(_Item(record, messages, got, pos=pos))
        live = [i for i in items if i.drop is None]
        self._encode(live)
        long = [i for i in live if not self._fits(i)]
        if long and self.params.overlong == "drop_history":
            still = dict(self._shorten(long, tally))
        else:
            still = {i: i for i in long}
        kept = []
        for item in items:
            tally.seen()
            if item.drop is not None:
                tally.drop(item.drop[0], item.record, id=item.record["id"], detail=item.drop[1])
            elif item in still:
                self._drop_overlong(item, still[item], tally)
            else:
                kept.append(item)
        tally.kept(len(kept))
        return kept

    def _shorten(self, long: list[_Item], tally: Tally) -> list[tuple[_Item, _Item]]:
        """Remove the fewest oldest exchanges that make each item fit. The search is batched over
        items and guided by the full text's token positions (usually one or two batch calls, not
        log2(exchanges)); returns the items that do not fit even as their last exchange alone, each
        with the shortest form tried (for its drop reason)."""
        searches = [_Search(i) for i in long]
        while pending := [s for s in searches if s.hi - s.lo > 1]:
            trials = []
            for s in pending:
                for k in s.probes(self.params.max_length):
                    messages = drop_history(s.item.messages, k)
                    got = self._rendered(s.item.record, messages)
                    if isinstance(got, tuple):  # the template rejects this shorter form: keep more history
                        s.lo = max(s.lo, k)
                    else:
                        trials.append((s, _Item(s.item.record, messages, got, k)))
            self._encode([t[1] for t in trials])
            for s, trial in trials:
                s.record(trial, self._fits(trial))
        still_long = []
        for s in searches:
            if s.best is None:
                still_long.append((s.item, s.shortest))
                continue
            s.item.messages, s.item.rendered, s.item.enc, s.item.cut = (
                s.best.messages, s.best.rendered, s.best.enc, s.best.cut)  # fmt: skip
            tally.change("history_dropped")
        return still_long


class _Search:
    """How many oldest exchanges to remove from one conversation: removing `lo` is known to be too
    long, removing `hi` fits (`best`; `hi == n` while nothing fits yet)."""

    __slots__ = ("item", "lo", "hi", "best", "shortest", "ends", "err", "rounds")

    def __init__(self, item: _Item):
        self.item, self.shortest, self.err, self.rounds = item, item, 0, 0
        self.best: _Item | None = None
        groups = exchanges(item.messages)[1]
        self.lo, self.hi = 0, len(groups)
        # The token where each exchange ends in the full text: the end of its last assistant turn.
        spans, ends, seen = item.encoded.spans, [], 0
        for g in groups:
            seen += sum(m["role"] == "assistant" for m in g)
            ends.append(spans[seen - 1][1] if seen else 0)
        self.ends = ends

    def estimate(self, k: int) -> int:
        """Tokens left after removing `k` exchanges, from the full text's positions."""
        return len(self.item.encoded.input_ids) - self.ends[k - 1] + self.err

    def probes(self, max_length: int) -> list[int]:
        """What to try next: the smallest removal estimated to fit and the one before it (which
        settles minimality in one call when the estimate is right); bisection if it keeps missing."""
        self.rounds += 1
        if self.rounds > 3:
            return [(self.lo + self.hi) // 2]
        k = next((k for k in range(self.lo + 1, self.hi) if self.estimate(k) <= max_length), self.hi - 1)
        return [x for x in (k - 1, k) if self.lo < x < self.hi]

    def record(self, trial: _Item, fits: bool) -> None:
        k = trial.cut
        self.err = len(trial.encoded.input_ids) - (len(self.item.encoded.input_ids) - self.ends[k - 1])
        if fits and k < self.hi:
            self.hi, self.best = k, trial
        elif not fits and k > self.lo:
            self.lo = k
            if k > self.shortest.cut:
                self.shortest = trial


class _Stats:
    """Token-length statistics and the sanity checks of kept rows, in a form that merges: each
    chunk gathers its own, and the driver merges them in input order."""

    def __init__(self, max_length: int):
        self.max_length = max_length
        self.lengths: Counter[int] = Counter()  # tokens per row -> rows
        self.trained = 0
        self.history_exchanges = 0
        self.by_source: Counter[str] = Counter()
        self.tokens_by_source: Counter[str] = Counter()
        self.problems = Problems()
        self.decoded = 0

    def add(self, item: _Item, decode=None) -> None:
        """Count a kept row; `decode` (the tokenizer's decode) also checks it against its text."""
        rid, n, trained = item.record["id"], len(item.encoded.input_ids), item.encoded.n_trained
        self.lengths[n] += 1
        self.trained += trained
        self.history_exchanges += item.cut
        self.by_source[item.record["source"]] += 1
        self.tokens_by_source[item.record["source"]] += n
        r = item.rendered
        is_text = (item.record.get("meta") or {}).get("kind") == "text"
        check_row(
            self.problems, rid, n_tokens=n, n_trained=trained, max_length=self.max_length,
            prompt_blank=blank(r.prompt), completion_blank=blank(r.completion), is_text=is_text,
        )  # fmt: skip
        if decode is not None:
            self.decoded += 1
            self._decode_check(item, rid, decode)

    def _decode_check(self, item: _Item, rid: str, decode) -> None:
        ids, r = item.encoded.input_ids, item.rendered
        check_decoded(self.problems, rid, decode(ids, skip_special_tokens=False), r.text)
        runs = [decode(ids[a:b], skip_special_tokens=False) for a, b in item.encoded.ranges]
        for s, e in r.spans:
            if e > s and not any(r.text[s:e] in run for run in runs):
                self.problems.add("response_not_trained", rid)

    def merge(self, other: _Stats) -> None:
        """Add the stats of the rows that come after these ones."""
        self.lengths.update(other.lengths)
        self.trained += other.trained
        self.history_exchanges += other.history_exchanges
        self.by_source.update(other.by_source)
        self.tokens_by_source.update(other.tokens_by_source)
        self.problems.merge(other.problems)
        self.decoded += other.decoded

    @property
    def rows(self) -> int:
        return sum(self.lengths.values())

    def report(self) -> dict:
        if self.lengths:
            values = sorted(self.lengths)
            lengths = np.repeat(np.asarray(values, dtype=np.int64), [self.lengths[v] for v in values])
        else:
            lengths = np.asarray([0])
        pct = {f"p{q}": int(np.percentile(lengths, q, method="higher")) for q in (50, 90, 99)}
        tokens = {
            "rows": self.rows,
            "total": int(lengths.sum()),
            "trained": self.trained,
            "min": int(lengths.min()),
            "mean": round(float(lengths.mean()), 2),
            **pct,
            "max": int(lengths.max()),
        }
        checks = {"decoded_rows": self.decoded, **self.problems.report()}
        sources = {
            s: {"rows": self.by_source[s], "tokens": self.tokens_by_source[s]} for s in sorted(self.by_source)
        }
        return {"tokens": tokens, "checks": checks, "sources": sources}


def batched(items: Iterable, n: int) -> Iterator[list]:
    """Lists of `n` items (the last one shorter)."""
    it = iter(items)
    while batch := list(islice(it, n)):
        yield batch


def _token_columns(encoded: list[Encoded]) -> tuple[pa.Array, pa.Array]:
    """input_ids and labels as list<int32> columns, built from one flat numpy buffer (pa.array on
    nested Python lists is several times slower, and labels never exist as Python lists)."""
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(e.input_ids) for e in encoded], out=offsets[1:])
    total = int(offsets[-1])
    ids = np.fromiter(chain.from_iterable(e.input_ids for e in encoded), dtype=np.int32, count=total)
    # +1 at each trained range's start, -1 at its end: a running sum > 0 marks trained tokens.
    edges = np.zeros(total + 1, dtype=np.int32)
    bounds = np.asarray(
        [(o + a, o + b) for o, e in zip(offsets[:-1].tolist(), encoded, strict=True) for a, b in e.ranges],
        dtype=np.int64,
    ).reshape(-1, 2)
    np.add.at(edges, bounds[:, 0], 1)
    np.add.at(edges, bounds[:, 1], -1)
    labels = np.where(np.cumsum(edges[:-1]) > 0, ids, np.int32(IGNORE)).astype(np.int32)
    pa_offsets = _int32(offsets)
    input_ids = pa.ListArray.from_arrays(pa_offsets, _int32(ids))
    return input_ids, pa.ListArray.from_arrays(pa_offsets, _int32(labels))


def _int32(values: np.ndarray) -> pa.Array:
    """An int32 Arrow array over a numpy buffer, without a copy; `pa.array(ndarray)` would import
    pandas on its first call (half a second in each new worker)."""
    values = np.ascontiguousarray(values, dtype=np.int32)
    return pa.Array.from_buffers(pa.int32(), len(values), [None, pa.py_buffer(values)])


def to_table(items: list[_Item]) -> pa.Table:
    """The kept items of a chunk as rows of the output schema."""

    def strings(values):
        return pa.array(values, type=pa.string())

    records = [i.record for i in items]
    input_ids, labels = _token_columns([i.encoded for i in items])
    cols = {
        "id": strings([r["id"] for r in records]),
        "source": strings([r["source"] for r in records]),
        "cluster": strings([str((r.get("meta") or {}).get("cluster") or r["id"]) for r in records]),
        "messages": strings([dumps(i.messages).decode() for i in items]),
        "meta": strings([dumps(_meta(i)).decode() for i in items]),
        "text": strings([i.rendered.text for i in items]),
        "prompt": strings([i.rendered.prompt for i in items]),
        "completion": strings([i.rendered.completion for i in items]),
        "input_ids": input_ids,
        "labels": labels,
        "n_tokens": pa.array([len(i.encoded.input_ids) for i in items], type=pa.int32()),
    }
    return pa.Table.from_pydict(cols, schema=SCHEMA)


def _meta(item: _Item) -> dict:
    """The row's meta: the record's, plus how many exchanges were cut, and the record's `tools`
    (the row keeps its columns, so the function schemas travel on in meta to split, mix and export)."""
    meta = item.record.get("meta") or {}
    if item.cut:
        meta = {**meta, "history_dropped": item.cut}
    if item.record.get("tools"):
        meta = {**meta, "tools": item.record["tools"]}
    return meta


def tokenizer_info(tokenizer, path: str | Path, pad_token_set: bool, fast: bool) -> dict:
    """What identifies the tokenizer in reports: where it was loaded from, its class, vocabulary,
    special tokens, and a digest of its full definition (the same tokenizer anywhere has the same)."""
    blob = tokenizer.backend_tokenizer.to_str().encode()
    return {
        "name": str(path or tokenizer.name_or_path),
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "eos_token": tokenizer.eos_token,
        "bos_prefix": bos_prefix(tokenizer),
        "pad_token": tokenizer.pad_token,
        "pad_token_set": pad_token_set,
        "encoder": "tiktoken" if fast else "tokenizers",
        "digest": sha256_hex(blob)[:16],
    }


class _Rejected(list):
    """A worker's rejected entries, in input order, for the driver to write (a Tally's writer)."""

    def write(self, obj: dict) -> None:
        self.append(obj)


@dataclass
class _Chunk:
    """One chunk as a worker formatted it: its kept rows, counts, drops and statistics."""

    table: pa.Table | None  # None when no row was kept
    tally: Tally
    rejected: list[dict]
    stats: _Stats


class _Job:
    """A worker's state: the tokenizer and a formatter, built once and used for every chunk."""

    def __init__(self, tokenizer, params: FormatParams, chunk: int, one_thread: bool = False):
        self.tok, self.chunk, self.one_thread = tokenizer, chunk, one_thread
        self.formatter = Formatter(tokenizer, params)

    @classmethod
    def load(cls, tokenizer_path: str, params: FormatParams, chunk: int, one_thread: bool) -> _Job:
        return cls(load_tokenizer(tokenizer_path), params, chunk, one_thread)

    def run(self, numbered: list[tuple[int, dict]]) -> _Chunk:
        if self.one_thread:
            # one tokenizer thread per worker process: workers x threads stay within the cores
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        rejected = _Rejected()
        tally = Tally(rejected)
        kept = self.formatter.chunk(numbered, tally)
        stats = _Stats(self.formatter.params.max_length)
        decode = self.tok.backend_tokenizer.decode
        for item in kept:
            sample = item.pos < DECODE_HEAD or item.pos % DECODE_EVERY == 0
            stats.add(item, decode if sample else None)
        return _Chunk(to_table(kept) if kept else None, tally, rejected, stats)


def _format_part(job: _Job, part: Part) -> list[_Chunk]:
    """A part's chunks, formatted (runs on a worker, which reads the part itself)."""
    numbered = []
    for line, raw in part.lines():
        try:
            numbered.append((line - 1, loads(raw)))
        except ValueError as exc:
            raise FormatError(f"{part.path}:{line}: invalid JSON: {exc}") from None
    return [job.run(batch) for batch in batched(numbered, job.chunk)]


def _write(
    chunks: Iterable[_Chunk], formatter: Formatter, out_dir: str | Path, tokenizer_path: str,
    pad_token_set: bool, total: int | None = None,
) -> tuple[Tally, dict]:  # fmt: skip
    """Write the chunks, in order, to `data.parquet` and `rejected.jsonl` in `out_dir` (atomically);
    returns the tally and the report's extra fields (tokenizer and params from the driver's
    `formatter`, built like the workers'). Raises SanityError (writing nothing) if a sanity check
    fails."""
    params = formatter.params
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        with (
            JsonlWriter(tmp / "rejected.jsonl") as rejected,
            pq.ParquetWriter(
                tmp / "data.parquet", SCHEMA, compression="zstd", use_dictionary=["source"]
            ) as writer,
            bar(desc="format", total=total, unit=" rec", mininterval=1) as progress,
        ):
            tally = Tally(rejected)
            stats = _Stats(params.max_length)
            for chunk in chunks:
                tally.merge(chunk.tally)
                rejected.write_all(chunk.rejected)
                stats.merge(chunk.stats)
                if chunk.table is not None:
                    writer.write_table(chunk.table)
                progress.update(chunk.tally.n_in)
            if not stats.rows:
                writer.write_table(SCHEMA.empty_table())
        tally.check()
        if stats.problems:
            raise SanityError(stats.problems.message("format"))
        report = stats.report()
    extra = {
        "template": params.template,
        "max_length": params.max_length,
        "overlong": params.overlong,
        "train_on_prompt": params.train_on_prompt,
        "tokenizer": tokenizer_info(formatter.tok, tokenizer_path, pad_token_set, formatter.fast is not None),
        "history_dropped_exchanges": stats.history_exchanges,
        **report,
    }
    return tally, extra


def format_records(
    records: Iterable[dict], tokenizer, params: FormatParams, out_dir: str | Path, tokenizer_path: str = ""
) -> tuple[Tally, dict]:
    """Format records in this process with a loaded tokenizer (its own threads tokenize): write
    `data.parquet` and `rejected.jsonl` into `out_dir` (atomically); returns the tally and the
    report's extra fields. Raises SanityError (writing nothing) if a sanity check fails."""
    pad_token_set = ensure_pad_token(tokenizer)
    job = _Job(tokenizer, params, CHUNK)
    chunks = (job.run(batch) for batch in batched(enumerate(records), CHUNK))
    return _write(chunks, job.formatter, out_dir, tokenizer_path, pad_token_set)


def format_file(
    src: str | Path,
    tokenizer_path: str | Path,
    params: FormatParams,
    out_dir: str | Path,
    *,
    engine: Engine = "local",
    workers: int = 1,
) -> tuple[Tally, dict]:
    """`format_records` on a JSONL file of canonical records, run by `workers` processes of
    `engine` (`sftpipe.core.engine`), each loading the tokenizer from `tokenizer_path`; the outputs are
    the same whichever engine and however many workers."""
    if not Path(src).is_file():
        raise FormatError(f"{src}: no such file (run the dedup stage first)")
    tokenizer = load_tokenizer(tokenizer_path)
    pad_token_set = ensure_pad_token(tokenizer)
    parts = split_lines(src, CHUNKS_PER_PART * CHUNK)
    workers = max(1, min(workers, len(parts)))
    # A lone local process lets the tokenizer use every core; several workers get one thread each.
    one_thread = engine == "ray" or workers > 1
    # Built here first, so a template that cannot work fails before any worker starts; local
    # workers then start from it (forked), Ray actors build their own.
    job = _Job(tokenizer, params, CHUNK, one_thread)
    pa.array([""])  # pyarrow imports pandas on its first array: once here, not in every forked worker
    results = ordered_map(
        _format_part, parts, setup=_Job.load, setup_args=(str(tokenizer_path), params, CHUNK, one_thread),
        engine=engine, workers=workers, state=job,
    )  # fmt: skip
    total = sum(p.n_lines for p in parts)
    chunks = chain.from_iterable(results)
    return _write(chunks, job.formatter, out_dir, str(tokenizer_path), pad_token_set, total)
