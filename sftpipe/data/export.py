"""export: the mixed splits in the formats trainers load, plus metadata and sanity checks.

- data/processed/hf/: a `datasets.DatasetDict` (save_to_disk layout) with input_ids, attention_mask,
  labels, id, source, text (and copy, cluster), and the conversation as TRL's SFTTrainer reads it:
  `messages` (canonical turns, tool calls and reasoning included) and `tools` (null when none),
  and the record's `meta`: ingest reads a row back as its record; its fingerprint is a digest of its shard bytes;
- data/processed/jsonl/<format>/<split>.jsonl for every format in `export.formats`;
- data/processed/parquet/<split>.parquet; data/processed/metadata.json.

Everything streams: a split is read from its Parquet file a batch of rows at a time, with only the
columns a pass needs, so memory stays flat whatever the size of the data. No output depends on
the batch size.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from sftpipe.core.accounting import Tally
from sftpipe.core.config import Section
from sftpipe.core.hashing import file_digest, sha256_hex
from sftpipe.core.jsonio import JsonlWriter, atomic_path, dumps, write_json
from sftpipe.core.progress import bar
from sftpipe.data.format.checks import Problems, SanityError, blank_column, check_decoded, check_row
from sftpipe.data.split import SPLITS, _hash
from sftpipe.io.schemas.sharegpt import RESULTS_JOIN

Format = Literal["prompt_completion", "text", "sharegpt", "alpaca", "messages"]
# The rows as trainers read them (input_ids, attention_mask, labels), then the record they came from.
HF_COLUMNS: tuple[str, ...] = ("id", "source", "cluster", "copy", "text", "input_ids", "attention_mask")
HF_COLUMNS += ("labels", "messages", "tools", "meta")
HF_DERIVED = {"attention_mask": "input_ids", "tools": "meta"}  # HF columns built from another column
JSONL_COLUMNS = {
    "prompt_completion": ("id", "prompt", "completion"),
    "text": ("id", "text"),
    "sharegpt": ("id", "messages", "meta"),
    "alpaca": ("id", "messages", "meta"),
    "messages": ("id", "messages", "meta"),
}
BATCH_ROWS = 4096  # rows read at a time: ~30 MB of Arrow at ~7 KB a row
HF_WRITE_ROWS = 1000  # rows per record batch in the HF shards (datasets' own writer batch size)
HF_SHARD_ROWS = 100_000  # rows per HF shard: ~450 MB at ~4.5 KB a row (datasets' default cap is 500 MB)
COLLATE_ROWS = 4

Split: TypeAlias = pa.Table | Path
"""A split: its Parquet file (streamed) or a table already in memory (tests, publish)."""


class ExportParams(Section):
    formats: list[Format] = ["prompt_completion", "text", "sharegpt", "alpaca", "messages"]
    """JSONL formats to write under data/processed/jsonl/<format>/."""
    parquet: bool = True
    """Also write data/processed/parquet/<split>.parquet (all columns)."""
    sanity_samples: int = 64
    """Rows per split decoded and compared with their rendered text by the sanity checks."""


def schema(split: Split) -> pa.Schema:
    return split.schema if isinstance(split, pa.Table) else pq.read_schema(split)


def num_rows(split: Split) -> int:
    return split.num_rows if isinstance(split, pa.Table) else pq.ParquetFile(split).metadata.num_rows


def batches(split: Split, columns: Iterable[str], batch_size: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """The split's rows in order, at most `batch_size` at a time, reading only `columns`."""
    columns = list(columns)
    if isinstance(split, pa.Table):
        yield from split.select(columns).to_batches(max_chunksize=batch_size)
        return
    with pq.ParquetFile(split) as f:
        # One iter_batches per row group: a single one over the whole file keeps about the compressed
        # size of what it has read until the file is closed (pyarrow 25), so memory grew with the data.
        for group in range(f.num_row_groups):
            yield from f.iter_batches(batch_size=batch_size, row_groups=[group], columns=columns)


def head(split: Split, n: int, columns: Iterable[str]) -> pa.Table:
    """The first `n` rows of a split (all of them if it is shorter)."""
    columns = list(columns)
    got = pa.Table.from_batches([], schema=pa.schema([schema(split).field(c) for c in columns]))
    for batch in batches(split, columns, max(n, 1)):
        got = pa.concat_tables([got, pa.Table.from_batches([batch]).select(columns)])
        if got.num_rows >= n:
            break
    return got.slice(0, n)


def rechunk(chunks: Iterable[pa.RecordBatch | pa.Table], size: int) -> Iterator[pa.Table]:
    """The same rows as tables of exactly `size` rows (the last one shorter) with buffers of their own.

    Fresh buffers make what is written from them independent of how the input was chunked: Arrow
    IPC pads a slice of a larger buffer differently from a whole one.
    """
    pending: list[pa.Table] = []
    rows = 0
    for chunk in chunks:
        pending.append(pa.Table.from_batches([chunk]) if isinstance(chunk, pa.RecordBatch) else chunk)
        rows += chunk.num_rows
        while rows >= size:
            whole = pa.concat_tables(pending)
            yield _fresh(whole.slice(0, size))
            pending, rows = [whole.slice(size)], rows - size
    if rows:
        yield _fresh(pa.concat_tables(pending))


def _fresh(table: pa.Table) -> pa.Table:
    # concatenating with an empty table copies every column into new, exactly sized buffers
    return pa.concat_tables([table, table.schema.empty_table()]).combine_chunks()


def _progress(split: Split, name: str, what: str) -> tqdm:
    return bar(total=num_rows(split), desc=f"export {what} {name}", unit=" rows")


SHAREGPT_ROLE = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}


def _alpaca(messages: list[dict], meta: dict) -> dict:
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    turns: list[dict] = []
    for m in messages:  # tool calls and results have no alpaca field: an exchange's last answer stands
        if m["role"] == "user" or (
            m["role"] == "assistant" and not (turns and turns[-1]["role"] == "assistant")
        ):
            turns.append(m)
        elif m["role"] == "assistant":
            turns[-1] = m
    pairs = [(turns[i]["content"], turns[i + 1]["content"]) for i in range(0, len(turns) - 1, 2)]
    if not pairs:  # a text record: no instruction, the whole text is the output
        return {
            "instruction": "",
            "input": "",
            "output": turns[-1]["content"] if turns else "",
            "system": system,
        }
    instruction, output = pairs[-1]
    context = meta.get("alpaca_input") or ""
    if context and instruction.endswith("\n\n" + context):
        instruction = instruction[: -len(context) - 2]
    else:
        context = ""
    row = {"instruction": instruction, "input": context, "output": output, "system": system}
    if len(pairs) > 1:
        row["history"] = [list(p) for p in pairs[:-1]]
    return row


def _sharegpt(messages: list[dict]) -> list[dict]:
    """ShareGPT turns in LLaMA-Factory's form, which alternates strictly (human/observation, then
    gpt/function_call): an assistant's reasoning as a `<think>` block at the start of its value
    (ingest reads it back with `reasoning: split`); a turn with calls as one `function_call` turn
    (one call as an object, parallel calls as a list). Its reasoning goes in front of the JSON as
    the `<think>` block LLaMA-Factory's FunctionFormatter takes (the one place it has for text beside
    a call), and so does any text the turn says before calling, after the reasoning: read back, that
    text is part of the turn's thinking. The results of parallel calls are one `observation`, joined
    as LLaMA-Factory joins them."""
    out = []
    for m in messages:
        calls = [
            {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
            for c in m.get("tool_calls", ())
        ]
        if calls:
            thought = "\n\n".join(t for t in (m.get("reasoning", ""), m["content"]) if t)
            value = orjson.dumps(calls[0] if len(calls) == 1 else calls).decode()
            out.append(
                {
                    "from": "function_call",
                    "value": f"<think>\n{thought}\n</think>\n\n{value}" if thought else value,
                }
            )
            continue
        value = m["content"]
        if m.get("reasoning"):
            value = f"<think>\n{m['reasoning']}\n</think>\n\n{value}"
        if m["role"] == "tool" and out and out[-1]["from"] == "observation":
            out[-1]["value"] += RESULTS_JOIN + value  # parallel calls' results: one observation
            continue
        out.append({"from": SHAREGPT_ROLE[m["role"]], "value": value})
    return out


def _jsonl_row(r: dict, fmt: str, messages: list[dict] | None) -> dict:
    """One row in one export format; `messages` is r["messages"] parsed (None for formats without it).
    A record's `tools` (kept in the row's meta by format) go with messages and sharegpt rows: as a
    list in OpenAI form, and as LLaMA-Factory's JSON string of bare functions."""
    if fmt == "prompt_completion":
        return {"id": r["id"], "prompt": r["prompt"], "completion": r["completion"]}
    if fmt == "text":
        return {"id": r["id"], "text": r["text"]}
    tools = orjson.loads(r["meta"]).get("tools") if '"tools"' in (r.get("meta") or "") else None
    if fmt == "messages":
        return {"id": r["id"], "messages": messages, **({"tools": tools} if tools else {})}
    if messages is None:  # the sharegpt and alpaca formats read the messages column
        raise ValueError(f"export format {fmt}: the row has no messages")
    if fmt == "sharegpt":
        row = {"id": r["id"], "conversations": _sharegpt(messages)}
        if tools:
            row["tools"] = orjson.dumps([t["function"] for t in tools]).decode()
        # Distilled rows carry their judges' scores, as the specification's ShareGPT rows do.
        meta = orjson.loads(r["meta"])
        return {**row, **{k: meta[k] for k in ("avg_score", "dimension_scores") if k in meta}}
    return {"id": r["id"], **_alpaca(messages, orjson.loads(r["meta"]))}


def jsonl_rows(table: pa.Table | pa.RecordBatch, fmt: str) -> Iterator[dict]:
    """Rows of a table or batch in one export format (each carries the example's id)."""
    for r in table.select(list(JSONL_COLUMNS[fmt])).to_pylist():
        yield _jsonl_row(r, fmt, orjson.loads(r["messages"]) if "messages" in r else None)


def write_jsonl_formats(
    splits: dict[str, Split], formats: list[str], dest: Path, batch_size: int = BATCH_ROWS
) -> None:
    """dest/<format>/<split>.jsonl for every format, all from one read of each split."""
    columns = sorted({c for f in formats for c in JSONL_COLUMNS[f]})
    for name, split in splits.items():
        with contextlib.ExitStack() as stack, _progress(split, name, "jsonl") as bar:
            writers = [
                stack.enter_context(JsonlWriter(stack.enter_context(atomic_path(dest / f / f"{name}.jsonl"))))
                for f in formats
            ]
            for batch in batches(split, columns, batch_size):
                for r in batch.to_pylist():
                    messages = orjson.loads(r["messages"]) if "messages" in r else None
                    for fmt, out in zip(formats, writers, strict=True):
                        out.write(_jsonl_row(r, fmt, messages))
                bar.update(batch.num_rows)


def write_outputs(
    splits: dict[str, Split], formats: list[str], parquet: bool, dest: Path, workers: int = 1
) -> None:
    """dest/hf, dest/jsonl/<format>/ and dest/parquet/ (when `parquet`), by up to `workers` processes:
    the HF dataset, the JSONL formats in two halves, and the Parquet copy are independent writes of
    their own files, so the bytes do not depend on `workers`. Spawned, not forked: the stage has
    started Arrow's and the tokenizer's threads, which a fork would copy mid-work."""
    halves = [formats[0::2], formats[1::2]] if workers > 1 else [formats]
    jobs: list[tuple[Callable[..., None], tuple]] = [(save_hf, (splits, dest / "hf"))]
    jobs += [(write_jsonl_formats, (splits, half, dest / "jsonl")) for half in halves if half]
    jobs += [(write_parquet, (splits, dest / "parquet"))] if parquet else []
    if workers <= 1:
        for fn, args in jobs:
            fn(*args)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
        for done in [pool.submit(fn, *args) for fn, args in jobs]:
            done.result()  # a worker's exception is raised here, as itself


def write_parquet(splits: dict[str, Split], dest: Path) -> None:
    """dest/<split>.parquet with every column. Mix already writes exactly these bytes (zstd, no schema
    metadata, 16384-row groups), so a split's file is copied as it is."""
    from sftpipe.data.split import write_parquet as write_split

    dest.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        if isinstance(split, pa.Table):
            write_split(split, dest / f"{name}.parquet")
        else:
            shutil.copyfile(split, dest / f"{name}.parquet")


def with_attention_mask(table: pa.Table) -> pa.Table:
    lengths = pc.list_value_length(table["input_ids"]).to_numpy()
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    ones = pa.array(np.ones(int(offsets[-1]), dtype=np.int8))
    return table.append_column("attention_mask", pa.ListArray.from_arrays(pa.array(offsets), ones))


def hf_table(table: pa.Table, columns: list[str]) -> pa.Table:
    """`columns` of the HF dataset from a split's rows: the attention mask from input_ids; the record
    as datasets' Json feature, so a loaded row holds the canonical `messages` (a list of dicts, the
    conversational form SFTTrainer reads), `tools` (kept in meta by format; null when none) and
    `meta` (without the tools), and ingest reads an HF row back as the record it was made from."""
    if "attention_mask" in columns:
        table = with_attention_mask(table)
    if "messages" in columns:
        table = table.set_column(
            table.schema.get_field_index("messages"), "messages", table["messages"].cast(pa.json_())
        )
    if "meta" in columns:
        metas, tools = [], []
        for m in table["meta"].to_pylist():
            meta = orjson.loads(m) if m and '"tools"' in m else None  # most rows are passed on as they are
            tools.append(dumps(meta.pop("tools")).decode() if meta and meta.get("tools") else None)
            metas.append(m if meta is None else dumps(meta).decode())
        table = table.set_column(table.schema.get_field_index("meta"), "meta", pa.array(metas, pa.json_()))
        table = table.append_column("tools", pa.array(tools, pa.json_()))
    return table.select(columns)


def _hf_split(split: Split, folder: Path, batch_size: int) -> tuple[list[str], str, pa.Schema]:
    """Stream one split's HF columns into Arrow shards in `folder`, written by datasets' own writer.

    Shards hold HF_SHARD_ROWS rows in record batches of HF_WRITE_ROWS, so their bytes (and the
    fingerprint, a digest of those bytes) do not depend on the batch size. Returns the shard file
    names, the fingerprint and the schema.
    """
    from datasets import Features
    from datasets.arrow_writer import ArrowWriter

    names = schema(split).names
    columns = [c for c in HF_COLUMNS if (c in names and c not in HF_DERIVED) or HF_DERIVED.get(c) in names]
    hf_schema = hf_table(schema(split).empty_table(), columns).schema
    features = Features.from_arrow_schema(hf_schema)
    n_shards = max(1, -(-num_rows(split) // HF_SHARD_ROWS))
    files = [f"data-{i:05d}-of-{n_shards:05d}.arrow" for i in range(n_shards)]
    folder.mkdir(parents=True)
    sources = [c for c in names if c in columns or c in [HF_DERIVED.get(d) for d in columns]]
    read = rechunk(batches(split, sources, batch_size), HF_WRITE_ROWS)
    with _progress(split, folder.name, "hf") as bar:
        for file in files:
            writer = ArrowWriter(features=features, path=str(folder / file))
            for chunk in itertools.islice(read, HF_SHARD_ROWS // HF_WRITE_ROWS):
                writer.write_table(hf_table(chunk, columns))
                bar.update(chunk.num_rows)
            writer.finalize()
    # sha256, not blake2b: it has CPU support, ~3x faster on GBs of shards
    return files, file_digest(folder / file for file in files)[:16], hf_schema


def save_hf(splits: dict[str, Split], dest: Path, batch_size: int = BATCH_ROWS) -> None:
    """Save the splits as a DatasetDict (loads with `datasets.load_from_disk`) whose files depend only
    on the content.

    `Dataset.save_to_disk` would need the rows as one table; a memory-mapped one still ends up
    resident (mapped pages count as the process's memory), so the shards are streamed here with
    datasets' ArrowWriter, and datasets itself writes the JSON beside them by saving an empty
    dataset with the same features and fingerprint, whose file list is then filled in.
    """
    import datasets

    empty = datasets.DatasetDict()
    files = {}
    for name, split in splits.items():
        files[name], fingerprint, hf_schema = _hf_split(split, dest / name, batch_size)
        empty[name] = datasets.Dataset(hf_schema.empty_table(), fingerprint=fingerprint)
    quiet = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # its bar would count the empty datasets' 0 rows
    try:
        empty.save_to_disk(str(dest))
    finally:
        if not quiet:
            datasets.enable_progress_bars()
    for name in splits:
        path = dest / name / "state.json"
        state = json.loads(path.read_text())
        state["_data_files"] = [{"filename": f} for f in files[name]]
        with open(path, "w", encoding="utf-8") as fh:  # as datasets writes it
            json.dump(state, fh, indent=2, sort_keys=True)


def length_stats(lengths) -> dict:
    """Summary of token lengths (a list or an array of ints)."""
    a = np.asarray(lengths, dtype=np.int64)
    if not a.size:
        return {"count": 0}
    return {
        "count": int(a.size), "mean": round(float(a.mean()), 2), "min": int(a.min()), "max": int(a.max()),
        "p50": int(np.percentile(a, 50)), "p90": int(np.percentile(a, 90)), "p99": int(np.percentile(a, 99)),
        "total": int(a.sum()),
    }  # fmt: skip


@dataclass
class SplitFacts:
    """What the checks and metadata.json need from one split, gathered in one streaming pass."""

    rows: int = 0
    by_source: Counter = field(default_factory=Counter)
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    problems: Problems = field(default_factory=Problems)  # the row checks format also runs
    head: pa.Table | None = None  # the first rows: id, text, input_ids, labels


@dataclass
class Survey:
    splits: dict[str, SplitFacts]
    overlap: dict[str, int]
    samples: int

    def counts(self) -> dict[str, dict]:
        """Per split: total and per-source row counts (as sftpipe.data.split.counts)."""
        return {
            n: {"total": f.rows, "by_source": dict(sorted(f.by_source.items()))}
            for n, f in self.splits.items()
        }


SURVEY_COLUMNS = ("id", "source", "cluster", "meta", "text", "prompt", "completion", "input_ids", "labels")


def check_rows(problems: Problems, batch: pa.RecordBatch, n_tokens: np.ndarray, max_length: int) -> None:
    """The row checks of sftpipe.data.format.checks on a batch of exported rows."""
    labels = batch["labels"]
    offsets = labels.offsets.to_numpy()
    trained = np.concatenate([[0], np.cumsum(labels.values.to_numpy() != -100)])
    n_trained = trained[offsets[1:]] - trained[offsets[:-1]]
    n_labels = np.diff(offsets)
    rows = zip(
        batch["id"].to_pylist(), n_tokens.tolist(), n_trained.tolist(), n_labels.tolist(),
        blank_column(batch["prompt"]), blank_column(batch["completion"]), batch["meta"].to_pylist(),
        strict=True,
    )  # fmt: skip
    for rid, n, t, n_lab, prompt_blank, completion_blank, meta in rows:
        is_text = '"kind"' in meta and orjson.loads(meta).get("kind") == "text"
        check_row(
            problems, rid, n_tokens=n, n_trained=t, max_length=max_length, prompt_blank=prompt_blank,
            completion_blank=completion_blank, is_text=is_text, n_labels=n_lab,
        )  # fmt: skip


def survey(splits: dict[str, Split], samples: int, max_length: int, batch_size: int = BATCH_ROWS) -> Survey:
    """One streaming pass over each split for the sanity checks and metadata.json.

    Overlap counts what sftpipe.data.split.overlap counts (ids, text hashes and clusters found in more than
    one split) without keeping the largest split's keys: it is read last and only looked up.
    """
    keys = ("id", "text", "cluster")
    seen: dict[str, dict] = {k: {} for k in keys}
    shared: dict[str, set] = {k: set() for k in keys}
    order = sorted(splits, key=lambda n: num_rows(splits[n]))
    facts = {}
    for name in order:
        split, f, lengths = splits[name], SplitFacts(), []
        keep = name != order[-1]
        with _progress(split, name, "survey") as bar:
            for batch in batches(split, SURVEY_COLUMNS, batch_size):
                f.rows += batch.num_rows
                f.by_source.update(batch["source"].to_pylist())
                lengths.append(pc.list_value_length(batch["input_ids"]).to_numpy(zero_copy_only=False))
                check_rows(f.problems, batch, lengths[-1], max_length)
                values = {
                    "id": batch["id"].to_pylist(),
                    "text": [_hash(t) for t in batch["text"].to_pylist()],
                    "cluster": batch["cluster"].to_pylist(),
                }
                for k in keys:
                    owner, both = seen[k], shared[k]
                    for v in values[k]:
                        if (owner.setdefault(v, name) if keep else owner.get(v, name)) != name:
                            both.add(v)
                bar.update(batch.num_rows)
        f.lengths = np.concatenate([np.zeros(0, np.int64), *lengths]).astype(np.int64)
        f.head = head(split, max(samples, COLLATE_ROWS), ["id", "text", "input_ids", "labels"])
        facts[name] = f
    return Survey({n: facts[n] for n in splits}, {k: len(shared[k]) for k in keys}, samples)


def sanity(survey: Survey, tokenizer) -> dict:
    """The checks a trainer relies on: no example in two splits, the row checks format runs (on
    every row; the decode check on the first `samples` of each split) and a collated batch of the
    right shape. Raises SanityError on a failure, else returns the results."""
    overlap = survey.overlap
    checks: dict[str, object] = {"split_overlap": overlap}
    if any(overlap.values()):
        raise SanityError(f"examples shared between splits: {overlap}")
    problems = Problems()
    for name, f in survey.splits.items():
        problems.merge(f.problems)
        assert f.head is not None  # survey() reads the head of every split
        rows = f.head.slice(0, survey.samples).to_pylist()
        for r in rows:
            decoded = tokenizer.decode(r["input_ids"], clean_up_tokenization_spaces=False)
            check_decoded(problems, r["id"], decoded, r["text"])
        checks[name] = {"rows": f.rows, "decoded_ok": len(rows), "max_tokens": int(f.lengths.max(initial=0))}
    if problems:
        raise SanityError(problems.message("export"))
    checks["collated_batch"] = collate_check(survey.splits["train"].head, tokenizer, COLLATE_ROWS)
    return checks


def collate_check(table: pa.Table, tokenizer, n: int = COLLATE_ROWS) -> dict:
    """Pad a small batch the way a trainer would and check every tensor has the same shape."""
    from transformers import DataCollatorForSeq2Seq

    rows = (
        with_attention_mask(table.slice(0, n)).select(["input_ids", "attention_mask", "labels"]).to_pylist()
    )
    if not rows:
        return {"skipped": "empty train split"}
    batch = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="np")(
        rows
    )
    shapes = {k: list(v.shape) for k, v in batch.items()}
    expected = [len(rows), max(len(r["input_ids"]) for r in rows)]
    if any(s != expected for s in shapes.values()):
        raise SanityError(f"collated batch shapes {shapes}, expected {expected} for each")
    return {"shape": expected}


def metadata(data_params: dict, source_names: list[str], survey: Survey, reports: Path) -> dict:
    """What a consumer of the dataset needs to know: counts, token lengths, template, tokenizer,
    a digest of the data params, and each source's format and input digest (from the reports)."""

    fmt = orjson.loads((reports / "format.json").read_bytes()) if (reports / "format.json").exists() else {}
    sources = {}
    for name in sorted(source_names):
        f = reports / "ingest" / f"{name}.json"
        if f.exists():
            r = orjson.loads(f.read_bytes())
            sources[name] = {k: r[k] for k in ("format", "input_digest", "out") if k in r}
    return {
        "splits": survey.counts(),
        "tokens": {n: length_stats(f.lengths) for n, f in survey.splits.items()},
        "template": fmt.get("template"),
        "tokenizer": fmt.get("tokenizer"),
        "params_digest": sha256_hex(dumps(data_params))[:16],
        "sources": sources,
    }


# The params sections that shape the dataset, recorded in metadata.json.
DATA_SECTIONS = ("seed", "sources", "clean", "dedup", "format", "split", "mix", "export")


def run(
    params: Any, src_dir: str | Path, tokenizer_dir: str | Path, out: str | Path, reports_dir: str | Path
) -> tuple[Tally, dict]:
    """The stage: check the mixed splits' sanity (reports/sanity.json), then write every format
    and metadata.json under `out`; returns the tally and the report's extras. `params` holds the
    DATA_SECTIONS (metadata.json records them)."""
    from transformers import AutoTokenizer

    p, reports = params.export, Path(reports_dir)
    splits = {n: Path(src_dir) / f"{n}.parquet" for n in SPLITS}
    facts = survey(splits, p.sanity_samples, params.format.max_length)
    checks = sanity(facts, AutoTokenizer.from_pretrained(tokenizer_dir))
    data_params = {k: v for k, v in params.model_dump(mode="json").items() if k in DATA_SECTIONS}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        write_outputs(splits, p.formats, p.parquet, tmp, workers=params.n_workers)
        write_json(tmp / "metadata.json", metadata(data_params, list(params.sources), facts, reports))
    tally = Tally()
    tally.seen(sum(f.rows for f in facts.splits.values()))
    tally.kept(tally.n_in)
    write_json(reports / "sanity.json", checks)
    return tally, {"splits": facts.counts(), "formats": list(p.formats)}
