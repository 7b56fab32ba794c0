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

The saved model carries the template it was trained on: format's template as Jinja
(`sftpipe.data.format.templates.chat_template`, read from the dataset's metadata.json), and a
generation config whose `eos_token_id` lists the template's end-of-turn token, so generation stops
where training taught it to.

On CUDA the weights load in bf16 (fp16 where bf16 is unsupported); `qlora` loads the base in 4 bits
(bitsandbytes). Several devices: `devices` > 1 re-runs the stage under `torch.distributed.run`
(DDP; `accelerate_config` names an accelerate config file, e.g. FSDP, and uses `accelerate launch`
instead). Only rank 0 writes models/, reports and MLflow, and it rotates checkpoints after a barrier.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

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
Attention = Literal["sdpa", "eager", "flash_attention_2", "flex_attention"]
FINGERPRINT = "sftpipe_run.json"
# Written when a run finishes: its checkpoints are history, not a point to resume from.
COMPLETE = "sftpipe_complete"
METADATA = "metadata.json"  # export's, beside the DatasetDict: the template the rows were rendered with


class LoraParams(Section):
    r: Annotated[int, Field(ge=1)] = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    """Dropout on the LoRA input."""
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    """Module names that get adapters (or ["all-linear"])."""


class TrainParams(Section):
    """params.yaml `train:`."""

    method: Literal["lora", "qlora", "full"] = "lora"
    """LoRA adapters on a frozen base, QLoRA (a 4-bit base, CUDA and bitsandbytes only), or full fine-tuning."""
    lora: LoraParams = LoraParams()
    merge_adapter: bool = False
    """LoRA/QLoRA: write the base with the adapter merged in (a plain model) instead of the adapter."""
    registered_model: str | None = None
    """Log models/sft as an MLflow transformers model (with the base weights, so it serves alone)
    and register it under this name; null = only the adapter files as artifacts."""
    epochs: Annotated[float, Field(gt=0)] = 1.0
    """Passes over the training rows (when max_steps is -1)."""
    max_steps: Annotated[int, Field(ge=-1)] = 6
    """Optimizer steps; -1 = run `epochs` instead."""
    learning_rate: Annotated[float, Field(gt=0)] = 2e-4
    """Peak learning rate of AdamW."""
    lr_scheduler: Scheduler = "cosine"
    """Learning-rate schedule after warm-up."""
    warmup: Annotated[float, Field(ge=0)] = 0.1
    """Warm-up: a share of the steps when below 1, else a number of steps."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """AdamW weight decay."""
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    """Gradient clipping norm."""
    batch_size: Annotated[int, Field(ge=1)] = 4
    """Rows per device per step (with packing and batch_tokens null: rows concatenated into one)."""
    batch_tokens: Annotated[int, Field(ge=1)] | None = 1024
    """With packing: tokens per device per step, whole rows packed up to it (a longer row goes alone); null = batch_size rows."""
    grad_accum: Annotated[int, Field(ge=1)] = 1
    """Gradient accumulation steps (effective batch = batch_size x grad_accum x devices)."""
    eval_batch_size: Annotated[int, Field(ge=1)] = 2
    """Rows per device per evaluation step (with packing: concatenated into one)."""
    logging_steps: Annotated[int, Field(ge=1)] = 1
    """Log the training loss every this many steps (the loss curve's resolution)."""
    eval_steps: Annotated[int, Field(ge=0)] = 0
    """Evaluate on val every this many steps; 0 = only at the end."""
    save_steps: Annotated[int, Field(ge=1)] = 10
    """Checkpoint every this many steps."""
    save_total_limit: Annotated[int, Field(ge=1)] = 2
    """Checkpoints kept."""
    max_train_samples: Annotated[int, Field(ge=1)] | None = 80
    """Train on at most this many rows (a seeded random subset); null = all."""
    max_eval_samples: Annotated[int, Field(ge=1)] | None = 4
    """Evaluate on at most this many val rows (the first by id hash); null = all."""
    max_length: Annotated[int, Field(ge=1)] | None = None
    """Use only rows of at most this many tokens (longer ones are counted as too_long, never cut); null = every row (up to format.max_length)."""
    packing: bool = True
    """Padding-free batches: rows concatenated, attention kept within each row."""
    resume: bool = True
    """Continue from the last checkpoint of the same run (same params, data and base) if there is one."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% slower)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = CUDA when present (bf16, or fp16 where bf16 is unsupported), else CPU float32."""
    devices: Literal["auto"] | int = "auto"
    """Processes (one per GPU): auto = every visible GPU (1 on CPU); more than 1 runs the stage under torchrun (DDP)."""
    accelerate_config: str | None = None
    """An accelerate config file (e.g. FSDP); the stage then runs under `accelerate launch` with it."""
    attn_implementation: Attention = "sdpa"
    """Attention kernel: sdpa, eager, flash_attention_2 (CUDA, needs flash-attn) or flex_attention."""
    deterministic: bool = True
    """torch's deterministic algorithms where they exist (a warning names an op without one); on
    CUDA also cuBLAS's fixed workspace. false: the last few percent of GPU speed, bytes may vary."""
    liger: bool = False
    """Liger kernels (fused RMSNorm, RoPE, SwiGLU, cross-entropy; CUDA, needs liger-kernel)."""
    neftune_alpha: float | None = None
    """NEFTune: noise of this scale on the input embeddings while training (e.g. 5); null = off."""

    @model_validator(mode="after")
    def _check(self) -> TrainParams:
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError("max_steps must be positive, or -1 to run `epochs`")
        if self.merge_adapter and self.method == "full":
            raise ValueError("merge_adapter needs method: lora or qlora")
        if self.devices != "auto" and self.devices < 1:
            raise ValueError("devices must be auto or at least 1")
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise ValueError("batch_tokens must be at least 1, or null")
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
    flags = ds.select_columns(["input_ids", "labels"]).map(
        lambda b: {
            "_long": [max_length is not None and len(x) > max_length for x in b["input_ids"]],
            "_empty": [all(v == -100 for v in x) for x in b["labels"]],
        },
        batched=True,
        remove_columns=["input_ids", "labels"],
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
    available = dsd["train"]
    train = select_rows(available, params.max_length, tally)
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


def usage(ds) -> dict:
    """Rows, tokens and trained tokens (labels other than -100) of a split."""
    counts = ds.map(
        lambda b: {
            "_n": [len(x) for x in b["input_ids"]],
            "_t": [sum(v != -100 for v in x) for x in b["labels"]],
        },
        batched=True,
        remove_columns=ds.column_names,
        keep_in_memory=True,
        desc="counting tokens",
    )
    return {"rows": len(ds), "tokens": int(sum(counts["_n"])), "trained_tokens": int(sum(counts["_t"]))}


def dataset_template(data_dir: str | Path) -> str | None:
    """The format template the rows were rendered with (export's metadata.json beside the
    DatasetDict), or None when there is no metadata."""
    meta = Path(data_dir).parent / METADATA
    if not meta.is_file():
        return None
    return loads(meta.read_bytes()).get("template")


# --- model ---------------------------------------------------------------------------------


def pick_device(device: str) -> tuple[str, bool]:
    """(device, bf16): CUDA with bf16 when available (and asked), else CPU float32."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise TrainError("train.device: cuda was asked for but no CUDA device is available")
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return "cuda", torch.cuda.is_bf16_supported()
    return "cpu", False


def precision(device: str) -> str:
    """The training precision: bf16 on CUDA that has it, fp16 on older CUDA, fp32 on CPU."""
    import torch

    if device != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _need(module: str, what: str, package: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise TrainError(f"{what} needs the {package} package (pip install -r requirements-gpu.txt)")


def check_gpu_options(params: TrainParams, device: str) -> None:
    """One line for a setting this machine cannot run, before any model loads."""
    if params.method == "qlora":
        if device != "cuda":
            raise TrainError(
                "train.method: qlora needs a CUDA GPU (bitsandbytes 4-bit); use lora on this machine"
            )
        _need("bitsandbytes", "train.method: qlora", "bitsandbytes")
    if params.attn_implementation == "flash_attention_2":
        if device != "cuda":
            raise TrainError("train.attn_implementation: flash_attention_2 needs a CUDA GPU; use sdpa")
        _need("flash_attn", "train.attn_implementation: flash_attention_2", "flash-attn")
    if params.liger:
        if device != "cuda":
            raise TrainError("train.liger: Liger kernels need a CUDA GPU; set it to false")
        _need("liger_kernel", "train.liger", "liger-kernel")


def build_model(base_dir: str | Path, params: TrainParams, seed: int, prec: str = "fp32"):
    import torch
    from transformers import AutoModelForCausalLM, set_seed

    set_seed(seed)  # LoRA's initial weights come from the global RNG
    # bf16 weights on CUDA; fp16 ones only under adapters (fp16 AMP cannot train fp16 master weights).
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16 if params.method != "full" else torch.float32}
    kwargs: dict[str, Any] = {"dtype": dtype.get(prec, torch.float32)}
    # sdpa/eager/flex honour packed position ids through the mask, flash_attention_2 through its
    # varlen path; say it explicitly so a default that ignores them is never picked up silently.
    kwargs["attn_implementation"] = params.attn_implementation
    if params.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"],
        )
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    model: Any = AutoModelForCausalLM.from_pretrained(str(base_dir), **kwargs)
    # No KV cache in training. It matters beyond memory: with a cache, the mask code skips its
    # packed-sequence detection, and packed rows would attend to each other.
    model.config.use_cache = False
    if params.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=params.gradient_checkpointing
        )
    if params.method in ("lora", "qlora"):
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
        with quiet_peft():
            model = get_peft_model(model, config)
    return model


@contextlib.contextmanager
def quiet_peft():
    """peft probes transformers' deprecated `is_gradient_checkpointing`: a FutureWarning on every
    adapter load that users can do nothing about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        yield


def collator(tokenizer, packing: bool):
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if packing:
        flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)

        def packed(features: list[dict]):
            # items of a PackedRows dataset are packs of rows; plain rows pass as they are
            return flatten([r for f in features for r in f.get("rows", [f])])

        return packed
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")


def pack(lengths: list[int], budget: int, seed: int) -> list[list[int]]:
    """Row indices in packs of at most `budget` tokens: rows in a seeded random order, each pack
    filled with whole rows until the next would not fit (a row longer than `budget` goes alone)."""
    import random

    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    packs: list[list[int]] = []
    size = 0
    for i in order:
        if not packs or size + lengths[i] > budget:
            packs.append([])
            size = 0
        packs[-1].append(i)
        size += lengths[i]
    return packs


class PackedRows:
    """A map-style dataset whose items are packs of rows ({"rows": [...]}) of about the same
    number of tokens: one pack is one device's step when `batch_tokens` is set."""

    def __init__(self, ds, budget: int, seed: int):
        self.ds = ds.select_columns(["input_ids", "labels"])
        lengths = self.ds.map(
            lambda b: {"_n": [len(x) for x in b["input_ids"]]},
            batched=True,
            remove_columns=self.ds.column_names,
            keep_in_memory=True,
            desc="packing rows",
        )["_n"]
        self.packs = pack(list(lengths), budget, seed)

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, k: int) -> dict:
        return {"rows": [self.ds[i] for i in self.packs[k]]}


# --- run -----------------------------------------------------------------------------------


def fingerprint(params: TrainParams, seed: int, data_md5: str | None, base_md5: str | None) -> dict:
    # registration happens after training, so it never invalidates a checkpoint
    shaping = params.model_dump(mode="json", exclude={"registered_model"})
    return {"params": shaping, "seed": seed, "data": data_md5, "base": base_md5}


def barrier() -> None:
    """Wait for every process of a distributed run (nothing in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def checkpoint_to_resume(ckpt_dir: Path, fp: dict, resume: bool, main: bool = True) -> str | None:
    """The last checkpoint of the same run, or None; a folder from another run is cleared. Only
    the main process (`main`) clears and marks the folder; the others wait for it."""
    from transformers.trainer_utils import get_last_checkpoint

    marker = ckpt_dir / FINGERPRINT
    same = marker.is_file() and loads(marker.read_bytes()) == fp
    if (ckpt_dir / COMPLETE).exists():  # a finished run is re-run from the start, never extended
        same = False
    barrier()  # every process has read the marker before the main one rewrites it
    if main:
        if not same and ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        marker.write_bytes(dumps(fp))
    barrier()
    return get_last_checkpoint(str(ckpt_dir)) if resume and same else None


def rotation_callback(limit: int):
    """Keeps the last `limit` checkpoints: after every process saved its part of a checkpoint
    (a barrier), the main process alone deletes the oldest ones."""
    from transformers import TrainerCallback
    from transformers.trainer_utils import rotate_checkpoints

    class Rotate(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            barrier()
            if state.is_world_process_zero:
                rotate_checkpoints(args.output_dir, save_total_limit=limit, use_mtime=False)
            barrier()
            return control

    return Rotate()


def training_args(params: TrainParams, seed: int, ckpt_dir: Path, device: str, prec: str, has_eval: bool):
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
        per_device_train_batch_size=1 if params.packing and params.batch_tokens else params.batch_size,
        per_device_eval_batch_size=params.eval_batch_size,
        gradient_accumulation_steps=params.grad_accum,
        activation_checkpointing=params.gradient_checkpointing,
        logging_steps=params.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_eval and params.eval_steps else "no",
        eval_steps=params.eval_steps or None,
        save_strategy="steps",
        save_steps=params.save_steps,
        save_total_limit=None,  # rotation_callback: after a barrier, on the main process only
        use_cpu=device == "cpu",
        bf16=prec == "bf16",
        fp16=prec == "fp16",
        use_liger_kernel=params.liger,
        neftune_noise_alpha=params.neftune_alpha,
        # packed batches hold no padding (and a pad id equal to EOS would hide trained EOS tokens)
        include_num_input_tokens_seen="all" if params.packing else "non_padding",
        ddp_find_unused_parameters=False,
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


def counting_trainer():
    """A Trainer that counts the rows and trained tokens its optimizer steps take (in this run:
    a resumed run counts from where it resumed), summed over processes by `seen()`."""
    from transformers import Trainer

    class Counting(Trainer):
        rows_seen = 0
        trained_seen = 0

        def training_step(self, model, inputs, num_items_in_batch=None):
            labels = inputs["labels"]
            if "position_ids" in inputs and "attention_mask" not in inputs:  # packed: rows restart at 0
                self.rows_seen += int((inputs["position_ids"] == 0).sum())
            else:
                self.rows_seen += int(labels.shape[0])
            self.trained_seen += int((labels != -100).sum())
            return super().training_step(model, inputs, num_items_in_batch)

        def seen(self) -> tuple[int, int]:
            import torch

            counts = torch.tensor([self.rows_seen, self.trained_seen], device=self.args.device)
            counts = self.accelerator.reduce(counts, reduction="sum")
            return int(counts[0]), int(counts[1])

    return Counting


def carry_template(tokenizer, template: str | None) -> list[int]:
    """Give `tokenizer` the chat template of `template` (format's, as Jinja) and return the token
    ids generation must stop at: EOS and the template's end-of-turn token. With no known
    template, the tokenizer keeps its own (the `tokenizer` template)."""
    from sftpipe.data.format.templates import chat_template, end_of_turn

    name = template or "tokenizer"
    jinja = chat_template(name, tokenizer)
    if jinja is not None:
        tokenizer.chat_template = jinja
    stop = [tokenizer.eos_token_id]
    if name != "tokenizer" or tokenizer.chat_template:
        stop.append(tokenizer.convert_tokens_to_ids(end_of_turn(name, tokenizer)))
    return list(dict.fromkeys(t for t in stop if t is not None))


def save_model(
    trainer,
    tokenizer,
    params: TrainParams,
    out_dir: str | Path,
    adapter_dir: Path | None,
    stop_ids: list[int],
) -> None:
    """models/sft: the adapter (or the merged / fully trained model) with the tokenizer (carrying the
    trained template) and a generation config that stops at the template's end of turn."""
    import copy

    model = trainer.model
    model.config.use_cache = True  # for whoever generates with the saved model
    for config in getattr(model, "peft_config", {}).values():
        # peft keeps target_modules as a set and saves it in hash order, which PYTHONHASHSEED
        # changes per process: adapter_config.json (and models/sft's hash) differed run to run
        if isinstance(config.target_modules, set):
            config.target_modules = sorted(config.target_modules)
    gen = copy.deepcopy(model.generation_config)
    gen.eos_token_id = stop_ids if len(stop_ids) > 1 else stop_ids[0]
    gen.pad_token_id = tokenizer.pad_token_id
    with atomic_path(out_dir) as tmp:
        if params.method != "full" and params.merge_adapter:
            if adapter_dir is not None:
                model.save_pretrained(adapter_dir)
            model = model.merge_and_unload()
        model.generation_config = gen
        model.save_pretrained(tmp)
        gen.save_pretrained(tmp)  # an adapter folder gets none from peft
        tokenizer.save_pretrained(tmp)
        if params.method != "full" and not params.merge_adapter:
            # The card peft writes names the absolute base path of whoever ran it; it is no
            # part of the adapter and would make the folder's bytes differ between machines.
            (Path(tmp) / "README.md").unlink(missing_ok=True)


def smoothed(curve: list[dict], share: float = 0.1) -> tuple[float | None, float | None]:
    """Mean loss of the first and of the last `share` of the logged steps (at least one each)."""
    if not curve:
        return None, None
    n = max(1, round(len(curve) * share))
    losses = [r["loss"] for r in curve]
    return round(sum(losses[:n]) / n, 6), round(sum(losses[-n:]) / n, 6)


def devices_wanted(params: TrainParams) -> int:
    """Processes to run: `devices`, or auto = every visible GPU (1 without CUDA or on CPU)."""
    if params.devices != "auto":
        return params.devices
    if params.device == "cpu":
        return 1
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def launch_command(params: TrainParams, argv: list[str]) -> list[str] | None:
    """The command that re-runs this stage script with one process per device (torchrun, or
    accelerate launch with `accelerate_config`), or None when this process should train itself:
    one device, or already under a launcher."""
    if "LOCAL_RANK" in os.environ or "RANK" in os.environ:
        return None
    n = devices_wanted(params)
    if params.accelerate_config:
        if not Path(params.accelerate_config).is_file():
            raise TrainError(f"train.accelerate_config: {params.accelerate_config}: no such file")
        cpu = ["--cpu"] if params.device == "cpu" else []
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                params.accelerate_config, "--num_processes", str(n), *cpu, *argv]  # fmt: skip
    if n <= 1:
        return None
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), *argv]


def deterministic(on: bool) -> None:
    """torch's deterministic algorithms on or off (`train.deterministic`)."""
    import torch

    if on:  # cuBLAS reduces in a fixed order only with a fixed workspace, set before CUDA starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)


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
    template: str | None = None,
) -> TrainResult:
    """Fine-tune, save models/sft, and return the accounting and the report.

    `template` is format's template (default: the one in metadata.json beside `data_dir`); the
    saved tokenizer carries it. `stop_after` ends the run after that many steps, as an interrupted
    run would (only what was checkpointed survives); tests use it to check that `resume` reaches
    the same result. The report is empty for a stopped run and in every process but the main one.
    """
    import time

    from transformers import AutoTokenizer, TrainerCallback

    start = time.perf_counter()
    digests = digests or {}
    device, _ = pick_device(params.device)
    check_gpu_options(params, device)
    deterministic(params.deterministic)
    prec = precision(device)
    train_ds, val_ds, tally = load_splits(data_dir, params, seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    if tokenizer.pad_token is None:  # a models/base from before base_model saved one
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    template = template or dataset_template(data_dir)
    stop_ids = carry_template(tokenizer, template)
    args = training_args(params, seed, Path(ckpt_dir), device, prec, len(val_ds) > 0)  # starts DDP
    model = build_model(base_dir, params, seed, prec)
    ckpt_dir = Path(ckpt_dir)
    fp = fingerprint(params, seed, digests.get("data"), digests.get("base"))
    resume_from = checkpoint_to_resume(ckpt_dir, fp, params.resume, args.process_index == 0)

    class StopAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            # Like a killed run: whatever was not checkpointed yet is lost.
            if stop_after is not None and state.global_step >= stop_after:
                control.should_training_stop = True
            return control

    callbacks = [rotation_callback(params.save_total_limit)]
    if stop_after is not None:
        callbacks.append(StopAfter())
    trainer = counting_trainer()(
        model=model,
        args=args,
        train_dataset=PackedRows(train_ds, params.batch_tokens, seed)
        if params.packing and params.batch_tokens
        else train_ds.select_columns(["input_ids", "labels"]),
        eval_dataset=val_ds if len(val_ds) else None,
        data_collator=collator(tokenizer, params.packing),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume_from)
    history = list(trainer.state.log_history)
    if stop_after is not None and trainer.state.global_step < trainer.state.max_steps:
        return TrainResult(tally, {}, history, time.perf_counter() - start)
    eval_metrics = trainer.evaluate() if len(val_ds) else {}  # every process: it gathers across them
    rows_seen, trained_seen = trainer.seen()  # every process: a collective
    if not trainer.is_world_process_zero():  # under torchrun / accelerate only the main process writes
        barrier()
        return TrainResult(tally, {}, history, time.perf_counter() - start)
    save_model(trainer, tokenizer, params, out_dir, adapter_dir, stop_ids)
    (ckpt_dir / COMPLETE).touch()
    barrier()

    curve = loss_curve(history)
    loss_start, loss_end = smoothed(curve)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    eval_loss = eval_metrics.get("eval_loss")
    from datasets import load_from_disk

    available = usage(load_from_disk(str(data_dir))["train"])
    used = usage(train_ds)
    report = {
        "method": params.method,
        "merged": params.merge_adapter,
        "device": device,
        "processes": args.world_size,
        "dtype": {"bf16": "bfloat16", "fp16": "float16"}.get(prec, "float32"),
        "attn_implementation": params.attn_implementation,
        "packing": params.packing,
        "batch_tokens": params.batch_tokens if params.packing else None,
        "template": template,
        "stop_token_ids": stop_ids,
        "steps": trainer.state.global_step,
        "epochs": round(float(trainer.state.epoch or 0.0), 6),
        "resumed_from_step": int(Path(resume_from).name.split("-")[-1]) if resume_from else 0,
        "trainable_params": n_trainable,
        "total_params": n_total,
        # available: the train split; used: the rows training drew from (after max_length and
        # max_train_samples); seen: what the optimizer steps of this run took (repeats count again)
        "rows": {"available": available["rows"], "used": used["rows"], "seen": rows_seen},
        "tokens": {"available": available["tokens"], "used": used["tokens"]},
        "trained_tokens": {
            "available": available["trained_tokens"],
            "used": used["trained_tokens"],
            "seen": trained_seen,
        },
        "tokens_seen": int(trainer.state.num_input_tokens_seen),
        "train_tokens": used["tokens"],
        "loss_start": loss_start,
        "loss_end": loss_end,
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
