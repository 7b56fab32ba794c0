"""evaluate: what training bought — loss and perplexity of the base and the trained model side by
side on val and test (overall and per source), and greedy generations for held-out prompts.

Both models see exactly the same rows: the first `max_examples` of each split by a hash of the
row id (stable whatever order export wrote), among rows of at most `max_length` tokens. Loss is
the mean cross-entropy over trained tokens (labels != -100), summed over rows before dividing, so
long rows weigh by their token count; perplexity is exp(loss).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from sftpipe.core.config import Section
from sftpipe.core.jsonio import write_jsonl
from sftpipe.model.train import TrainError, id_order, pick_device, select_rows


class EvaluateParams(Section):
    """params.yaml `evaluate:`."""

    splits: list[str] = ["val", "test"]
    """Splits to score."""
    max_examples: int | None = 24
    """Rows scored per split (the first by id hash); null = all."""
    max_length: int | None = 256
    """Score only rows of at most this many tokens; null = all."""
    batch_size: int = 4
    """Rows per scoring batch."""
    generations: int = 4
    """Held-out test prompts to generate from (the first by id hash whose prompt fits)."""
    max_prompt_tokens: int = 256
    """Skip prompts longer than this for generation."""
    max_new_tokens: int = 48
    """Greedy generation length limit (stops earlier at the end-of-turn token)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = CUDA when present, else CPU."""


def _rows(dsd, split: str, params: EvaluateParams):
    if split not in dsd:
        raise TrainError(f"evaluate.splits: no split {split!r} in the dataset (have: {', '.join(dsd)})")
    ds = select_rows(dsd[split], params.max_length)
    order = id_order(ds)[: params.max_examples]
    return ds.select(sorted(order), keep_in_memory=True)


def token_losses(model, rows, batch_size: int, pad_id: int, device: str) -> list[tuple[float, int]]:
    """(summed loss, trained tokens) per row, in row order."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    out: list[tuple[float, int]] = []
    model.eval()
    for start in tqdm(range(0, len(rows), batch_size), desc="scoring", disable=None, leave=False):
        batch = rows[start : start + batch_size]
        width = max(len(x) for x in batch["input_ids"])
        ids = torch.full((len(batch["input_ids"]), width), pad_id, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        for i, (x, y) in enumerate(zip(batch["input_ids"], batch["labels"], strict=True)):
            ids[i, : len(x)] = torch.tensor(x)
            labels[i, : len(y)] = torch.tensor(y)
            mask[i, : len(x)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        # Position t predicts token t + 1.
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(device)
        loss = F.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), reduction="none"
        ).view(shift_labels.shape)
        counts = (shift_labels != -100).sum(-1)
        for s, n in zip(loss.sum(-1).tolist(), counts.tolist(), strict=True):
            out.append((s, n))
    return out


def summarize(losses: list[tuple[float, int]], sources: list[str]) -> dict:
    def agg(pairs: list[tuple[float, int]]) -> dict:
        total, n = sum(s for s, _ in pairs), sum(k for _, k in pairs)
        loss = total / n if n else math.nan
        return {
            "loss": round(loss, 6),
            "perplexity": round(math.exp(loss), 6),
            "rows": len(pairs),
            "tokens": n,
        }

    by_source: dict[str, list] = {}
    for pair, src in zip(losses, sources, strict=True):
        by_source.setdefault(src, []).append(pair)
    return {**agg(losses), "by_source": {s: agg(p) for s, p in sorted(by_source.items())}}


def prompts(dsd, params: EvaluateParams) -> list[dict]:
    """Held-out test rows to generate from: the prompt is every token before the last trained
    span (the final assistant turn), the reference that span."""
    split = "test" if "test" in dsd else params.splits[-1]
    ds = dsd[split]
    chosen = []
    for i in id_order(ds):
        if len(chosen) >= params.generations:
            break
        row = ds[i]
        labels = row["labels"]
        trained = [j for j, v in enumerate(labels) if v != -100]
        if not trained:
            continue
        end = trained[-1]
        begin = end
        while begin > 0 and labels[begin - 1] != -100:
            begin -= 1
        if begin == 0 or begin > params.max_prompt_tokens:
            continue
        chosen.append(
            {
                "id": row["id"],
                "source": row.get("source"),
                "prompt_ids": row["input_ids"][:begin],
                "reference_ids": row["input_ids"][begin : end + 1],
            }
        )
    return chosen


def generate(model, tokenizer, items: list[dict], params: EvaluateParams, device: str) -> list[str]:
    import torch
    from tqdm import tqdm

    eos = [
        t for t in {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")} if t is not None
    ]
    texts = []
    for item in tqdm(items, desc="generating", disable=None, leave=False):
        ids = torch.tensor([item["prompt_ids"]], device=device)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=params.max_new_tokens,
                eos_token_id=eos or None,
                pad_token_id=tokenizer.pad_token_id,
            )
        texts.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return texts


def load_trained(base_dir: str | Path, sft_dir: str | Path, device: str):
    """models/sft as a model: an adapter applied to the base, or a full (merged) model."""
    import torch
    from transformers import AutoModelForCausalLM

    sft_dir = Path(sft_dir)
    if (sft_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
        return PeftModel.from_pretrained(base, str(sft_dir)).to(device)
    if not (sft_dir / "config.json").is_file():
        raise TrainError(f"{sft_dir}: neither an adapter nor a model (run the train stage first)")
    return AutoModelForCausalLM.from_pretrained(str(sft_dir), dtype=torch.float32).to(device)


def evaluate(
    params: EvaluateParams, data_dir: str | Path, base_dir: str | Path, sft_dir: str | Path, generations_path
) -> dict:
    """Score base and trained models; write the generations; return reports/evaluate.json."""
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        dsd = load_from_disk(str(data_dir))
    except FileNotFoundError:
        raise TrainError(f"{data_dir}: no saved DatasetDict (run the export stage first)") from None
    device, _ = pick_device(params.device)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = {split: _rows(dsd, split, params) for split in params.splits}
    items = prompts(dsd, params)
    report: dict[str, Any] = {}
    texts: dict[str, list[str]] = {}
    for name in ("base", "trained"):
        if name == "base":
            model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).to(device)
        else:
            model = load_trained(base_dir, sft_dir, device)
        report[name] = {
            split: summarize(token_losses(model, ds, params.batch_size, pad, device), ds["source"])
            for split, ds in rows.items()
        }
        texts[name] = generate(model, tokenizer, items, params, device)
        del model
    report["delta"] = {
        split: {
            "loss": round(report["trained"][split]["loss"] - report["base"][split]["loss"], 6),
            "perplexity": round(
                report["trained"][split]["perplexity"] - report["base"][split]["perplexity"], 6
            ),
        }
        for split in params.splits
    }
    records = [
        {
            "id": item["id"],
            "source": item["source"],
            "prompt": tokenizer.decode(item["prompt_ids"]),
            "reference": tokenizer.decode(item["reference_ids"], skip_special_tokens=True),
            "base": base,
            "trained": trained,
        }
        for item, base, trained in zip(items, texts["base"], texts["trained"], strict=True)
    ]
    write_jsonl(generations_path, records)
    report["generations"] = len(records)
    return report
