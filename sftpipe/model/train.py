"""train: supervised fine-tuning of the base model on the exported dataset (LoRA or full).

Reads the `datasets` DatasetDict written by export (data/processed/hf) as it is: `input_ids` and
`labels` are already rendered, tokenized and masked (-100 wherever the loss must not look), so
nothing is re-templated here. A batch pads `input_ids` with the pad token and `labels` with -100
(`DataCollatorForSeq2Seq`), or, with `packing`, concatenates its examples into one row with
position ids restarting at each example (`DataCollatorWithFlattening`), which the Llama attention
turns into a block-diagonal mask, so packed examples never attend to each other.

Checkpoints go to their own folder with a fingerprint of everything that shapes the run (params,
seed, data and base model digests); `resume` continues from the last one only when the
fingerprint matches, so a changed run never picks up a stale checkpoint.
"""

from __future__ import annotations

import csv
import io
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

from sftpipe.core.accounting import Tally
from sftpipe.core.config import Section
from sftpipe.core.errors import SftpipeError
from sftpipe.core.jsonio import atomic_path, dumps, loads

Scheduler = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
]
FINGERPRINT = "sftpipe_run.json"


class LoraParams(Section):
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    """Module names that get adapters (or ["all-linear"])."""


class TrainParams(Section):
    """params.yaml `train:`."""

    method: Literal["lora", "full"] = "lora"
    """LoRA adapters on a frozen base, or full fine-tuning."""
    lora: LoraParams = LoraParams()
    merge_adapter: bool = False
    """LoRA only: write the base with the adapter merged in (a plain model) instead of the adapter."""
    epochs: float = 1.0
    """Passes over the training rows (when max_steps is -1)."""
    max_steps: int = 20
    """Optimizer steps; -1 = run `epochs` instead."""
    learning_rate: float = 2e-4
    """Peak learning rate of AdamW."""
    lr_scheduler: Scheduler = "cosine"
    """Learning-rate schedule after warm-up."""
    warmup: float = 0.1
    """Warm-up: a share of the steps when below 1, else a number of steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    batch_size: int = 4
    """Rows per device per step (with packing: rows concatenated into one)."""
    grad_accum: int = 1
    """Gradient accumulation steps (effective batch = batch_size x grad_accum x devices)."""
    eval_batch_size: int = 8
    """Rows per device per evaluation step."""
    logging_steps: int = 1
    """Log the training loss every this many steps (the loss curve's resolution)."""
    eval_steps: int = 0
    """Evaluate on val every this many steps; 0 = only at the end."""
    save_steps: int = 10
    """Checkpoint every this many steps."""
    save_total_limit: int = 2
    """Checkpoints kept."""
    max_train_samples: int | None = 80
    """Train on at most this many rows (a seeded random subset); null = all."""
    max_eval_samples: int | None = 16
    """Evaluate on at most this many val rows (the first by id hash); null = all."""
    max_length: int | None = 256
    """Use only rows of at most this many tokens (longer ones are skipped, never cut); null = all."""
    packing: bool = False
    """Padding-free batches: rows concatenated, attention kept within each row."""
    resume: bool = True
    """Continue from the last checkpoint of the same run (same params, data and base) if there is one."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% slower)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = CUDA with bf16 when present, else CPU float32."""

    @model_validator(mode="after")
    def _check(self) -> TrainParams:
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError("max_steps must be positive, or -1 to run `epochs`")
        if self.merge_adapter and self.method != "lora":
            raise ValueError("merge_adapter needs method: lora")
        for name in ("batch_size", "grad_accum", "eval_batch_size", "logging_steps", "save_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        return self


class TrainError(SftpipeError, RuntimeError):
    """The data or base model cannot be trained on; one line naming what is wrong."""


@dataclass
class TrainResult:
    tally: Tally
    report: dict
    log_history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


# --- data ----------------------------------------------------------------------------------


def id_order(ds) -> list[int]:
    """Row indices ordered by a hash of each row's id: a stable sample that does not depend on the
    row order export chose."""
    import hashlib

    ids = ds["id"]
    return sorted(range(len(ids)), key=lambda i: hashlib.sha1(ids[i].encode()).hexdigest())


def select_rows(ds, max_length: int | None, tally: Tally | None = None):
    """Rows that fit `max_length` and have at least one trained label; drops are counted.

    Everything derived from the loaded dataset stays in memory: `datasets` would otherwise write
    cache files into the dataset's own folder, a DVC output of the export stage.
    """
    n_in = len(ds)
    flags = ds.map(
        lambda b: {
            "_long": [max_length is not None and len(x) > max_length for x in b["input_ids"]],
            "_empty": [all(v == -100 for v in x) for x in b["labels"]],
        },
        batched=True,
        remove_columns=ds.column_names,
        desc="checking rows",
        keep_in_memory=True,
    )
    keep = [
        i for i, (lg, em) in enumerate(zip(flags["_long"], flags["_empty"], strict=True)) if not lg and not em
    ]
    if tally is not None:
        tally.seen(n_in)
        tally.dropped["too_long"] += sum(flags["_long"])
        tally.dropped["no_labels"] += sum(
            1 for lg, em in zip(flags["_long"], flags["_empty"], strict=True) if em and not lg
        )
    return ds.select(keep, keep_in_memory=True)


def load_splits(data_dir: str | Path, params: TrainParams, seed: int):
    """(train, val, tally): the rows training uses, with every skipped row counted by reason."""
    from datasets import load_from_disk

    try:
        dsd = load_from_disk(str(data_dir))
    except FileNotFoundError:
        raise TrainError(f"{data_dir}: no saved DatasetDict (run the export stage first)") from None
    missing = [s for s in ("train", "val") if s not in dsd]
    if missing:
        raise TrainError(f"{data_dir}: no {' or '.join(missing)} split (have: {', '.join(dsd)})")
    for col in ("input_ids", "labels", "id"):
        if col not in dsd["train"].column_names:
            raise TrainError(f"{data_dir}: train split has no {col!r} column")
    tally = Tally()
    train = select_rows(dsd["train"], params.max_length, tally)
    if params.max_train_samples is not None and len(train) > params.max_train_samples:
        tally.dropped["over_max_train_samples"] += len(train) - params.max_train_samples
        train = train.shuffle(seed=seed, keep_in_memory=True).select(
            range(params.max_train_samples), keep_in_memory=True
        )
    if len(train) == 0:
        raise TrainError(f"{data_dir}: no train row fits train.max_length={params.max_length}")
    tally.kept(len(train))
    val = select_rows(dsd["val"], params.max_length)
    order = id_order(val)[: params.max_eval_samples]
    val = val.select(sorted(order), keep_in_memory=True)
    columns = ["input_ids", "labels"]
    return train, val.select_columns(columns), tally


# --- model ---------------------------------------------------------------------------------


def pick_device(device: str) -> tuple[str, bool]:
    """(device, bf16): CUDA with bf16 when available (and asked), else CPU float32."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise TrainError("train.device: cuda was asked for but no CUDA device is available")
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return "cuda", torch.cuda.is_bf16_supported()
    return "cpu", False


def build_model(base_dir: str | Path, params: TrainParams, seed: int, packing_attn: bool):
    import torch
    from transformers import AutoModelForCausalLM, set_seed

    set_seed(seed)  # LoRA's initial weights come from the global RNG
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if packing_attn:
        # eager/sdpa/flex all honour packed position ids through the mask; say it explicitly so
        # a model whose default attention ignores them is not picked up silently.
        kwargs["attn_implementation"] = "sdpa"
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), **kwargs)
    # No KV cache in training. It matters beyond memory: with a cache, the mask code skips its
    # packed-sequence detection, and packed rows would attend to each other.
    model.config.use_cache = False
    if params.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = params.lora
        modules: Any = lora.target_modules
        if modules == ["all-linear"]:
            modules = "all-linear"
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    return model


def collator(tokenizer, packing: bool):
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if packing:
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")


# --- run -----------------------------------------------------------------------------------


def fingerprint(params: TrainParams, seed: int, data_md5: str | None, base_md5: str | None) -> dict:
    return {"params": params.model_dump(mode="json"), "seed": seed, "data": data_md5, "base": base_md5}


def checkpoint_to_resume(ckpt_dir: Path, fp: dict, resume: bool) -> str | None:
    """The last checkpoint of the same run, or None; a folder from another run is cleared."""
    from transformers.trainer_utils import get_last_checkpoint

    marker = ckpt_dir / FINGERPRINT
    same = marker.is_file() and loads(marker.read_bytes()) == fp
    if not same and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(dumps(fp))
    return get_last_checkpoint(str(ckpt_dir)) if resume and same else None


def training_args(params: TrainParams, seed: int, ckpt_dir: Path, device: str, bf16: bool, has_eval: bool):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(ckpt_dir),
        seed=seed,
        data_seed=seed,
        num_train_epochs=params.epochs,
        max_steps=params.max_steps,
        learning_rate=params.learning_rate,
        lr_scheduler_type=params.lr_scheduler,
        warmup_steps=params.warmup,
        weight_decay=params.weight_decay,
        max_grad_norm=params.max_grad_norm,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.eval_batch_size,
        gradient_accumulation_steps=params.grad_accum,
        activation_checkpointing=params.gradient_checkpointing,
        logging_steps=params.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_eval and params.eval_steps else "no",
        eval_steps=params.eval_steps or None,
        save_strategy="steps",
        save_steps=params.save_steps,
        save_total_limit=params.save_total_limit,
        use_cpu=device == "cpu",
        bf16=bf16,
        optim="adamw_torch",
        remove_unused_columns=False,
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=None,
        log_level="warning",
    )


def loss_curve(log_history: list[dict]) -> list[dict]:
    """One row per logged training step: step, loss, learning_rate, grad_norm."""
    rows = []
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            rows.append(
                {
                    "step": entry["step"],
                    "loss": round(float(entry["loss"]), 6),
                    "learning_rate": float(entry.get("learning_rate", math.nan)),
                    "grad_norm": round(float(entry.get("grad_norm", math.nan)), 6),
                }
            )
    return rows


def write_curve(path: str | Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=["step", "loss", "learning_rate", "grad_norm"], lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(buf.getvalue(), encoding="utf-8")


def save_model(
    trainer, tokenizer, params: TrainParams, out_dir: str | Path, adapter_dir: Path | None
) -> None:
    """models/sft: the adapter (or the merged / fully trained model) with the tokenizer."""
    model = trainer.model
    model.config.use_cache = True  # for whoever generates with the saved model
    with atomic_path(out_dir) as tmp:
        if params.method == "lora" and params.merge_adapter:
            if adapter_dir is not None:
                model.save_pretrained(adapter_dir)
            model = model.merge_and_unload()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if params.method == "lora" and not params.merge_adapter:
            # The card peft writes names the absolute base path of whoever ran it; it is no
            # part of the adapter and would make the folder's bytes differ between machines.
            (Path(tmp) / "README.md").unlink(missing_ok=True)


def train(
    params: TrainParams,
    seed: int,
    data_dir: str | Path,
    base_dir: str | Path,
    out_dir: str | Path,
    ckpt_dir: str | Path,
    digests: dict[str, str | None] | None = None,
    adapter_dir: Path | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Fine-tune, save models/sft, and return the accounting and the report.

    `stop_after` ends the run after that many steps, as an interrupted run would (only what was
    checkpointed survives); tests use it to check that `resume` reaches the same result. The
    report is empty for a stopped run and in every process but the main one.
    """
    import time

    from transformers import AutoTokenizer, Trainer, TrainerCallback

    start = time.perf_counter()
    digests = digests or {}
    train_ds, val_ds, tally = load_splits(data_dir, params, seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    if tokenizer.pad_token is None:
        raise TrainError(f"{base_dir}: the tokenizer has no pad token (the format stage sets one)")
    tokenizer.padding_side = "right"
    device, bf16 = pick_device(params.device)
    model = build_model(base_dir, params, seed, params.packing)
    ckpt_dir = Path(ckpt_dir)
    fp = fingerprint(params, seed, digests.get("data"), digests.get("base"))
    resume_from = checkpoint_to_resume(ckpt_dir, fp, params.resume)

    class StopAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            # Like a killed run: whatever was not checkpointed yet is lost.
            if stop_after is not None and state.global_step >= stop_after:
                control.should_training_stop = True
            return control

    trainer = Trainer(
        model=model,
        args=training_args(params, seed, ckpt_dir, device, bf16, len(val_ds) > 0),
        train_dataset=train_ds.select_columns(["input_ids", "labels"]),
        eval_dataset=val_ds if len(val_ds) else None,
        data_collator=collator(tokenizer, params.packing),
        processing_class=tokenizer,
        callbacks=[StopAfter()] if stop_after is not None else None,
    )
    trainer.train(resume_from_checkpoint=resume_from)
    history = list(trainer.state.log_history)
    if stop_after is not None and trainer.state.global_step < trainer.state.max_steps:
        return TrainResult(tally, {}, history, time.perf_counter() - start)
    eval_metrics = trainer.evaluate() if len(val_ds) else {}  # every process: it gathers across them
    if not trainer.is_world_process_zero():  # under torchrun / accelerate only the main process writes
        return TrainResult(tally, {}, history, time.perf_counter() - start)
    save_model(trainer, tokenizer, params, out_dir, adapter_dir)

    curve = loss_curve(history)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    eval_loss = eval_metrics.get("eval_loss")
    report = {
        "method": params.method,
        "merged": params.merge_adapter,
        "device": device,
        "dtype": "bfloat16" if bf16 else "float32",
        "packing": params.packing,
        "steps": trainer.state.global_step,
        "epochs": round(float(trainer.state.epoch or 0.0), 6),
        "resumed_from_step": int(Path(resume_from).name.split("-")[-1]) if resume_from else 0,
        "trainable_params": n_trainable,
        "total_params": n_total,
        "train_tokens": int(sum(len(x) for x in train_ds["input_ids"])),
        "loss_first": curve[0]["loss"] if curve else None,
        "loss_last": curve[-1]["loss"] if curve else None,
        "eval_rows": len(val_ds),
        "eval_loss": round(float(eval_loss), 6) if eval_loss is not None else None,
        "eval_perplexity": round(math.exp(eval_loss), 6) if eval_loss is not None else None,
    }
    return TrainResult(tally, report, history, time.perf_counter() - start)


def write_outputs(result: TrainResult, report_path: str | Path, curve_path: str | Path) -> dict:
    write_curve(curve_path, loss_curve(result.log_history))
    return result.tally.write(report_path, **result.report)
