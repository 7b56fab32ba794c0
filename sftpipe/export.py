"""export: the mixed splits in the formats trainers load, plus metadata and sanity checks.

- data/processed/hf/: a `datasets.DatasetDict` (save_to_disk) with input_ids, attention_mask, labels,
  id, source, text (and copy, cluster); its fingerprint is a content digest so bytes are stable;
- data/processed/jsonl/<format>/<split>.jsonl for every format in `export.formats`;
- data/processed/parquet/<split>.parquet; data/processed/metadata.json.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from sftpipe.config import Section

Format = Literal["prompt_completion", "text", "sharegpt", "alpaca", "messages"]
HF_COLUMNS = ("id", "source", "cluster", "copy", "text", "input_ids", "attention_mask", "labels")


class ExportParams(Section):
    formats: list[Format] = ["prompt_completion", "text", "sharegpt", "alpaca", "messages"]
    """JSONL formats to write under data/processed/jsonl/<format>/."""
    parquet: bool = True
    """Also write data/processed/parquet/<split>.parquet (all columns)."""
    sanity_samples: int = 64
    """Rows per split decoded and compared with their rendered text by the sanity checks."""


class SanityError(AssertionError):
    """The exported dataset fails a check a trainer relies on."""


SHAREGPT_ROLE = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}


def _alpaca(messages: list[dict], meta: dict) -> dict:
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    turns = [m for m in messages if m["role"] in ("user", "assistant")]
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


def jsonl_rows(table: pa.Table, fmt: str) -> Iterator[dict]:
    """Rows of one split in one export format (each carries the example's id)."""
    cols = table.select(["id", "messages", "meta", "text", "prompt", "completion"]).to_pylist()
    for r in cols:
        if fmt == "prompt_completion":
            yield {"id": r["id"], "prompt": r["prompt"], "completion": r["completion"]}
        elif fmt == "text":
            yield {"id": r["id"], "text": r["text"]}
        else:
            messages = orjson.loads(r["messages"])
            if fmt == "messages":
                yield {"id": r["id"], "messages": messages}
            elif fmt == "sharegpt":
                conv = [{"from": SHAREGPT_ROLE[m["role"]], "value": m["content"]} for m in messages]
                yield {"id": r["id"], "conversations": conv}
            else:
                yield {"id": r["id"], **_alpaca(messages, orjson.loads(r["meta"]))}


def with_attention_mask(table: pa.Table) -> pa.Table:
    lengths = pc.list_value_length(table["input_ids"]).to_numpy()
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    ones = pa.array(np.ones(int(offsets[-1]), dtype=np.int8))
    return table.append_column("attention_mask", pa.ListArray.from_arrays(pa.array(offsets), ones))


def table_digest(table: pa.Table) -> str:
    """A content digest of a table (Arrow IPC bytes), used as the dataset fingerprint."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.blake2b(sink.getvalue().to_pybytes(), digest_size=8).hexdigest()


def save_hf(parts: dict[str, pa.Table], dest: Path) -> None:
    """Save the splits as a DatasetDict whose files depend only on the content."""
    import datasets

    dsd = datasets.DatasetDict()
    for name, table in parts.items():
        hf = with_attention_mask(table).select(
            [c for c in HF_COLUMNS if c in table.column_names or c == "attention_mask"]
        )
        dsd[name] = datasets.Dataset(hf.replace_schema_metadata(None), fingerprint=table_digest(hf))
    dsd.save_to_disk(str(dest))


def length_stats(lengths: list[int]) -> dict:
    if not lengths:
        return {"count": 0}
    a = np.asarray(lengths)
    return {
        "count": int(a.size), "mean": round(float(a.mean()), 2), "min": int(a.min()), "max": int(a.max()),
        "p50": int(np.percentile(a, 50)), "p90": int(np.percentile(a, 90)), "p99": int(np.percentile(a, 99)),
        "total": int(a.sum()),
    }  # fmt: skip


def sanity(parts: dict[str, pa.Table], tokenizer, max_length: int, samples: int, overlap: dict) -> dict:
    """The checks a trainer relies on; raises SanityError on the first failure, else returns the results."""
    checks: dict[str, object] = {"split_overlap": overlap}
    if any(overlap.values()):
        raise SanityError(f"examples shared between splits: {overlap}")
    for name, table in parts.items():
        lengths = pc.list_value_length(table["input_ids"]).to_pylist()
        if lengths and max(lengths) > max_length:
            raise SanityError(f"{name}: a row has {max(lengths)} tokens > max_length {max_length}")
        n_text = sum(orjson.loads(m).get("kind") == "text" for m in table["meta"].to_pylist())
        for column in ("prompt", "completion"):
            empty = pc.sum(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(table[column])), 0)).as_py() or 0
            if empty > n_text or (column == "completion" and empty):
                raise SanityError(f"{name}: {empty} rows with an empty {column}")
        rows = table.slice(0, samples).select(["id", "text", "input_ids", "labels"]).to_pylist()
        for r in rows:
            decoded = tokenizer.decode(r["input_ids"], clean_up_tokenization_spaces=False)
            if decoded != r["text"]:
                raise SanityError(f"{name}/{r['id']}: decoded tokens differ from the rendered text")
            if len(r["labels"]) != len(r["input_ids"]) or all(x == -100 for x in r["labels"]):
                raise SanityError(f"{name}/{r['id']}: labels do not match input_ids or train nothing")
        checks[name] = {
            "rows": table.num_rows,
            "decoded_ok": len(rows),
            "max_tokens": max(lengths, default=0),
        }
    checks["collated_batch"] = collate_check(parts["train"], tokenizer)
    return checks


def collate_check(table: pa.Table, tokenizer, n: int = 4) -> dict:
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


def metadata(data_params: dict, source_names: list[str], parts: dict[str, pa.Table], reports: Path) -> dict:
    """What a consumer of the dataset needs to know: counts, token lengths, template, tokenizer,
    a digest of the data params, and each source's format and input digest (from the reports)."""
    from sftpipe.jsonio import dumps
    from sftpipe.split import counts

    fmt = orjson.loads((reports / "format.json").read_bytes()) if (reports / "format.json").exists() else {}
    sources = {}
    for name in sorted(source_names):
        f = reports / "ingest" / f"{name}.json"
        if f.exists():
            r = orjson.loads(f.read_bytes())
            sources[name] = {k: r[k] for k in ("format", "input_digest", "out") if k in r}
    return {
        "splits": counts(parts),
        "tokens": {
            n: length_stats(pc.list_value_length(t["input_ids"]).to_pylist()) for n, t in parts.items()
        },
        "template": fmt.get("template"),
        "tokenizer": fmt.get("tokenizer"),
        "params_digest": hashlib.sha256(dumps(data_params)).hexdigest()[:16],
        "sources": sources,
    }
