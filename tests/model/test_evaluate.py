"""evaluate: loss aggregation, held-out prompt selection, per-row losses that agree with the
model's own loss, stop ids and repetition, the stage's base-vs-trained report, per-row file and
generations, and tasks and the judge end to end."""

import json
import math

import pytest

from sftpipe.core.jsonio import read_jsonl
from sftpipe.model.evaluate import EvaluateParams, eos_ids, prompts, repetition, summarize, token_losses
from sftpipe.model.stats import paired


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
        assert sorted(g) == ["base", "id", "prompt", "reference", "source", "stopped", "trained"]
        assert g["prompt"].endswith("<|im_start|>assistant\n") and g["reference"].startswith("Answer ")
        # The tiny data's answers all start alike; six steps teach the trained model that form.
        assert g["trained"].startswith("Answer ")
    # The per-row file holds both models' loss per row; the paired report is computed from it.
    rows = list(read_jsonl(repo / "reports/eval_rows.jsonl"))
    for split in ("val", "test"):
        mine = [r for r in rows if r["set"] == split]
        assert len(mine) == 8 and all(r["metric"] == "loss" and r["tokens"] > 0 for r in mine)
        p = report["paired"][split]
        assert p["n"] == 8 and p["base"] == pytest.approx(report["base"][split]["loss"], abs=1e-5)
        assert p["delta"] == pytest.approx(report["delta"][split]["loss"], abs=1e-5)
        again = paired([r["base"] for r in mine], [r["trained"] for r in mine], [r["tokens"] for r in mine])
        assert again["delta"] == pytest.approx(p["delta"], abs=1e-5)
        assert p["ci_low"] <= p["delta"] <= p["ci_high"] < 0  # six steps on regular data: a clear gain
        assert p["improved"] == sum(r["trained"] < r["base"] for r in mine)
        assert sorted(p["by_source"]) == ["alpha", "beta"]
    gen = report["generation"]
    assert gen["n"] == 2 and {"stop_rate", "mean_tokens", "repetition"} <= set(gen["trained"])
    assert sorted(gen["delta"]) == ["length", "repetition", "stop"]
    assert sorted({r["metric"] for r in rows if r["set"] == "gen"}) == ["length", "repetition", "stop"]
    assert "paired" in stage_repo["evaluate"].stdout or "95% CI" in stage_repo["evaluate"].stdout


def test_eos_ids_take_every_generation_config_and_repetition(tmp_path):
    class Tok:
        eos_token_id = 0

    (tmp_path / "base").mkdir()
    (tmp_path / "sft").mkdir()
    (tmp_path / "base" / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    (tmp_path / "sft" / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 2]}))
    assert eos_ids(Tok(), tmp_path / "base", tmp_path / "sft") == [2, 5]
    assert eos_ids(Tok(), tmp_path / "none") == [0]
    assert repetition([1, 2, 3, 1, 2, 3]) == pytest.approx(1 - 3 / 4)
    assert repetition([1, 2, 3, 4]) == 0 and repetition([1]) == 0


@pytest.mark.slow
def test_tasks_and_judge_on_the_trained_model(stage_repo, corpora, tmp_path):
    """Real GSM8K rows, a multiple-choice and an exact-match task, and the judge against the fake
    endpoint, through the evaluate library on the stage's trained model."""
    from sftpipe.distill.llm import EndpointSpec
    from sftpipe.model.evaluate import evaluate
    from sftpipe.model.judge import JudgeParams
    from sftpipe.model.tasks import TaskSpec
    from tests.fake_openai import FakeOpenAI

    mc = tmp_path / "mc.jsonl"
    mc.write_text(
        json.dumps(
            {
                "question": "Question 0: what is the capital of France?",
                "choices": ["Tokyo", "Paris"],
                "answer": 1,
            }
        )
        + "\n"
    )
    ex = tmp_path / "exact.jsonl"
    ex.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "4"}) + "\n")
    tasks = {
        "gsm8k_test": TaskSpec(
            path=str(corpora / "gsm8k_test.jsonl"), kind="gsm8k", max_examples=2, max_new_tokens=8
        ),
        "mc": TaskSpec(path=str(mc), kind="choice"),
        "exact": TaskSpec(path=str(ex), kind="exact", max_new_tokens=4),
    }
    repo = stage_repo["repo"]
    with FakeOpenAI() as srv:
        judge = JudgeParams(
            enabled=True,
            endpoint=EndpointSpec(base_url=srv.url, structured_output="off"),
            cache_dir=None,
            max_prompts=2,
        )
        params = EvaluateParams(
            max_examples=2, max_length=None, generations=2, max_new_tokens=8, tasks=tasks, judge=judge
        )
        report = evaluate(
            params,
            stage_repo["data"],
            stage_repo["base"],
            repo / "models/sft",
            tmp_path / "gens.jsonl",
            tmp_path / "rows.jsonl",
            seed=1,
            decontaminated={"gsm8k_test": False, "mc": True, "exact": True},
        )
        assert srv.n_requests == 4  # two prompts, both orders
    t = report["tasks"]
    assert t["gsm8k_test"]["n"] == 2 and t["mc"]["n"] == 1 and t["exact"]["n"] == 1
    assert t["gsm8k_test"]["decontaminated"] is False and t["mc"]["decontaminated"] is True
    for entry in t.values():
        for name in ("base", "trained"):
            assert entry[name]["ci_low"] <= entry[name]["accuracy"] <= entry[name]["ci_high"]
    assert t["mc"]["base"]["accuracy"] == 1.0  # an instruct model knows the capital of France
    j = report["judge"]
    assert j["n"] == 2 and j["ties"] == 2 and j["win_rate"] == 0.5  # the fake judge sees no [good]
    rows = list(read_jsonl(tmp_path / "rows.jsonl"))
    assert sorted({r["set"] for r in rows}) == [
        "gen",
        "judge",
        "task/exact",
        "task/gsm8k_test",
        "task/mc",
        "test",
        "val",
    ]
    assert [r["trained"] for r in rows if r["set"] == "judge"] == [0.5, 0.5]
