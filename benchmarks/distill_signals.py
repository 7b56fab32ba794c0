"""Which base-model signals catch truncated and contradicted answers? (issue 20)

Scores the labelled pairs (tests/distill/data/labelled_pairs.jsonl) and the control pairs built
from the shipped slices with the base model (models/base), in two prompt formats (the grounding
gate's plain "Passage/Question/Answer" text, and the model's chat template), and prints, per
candidate signal, its AUC against each bad kind: good pairs vs the pairs of that kind.

Candidates (per pair; "gain" of a token = its log-probability with the passage minus without):
- `mean_gain`: the grounding gain (mean over the response's tokens);
- `end`: log-probability of the end-of-turn token right after the response, with the passage;
- `end_gain`: the same, with minus without the passage;
- `min_gain`: the smallest per-token gain; `neg2`/`neg3`: the sum of the 2/3 most negative gains.

Each new signal's threshold is chosen on half the slices (TUNE: what-is-sft, deduplication,
mixing) against its target kind (`end`: truncated, `min_gain`: contradicted), midway between the
lowest good pair and the highest target pair below it, and reported on the other half (held out).

    python benchmarks/distill_signals.py [--model models/base] [--json signals.jsonl]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from sftpipe.core.jsonio import read_jsonl
from sftpipe.distill.controls import auc, control_pairs
from sftpipe.distill.slices import chunks_of, read_slices
from sftpipe.model.scoring import each_token_loss

PLAIN_WITH = "Passage:\n{content}\n\nQuestion: {question}\n\nAnswer:"
PLAIN_WITHOUT = "Question: {question}\n\nAnswer:"
TUNE = ("sft-guide/what-is-sft", "sft-guide/deduplication", "sft-guide/mixing")


def items(slices_path: str, pairs_path: str) -> list[dict]:
    slices = read_slices(slices_path)
    content = {s["id"]: s["content"] for s in slices}
    out = []
    for r in read_jsonl(pairs_path):
        kind = "good" if r["label"] else r["kind"]
        out.append({"set": "labelled", "slice": r["slice"], "kind": kind, "label": r["label"],
                    "content": content[r["slice"]], "pair": r})  # fmt: skip
    for c in control_pairs(chunks_of(slices, 1500)):
        out.append({"set": "controls", "slice": c.chunk.slice_id, "kind": "good" if c.label else c.kind,
                    "label": c.label, "content": c.chunk.content, "pair": c.pair})  # fmt: skip
    return out


def question(pair: dict) -> str:
    return pair["instruction"] + (f"\n{pair['input']}" if pair.get("input") else "")


def rows_for(tok, fmt: str, content: str, pair: dict, end_id: int) -> list[tuple[list[int], list[int]]]:
    """The (ids, labels) of the with- and without-passage rows; labels on the response + end token."""
    q = question(pair)
    if fmt == "plain":
        prompts = [PLAIN_WITH.format(content=content, question=q), PLAIN_WITHOUT.format(question=q)]
        answer = tok(" " + pair["response"], add_special_tokens=False)["input_ids"]
    else:
        users = [f"Passage:\n{content}\n\nQuestion: {q}", q]
        prompts = [
            tok.apply_chat_template(
                [{"role": "user", "content": u}], tokenize=False, add_generation_prompt=True
            )
            for u in users
        ]
        answer = tok(pair["response"], add_special_tokens=False)["input_ids"]
    out = []
    for p in prompts:
        ctx = tok(p, add_special_tokens=False)["input_ids"]
        out.append((ctx + answer + [end_id], [-100] * len(ctx) + answer + [end_id]))
    return out


def signals(with_: list[float], without: list[float]) -> dict[str, float]:
    """Candidate signals from per-token losses (the last token is the end-of-turn)."""
    gains = [b - a for a, b in zip(with_[:-1], without[:-1], strict=True)]  # loss without - with
    neg = sorted(gains)
    return {
        "mean_gain": sum(gains) / len(gains),
        "end": -with_[-1],
        "end_gain": without[-1] - with_[-1],
        "min_gain": neg[0],
        "neg2": sum(neg[:2]),
        "neg3": sum(neg[:3]),
    }


def score_all(model_dir: str, data: list[dict]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    end_id = tok.convert_tokens_to_ids(tok.eos_token)
    for fmt in ("plain", "chat"):
        rows: dict[str, list] = {"input_ids": [], "labels": []}
        for d in data:
            for ids, labels in rows_for(tok, fmt, d["content"], d["pair"], end_id):
                rows["input_ids"].append(ids)
                rows["labels"].append(labels)
        losses = each_token_loss(model, rows, 8, tok.pad_token_id, "cpu", desc=fmt)
        for i, d in enumerate(data):
            d[fmt] = signals(losses[2 * i], losses[2 * i + 1])


def threshold(good: list[float], bad: list[float]) -> float:
    """Midway between the lowest good value and the highest bad value below it (keeps every good)."""
    lo = min(good)
    below = [b for b in bad if b < lo]
    return round((lo + max(below)) / 2, 2) if below else round(lo, 2)


def half(d: dict, where: str) -> bool:
    return (d["slice"] in TUNE) == (where == "in")


def aucs(data: list[dict]) -> dict:
    """Per format and signal: AUC of good pairs against each bad kind, on the tuning half (in) and
    the held-out half (out)."""
    out: dict = defaultdict(dict)
    kinds = sorted({d["kind"] for d in data} - {"good"})
    for fmt in ("plain", "chat"):
        for name in data[0][fmt]:
            row = {}
            for kind, where in ((k, w) for k in kinds for w in ("in", "out")):
                good = [d[fmt][name] for d in data if d["label"] and half(d, where)]
                bad = [d[fmt][name] for d in data if d["kind"] == kind and half(d, where)]
                row[f"{kind}/{where}"] = auc(good, bad)
            out[fmt][name] = row
    return dict(out)


def thresholds(data: list[dict], fmt: str = "plain") -> dict:
    """Each new signal's threshold, chosen on the tuning half against its target kind, and what it
    keeps and drops on each half (good pairs dropped = lost recall)."""
    out = {}
    for name, target in (("end", "truncated"), ("min_gain", "contradicted")):
        tune = [d for d in data if half(d, "in")]
        cut = threshold(
            [d[fmt][name] for d in tune if d["label"]], [d[fmt][name] for d in tune if d["kind"] == target]
        )
        row: dict = {"threshold": cut}
        for where in ("in", "out"):
            part = [d for d in data if half(d, where)]
            for kind in sorted({d["kind"] for d in part}):
                of = [d for d in part if d["kind"] == kind]
                row[f"{kind}/{where}"] = f"{sum(d[fmt][name] < cut for d in of)}/{len(of)} dropped"
        out[name] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="models/base")
    ap.add_argument("--slices", default="data/knowledge/slices.jsonl")
    ap.add_argument("--pairs", default="tests/distill/data/labelled_pairs.jsonl")
    ap.add_argument("--json", help="write every pair's signals here")
    ap.add_argument("--signals", help="read the signals written by an earlier --json (no model)")
    args = ap.parse_args()
    if args.signals:
        data = list(read_jsonl(args.signals))
    else:
        data = items(args.slices, args.pairs)
        score_all(args.model, data)
    if args.json:
        with open(args.json, "w") as f:
            for d in data:
                f.write(json.dumps({k: v for k, v in d.items() if k != "content"}) + "\n")
    print(json.dumps({"auc": aucs(data), "thresholds": thresholds(data)}, indent=1))


if __name__ == "__main__":
    main()
