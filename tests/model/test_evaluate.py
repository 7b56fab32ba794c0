"""evaluate: loss aggregation, held-out prompt selection, per-row losses that agree with the
model's own loss, and the stage's base-vs-trained report and generations."""

import json
import math

import pytest

from sftpipe.core.jsonio import read_jsonl
from sftpipe.model.evaluate import EvaluateParams, prompts, summarize, token_losses


def test_summarize_weighs_rows_by_trained_tokens():
    out = summarize([(6.0, 3), (2.0, 1), (1.0, 1)], ["a", "b", "a"])
    assert out == {
        "loss": 1.8,
        "perplexity": round(math.exp(1.8), 6),
        "rows": 3,
        "tokens": 5,
        "by_source": {
            "a": {"loss": 1.75, "perplexity": round(math.exp(1.75), 6), "rows": 2, "tokens": 4},
            "b": {"loss": 2.0, "perplexity": round(math.exp(2.0), 6), "rows": 1, "tokens": 1},
        },
    }


def test_prompts_end_where_the_last_assistant_turn_starts():
    from datasets import Dataset, DatasetDict

    rows = [
        # two assistant turns: the prompt runs up to the second one
        {
            "id": "s/1",
            "source": "s",
            "input_ids": [1, 2, 3, 4, 5, 6, 7],
            "labels": [-100, 2, -100, -100, 5, 6, -100],
        },
        {"id": "s/2", "source": "s", "input_ids": [1, 2, 3], "labels": [-100, -100, -100]},  # nothing trained
        {
            "id": "s/3",
            "source": "s",
            "input_ids": [9] * 10 + [4],
            "labels": [-100] * 10 + [4],
        },  # prompt too long
    ]
    dsd = DatasetDict({"test": Dataset.from_list(rows)})
    got = prompts(dsd, EvaluateParams(generations=5, max_prompt_tokens=8))
    assert got == [{"id": "s/1", "source": "s", "prompt_ids": [1, 2, 3, 4], "reference_ids": [5, 6]}]


def test_token_losses_agree_with_the_models_own_loss(base_dir, corpora):
    """Real Alpaca rows of different lengths, scored in padded batches, give each row the loss the
    model computes for it alone."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.tiny_sft import encode

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    records = json.loads((corpora / "alpaca_5000.json").read_text())[:5]
    rows = Dataset.from_list(
        [
            encode(
                tok,
                [
                    {"role": "user", "content": r["instruction"]},
                    {"role": "assistant", "content": r["output"]},
                ],
            )
            for r in records
        ]
    )
    assert len({len(x) for x in rows["input_ids"]}) > 1  # batches really are padded
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    got = token_losses(model, rows, batch_size=3, pad_id=tok.pad_token_id, device="cpu")
    for (total, n), ids, labels in zip(got, rows["input_ids"], rows["labels"], strict=True):
        assert n == sum(1 for v in labels[1:] if v != -100)
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
        assert total / n == pytest.approx(ref, rel=1e-4)
    assert 0.5 < sum(t for t, _ in got) / sum(n for _, n in got) < 3.0  # an instruct model on Alpaca


@pytest.mark.slow
def test_evaluate_stage_shows_what_training_bought(stage_repo):
    repo = stage_repo["repo"]
    report = json.loads((repo / "reports/evaluate.json").read_text())
    for split in ("val", "test"):
        base, trained = report["base"][split], report["trained"][split]
        assert base["rows"] == trained["rows"] == 8 and base["tokens"] == trained["tokens"] > 0
        assert trained["loss"] < base["loss"] and trained["perplexity"] < base["perplexity"]
        assert sorted(base["by_source"]) == ["alpha", "beta"]
        assert report["delta"][split]["loss"] == pytest.approx(trained["loss"] - base["loss"], abs=2e-6)
    gens = list(read_jsonl(repo / "reports/generations.jsonl"))
    assert report["generations"] == len(gens) == 2
    for g in gens:
        assert sorted(g) == ["base", "id", "prompt", "reference", "source", "trained"]
        assert g["prompt"].endswith("<|im_start|>assistant\n") and g["reference"].startswith("Answer ")
        # The tiny data's answers all start alike; six steps teach the trained model that form.
        assert g["trained"].startswith("Answer ")
