"""evaluate: did the data help? Base vs trained on fixed held-out rows, as paired differences with
confidence intervals, plus generation metrics, task accuracy and an optional LLM-judge win rate.

Both models see exactly the same rows: the first `max_examples` of each split by a hash of the
row id (stable whatever order export wrote, and the same across runs and experiments), among rows
of at most `max_length` tokens. A row's loss is the mean cross-entropy over its trained tokens
(labels != -100); a split's loss sums over rows before dividing, so long rows weigh by their token
count; perplexity is exp(loss). The per-row losses of both models go to a small git-tracked file
(reports/eval_rows.jsonl), one line per row keyed by id, so `sftpipe.compare` can pair two
experiments on the rows they share. The paired report gives the token-weighted mean difference
trained - base with a 95% bootstrap interval over rows, and the share of rows that improved, per
split and per source (`sftpipe.model.stats`).

Generation metrics, on held-out test prompts answered greedily by both models: the end-of-turn stop
rate (generation stops on the model's generation_config `eos_token_id`, an id or a list), the
mean answer length in tokens, and repetition (the share of repeated token 3-grams in an answer).
Tasks (`sftpipe.model.tasks`) and the judge (`sftpipe.model.judge`) add their own rows.

Per-row file lines: {"set", "id", "source", "metric", "base", "trained"[, "tokens"]}; `set` is a
split, `gen`, `task/<name>` or `judge`; `metric` says which way is better (`stats.DIRECTION`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from sftpipe.core.config import Section
from sftpipe.core.jsonio import read_jsonl, write_jsonl
from sftpipe.core.progress import bar
from sftpipe.model.judge import JudgeParams
from sftpipe.model.scoring import token_losses
from sftpipe.model.stats import DIRECTION, paired, wilson
from sftpipe.model.tasks import TaskSpec, load_items, score_generated
from sftpipe.model.train import TrainError, id_order, pick_device, quiet_peft, select_rows

REPETITION_N = 3


class EvaluateParams(Section):
    """params.yaml `evaluate:`."""

    splits: list[str] = ["val", "test"]
    """Splits to score."""
    max_examples: int | None = 64
    """Rows scored per split (the first by id hash); null = all."""
    max_length: int | None = 256
    """Score only rows of at most this many tokens; null = all."""
    batch_size: int = 8
    """Rows per scoring and generation batch."""
    generations: int = 8
    """Held-out test prompts to generate from (the first by id hash whose prompt fits)."""
    max_prompt_tokens: int = 256
    """Skip prompts longer than this for generation."""
    max_new_tokens: int = 96
    """Greedy generation length limit (stops earlier at the end-of-turn token)."""
    tasks: dict[str, TaskSpec] = {}
    """Local evaluation sets by name, each scored for base and trained (see `sftpipe.model.tasks`)."""
    judge: JudgeParams = JudgeParams()
    """LLM-judge pairwise win rate of trained vs base (off by default)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = CUDA when present, else CPU."""


def _rows(dsd, split: str, params: EvaluateParams):
    if split not in dsd:
        raise TrainError(f"evaluate.splits: no split {split!r} in the dataset (have: {', '.join(dsd)})")
    ds = select_rows(dsd[split], params.max_length)
    order = id_order(ds)[: params.max_examples]
    return ds.select(sorted(order), keep_in_memory=True)


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
    chosen: list[dict] = []
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


def eos_ids(tokenizer, *model_dirs: str | Path) -> list[int]:
    """The end-of-turn ids generation stops on: the `eos_token_id` (an id or a list) of each model
    folder's generation_config.json (models/sft's carries the trained template's end-of-turn
    token), together; the tokenizer's eos when none names one. Both models stop on the same ids."""
    import json

    ids: list[int] = []
    for folder in model_dirs:
        path = Path(folder) / "generation_config.json"
        eos = json.loads(path.read_text()).get("eos_token_id") if path.is_file() else None
        for t in eos if isinstance(eos, list) else [eos]:
            if t is not None and int(t) not in ids:
                ids.append(int(t))
    if not ids and tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def repetition(ids: list[int], n: int = REPETITION_N) -> float:
    """Share of an answer's token n-grams that repeat an earlier one (0 for answers shorter than n)."""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def generate(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    eos: list[int],
    max_new_tokens: int,
    batch_size: int,
    device: str,
    desc: str,
) -> list[dict]:
    """Greedy answers in left-padded batches: {"text", "ids", "stopped"} per prompt; `ids` end
    before the first end-of-turn token, and `stopped` says whether there was one."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))  # less padding
    out: list[dict] = [{}] * len(order)
    model.eval()
    starts = range(0, len(order), batch_size)
    for start in bar(starts, desc=desc, unit="batch"):
        batch = [prompt_ids[i] for i in order[start : start + batch_size]]
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(batch):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos or None,
                pad_token_id=pad,
            )
        for k, row in enumerate(gen[:, width:].tolist()):
            cut = next((j for j, t in enumerate(row) if t in eos), None)
            new = row if cut is None else row[:cut]
            text = tokenizer.decode(new, skip_special_tokens=True)
            out[order[start + k]] = {"text": text, "ids": new, "stopped": cut is not None}
    return out


def chat_prompt(tokenizer, question: str) -> list[int]:
    """A one-turn user prompt ending where the assistant answers, in the tokenizer's chat template
    (the format stage's default); plain text when the tokenizer has none."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = question + "\n"
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def choice_scores(model, tokenizer, items: list[dict], batch_size: int, pad: int, device: str) -> list[int]:
    """The chosen index per multiple-choice item: highest summed log-likelihood of the choice."""
    rows: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
    owners: list[tuple[int, int]] = []
    for k, item in enumerate(items):
        prompt = chat_prompt(tokenizer, item["question"])
        for c, choice in enumerate(item["choices"]):
            ids = tokenizer(choice, add_special_tokens=False)["input_ids"]
            rows["input_ids"].append(prompt + ids)
            rows["labels"].append([-100] * len(prompt) + ids)
            owners.append((k, c))
    losses = token_losses(model, rows, batch_size, pad, device, desc="choices")
    best: dict[int, tuple[float, int]] = {}
    for (k, c), (total, _) in zip(owners, losses, strict=True):
        if k not in best or -total > best[k][0]:
            best[k] = (-total, c)
    return [best[k][1] for k in range(len(items))]


def _judge_items(params: EvaluateParams, tokenizer, held_out: list[dict]) -> list[dict]:
    """Prompts for the judge: the file's (first turn), or the held-out test prompts."""
    if params.judge.prompts is None:
        return [
            {
                "id": it["id"],
                "source": it["source"],
                "prompt_ids": it["prompt_ids"],
                "question": tokenizer.decode(it["prompt_ids"]),
            }
            for it in held_out[: params.judge.max_prompts]
        ]
    path = Path(params.judge.prompts)
    if not path.is_file():
        raise TrainError(f"evaluate.judge.prompts: {path} is not a file")
    items: list[dict] = []
    for i, rec in enumerate(read_jsonl(path)):
        if len(items) >= params.judge.max_prompts:
            break
        turns = rec.get("turns")
        question = (
            turns[0]
            if turns
            else next((rec[k] for k in ("question", "prompt", "instruction") if rec.get(k)), None)
        )
        if not question:
            raise TrainError(f"{path}: record {i + 1}: no turns/question/prompt/instruction field")
        qid = rec.get("question_id", rec.get("id", i))
        items.append(
            {
                "id": f"judge/{qid}",
                "source": rec.get("category"),
                "question": str(question),
                "prompt_ids": chat_prompt(tokenizer, str(question)),
            }
        )
    return items


def _gen_summary(outs: list[dict]) -> dict:
    n = len(outs)
    stop = wilson(sum(o["stopped"] for o in outs), n)
    grams = sum(max(0, len(o["ids"]) - REPETITION_N + 1) for o in outs)
    repeated = sum(repetition(o["ids"]) * max(0, len(o["ids"]) - REPETITION_N + 1) for o in outs)
    return {
        "stop_rate": stop["rate"],
        "stop_ci_low": stop["ci_low"],
        "stop_ci_high": stop["ci_high"],
        "mean_tokens": round(sum(len(o["ids"]) for o in outs) / n, 3) if n else math.nan,
        "repetition": round(repeated / grams, 6) if grams else 0.0,
    }


def _paired(rows: list[dict], seed: int) -> dict:
    """Base vs trained over per-row results of one metric, as base/trained/delta with the CI."""
    metric = rows[0]["metric"] if rows else "loss"
    weights = [r["tokens"] for r in rows] if metric == "loss" else None
    p = paired(
        [r["base"] for r in rows],
        [r["trained"] for r in rows],
        weights,
        lower_is_better=DIRECTION[metric] is not False,
        seed=seed,
    )
    p["base"], p["trained"] = p.pop("a"), p.pop("b")
    if DIRECTION[metric] is None:
        p.pop("improved"), p.pop("improved_share")
    return p


def paired_report(rows: list[dict], seed: int) -> dict:
    """The paired comparison per set (loss rows: per split, with per source) or per metric."""
    out: dict[str, dict] = {}
    sets = sorted({(r["set"], r["metric"]) for r in rows})
    for name, metric in sets:
        mine = [r for r in rows if r["set"] == name and r["metric"] == metric and r["base"] is not None]
        key = name if metric == "loss" else metric
        entry = _paired(mine, seed)
        sources = sorted({str(r["source"]) for r in mine})
        if metric == "loss":
            entry["by_source"] = {
                s: _paired([r for r in mine if str(r["source"]) == s], seed) for s in sources
            }
        out[key] = entry
    return out


def load_trained(base_dir: str | Path, sft_dir: str | Path, device: str):
    """models/sft as a model: an adapter applied to the base, or a full (merged) model."""
    import torch
    from transformers import AutoModelForCausalLM

    sft_dir = Path(sft_dir)
    if (sft_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
        with quiet_peft():
            return PeftModel.from_pretrained(base, str(sft_dir)).to(device)
    if not (sft_dir / "config.json").is_file():
        raise TrainError(f"{sft_dir}: neither an adapter nor a model (run the train stage first)")
    model: Any = AutoModelForCausalLM.from_pretrained(str(sft_dir), dtype=torch.float32)
    return model.to(device)


def _tokenizer(base_dir: str | Path, sft_dir: str | Path):
    """The trained model's tokenizer when train saved one (it may carry the chat template and
    end-of-turn token), else the base's."""
    from transformers import AutoTokenizer

    sft = Path(sft_dir)
    has = any((sft / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    return AutoTokenizer.from_pretrained(str(sft if has else base_dir))


def evaluate(
    params: EvaluateParams,
    data_dir: str | Path,
    base_dir: str | Path,
    sft_dir: str | Path,
    generations_path,
    rows_path=None,
    seed: int = 0,
    decontaminated: dict[str, bool] | None = None,
) -> dict:
    """Score base and trained models; write the generations and the per-row results; return
    reports/evaluate.json."""
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM

    try:
        dsd = load_from_disk(str(data_dir))
    except FileNotFoundError:
        raise TrainError(f"{data_dir}: no saved DatasetDict (run the export stage first)") from None
    device, _ = pick_device(params.device)
    tokenizer = _tokenizer(base_dir, sft_dir)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = {split: _rows(dsd, split, params) for split in params.splits}
    items = prompts(dsd, params)
    eos = eos_ids(tokenizer, base_dir, sft_dir)
    tasks = {name: load_items(name, spec) for name, spec in sorted(params.tasks.items())}
    judge_items = _judge_items(params, tokenizer, items) if params.judge.enabled else []
    report: dict[str, Any] = {}
    losses: dict[str, dict[str, list]] = {}
    gens: dict[str, list[dict]] = {}
    task_right: dict[str, dict[str, list[bool]]] = {}
    answers: dict[str, list[str]] = {}
    for name in ("base", "trained"):
        if name == "base":
            model: Any = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
            model = model.to(device)
        else:
            model = load_trained(base_dir, sft_dir, device)
        losses[name] = {
            split: token_losses(model, ds, params.batch_size, pad, device, desc=f"{name} {split}")
            for split, ds in rows.items()
        }
        report[name] = {split: summarize(losses[name][split], ds["source"]) for split, ds in rows.items()}
        gens[name] = generate(
            model,
            tokenizer,
            [it["prompt_ids"] for it in items],
            eos,
            params.max_new_tokens,
            params.batch_size,
            device,
            f"{name} generations",
        )
        task_right[name] = {}
        for task, task_items in tasks.items():
            spec = params.tasks[task]
            if spec.kind == "choice":
                picked = choice_scores(model, tokenizer, task_items, params.batch_size, pad, device)
                task_right[name][task] = [p == it["answer"] for p, it in zip(picked, task_items, strict=True)]
            else:
                outs = generate(
                    model,
                    tokenizer,
                    [chat_prompt(tokenizer, it["question"]) for it in task_items],
                    eos,
                    spec.max_new_tokens,
                    params.batch_size,
                    device,
                    f"{name} {task}",
                )
                task_right[name][task] = [
                    score_generated(spec.kind, o["text"], it["answer"])
                    for o, it in zip(outs, task_items, strict=True)
                ]
        if judge_items:
            if params.judge.prompts is None:
                answers[name] = [g["text"] for g in gens[name][: len(judge_items)]]
            else:
                outs = generate(
                    model,
                    tokenizer,
                    [it["prompt_ids"] for it in judge_items],
                    eos,
                    params.judge.max_new_tokens,
                    params.batch_size,
                    device,
                    f"{name} judge prompts",
                )
                answers[name] = [o["text"] for o in outs]
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

    per_row: list[dict] = []
    for split, ds in rows.items():
        for rid, src, (sb, n), (st, _) in zip(
            ds["id"], ds["source"], losses["base"][split], losses["trained"][split], strict=True
        ):
            if n:
                per_row.append(
                    {
                        "set": split,
                        "id": rid,
                        "source": src,
                        "metric": "loss",
                        "tokens": n,
                        "base": sb / n,
                        "trained": st / n,
                    }
                )
    for k, item in enumerate(items):
        b, t = gens["base"][k], gens["trained"][k]
        for metric, fb, ft in (
            ("stop", float(b["stopped"]), float(t["stopped"])),
            ("length", float(len(b["ids"])), float(len(t["ids"]))),
            ("repetition", repetition(b["ids"]), repetition(t["ids"])),
        ):
            per_row.append(
                {
                    "set": "gen",
                    "id": item["id"],
                    "source": item["source"],
                    "metric": metric,
                    "base": fb,
                    "trained": ft,
                }
            )
    for task, task_items in tasks.items():
        for k, it in enumerate(task_items):
            per_row.append(
                {
                    "set": f"task/{task}",
                    "id": it["id"],
                    "source": task,
                    "metric": "accuracy",
                    "base": float(task_right["base"][task][k]),
                    "trained": float(task_right["trained"][task][k]),
                }
            )
    loss_rows = [r for r in per_row if r["metric"] == "loss"]
    report["paired"] = paired_report(loss_rows, seed)
    report["generation"] = {
        "n": len(items),
        "base": _gen_summary(gens["base"]),
        "trained": _gen_summary(gens["trained"]),
        "delta": paired_report([r for r in per_row if r["set"] == "gen"], seed),
    }
    report["tasks"] = {}
    for task, task_items in tasks.items():
        n = len(task_items)
        entry: dict[str, Any] = {"n": n, "kind": params.tasks[task].kind}
        for name in ("base", "trained"):
            w = wilson(sum(task_right[name][task]), n)
            entry[name] = {"accuracy": w["rate"], "ci_low": w["ci_low"], "ci_high": w["ci_high"]}
        entry["delta"] = _paired([r for r in per_row if r["set"] == f"task/{task}"], seed)
        if decontaminated is not None:
            entry["decontaminated"] = bool(decontaminated.get(task, False))
        report["tasks"][task] = entry
    if judge_items:
        from sftpipe.model.judge import judge

        judged = [
            {**it, "base": answers["base"][k], "trained": answers["trained"][k]}
            for k, it in enumerate(judge_items)
        ]
        report["judge"], judge_rows = judge(judged, params.judge, seed)
        per_row += [
            {
                "set": "judge",
                "id": r["id"],
                "source": r["source"],
                "metric": "win",
                "base": None,
                "trained": r["score"],
            }
            for r in judge_rows
        ]

    records = [
        {
            "id": item["id"],
            "source": item["source"],
            "prompt": tokenizer.decode(item["prompt_ids"]),
            "reference": tokenizer.decode(item["reference_ids"], skip_special_tokens=True),
            "base": base["text"],
            "trained": trained["text"],
            "stopped": {"base": base["stopped"], "trained": trained["stopped"]},
        }
        for item, base, trained in zip(items, gens["base"], gens["trained"], strict=True)
    ]
    write_jsonl(generations_path, records)
    if rows_path is not None:
        write_rows(rows_path, per_row)
    report["generations"] = len(records)
    return report


def write_rows(path, rows: list[dict]) -> None:
    """The per-row file, sorted by (set, metric, id); floats rounded so it diffs cleanly."""

    def clean(r: dict) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()}

    write_jsonl(path, [clean(r) for r in sorted(rows, key=lambda r: (r["set"], r["metric"], r["id"]))])
