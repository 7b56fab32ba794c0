"""train: row selection, batching (padding and packing), checkpoint fingerprints, and real
training of the SmolLM2 base on a tiny split: the loss falls, and a resumed run ends where an
uninterrupted one does."""

import csv
import json

import pytest
import torch

from sftpipe.core.accounting import Tally
from sftpipe.core.jsonio import read_jsonl
from sftpipe.model.train import (
    COMPLETE,
    LoraParams,
    PackedRows,
    TrainParams,
    build_model,
    checkpoint_to_resume,
    collator,
    fingerprint,
    pack,
    select_rows,
    train,
)
from sftpipe.runtime.tracking import dvc_md5


def test_select_rows_counts_what_it_skips():
    from datasets import Dataset

    ds = Dataset.from_list(
        [
            {"id": "a", "input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
            {"id": "b", "input_ids": [1, 2, 3, 4, 5], "labels": [-100, -100, 3, 4, 5]},  # too long
            {"id": "c", "input_ids": [1, 2], "labels": [-100, -100]},  # nothing to learn
            {"id": "d", "input_ids": [1, 2, 3, 4], "labels": [-100, -100, -100, 4]},
        ]
    )
    tally = Tally()
    kept = select_rows(ds, 4, tally)
    tally.kept(len(kept))
    assert kept["id"] == ["a", "d"]
    assert tally.as_dict() == {"in": 4, "out": 2, "dropped": {"no_labels": 1, "too_long": 1}}
    assert select_rows(ds, None)["id"] == ["a", "b", "d"]


def test_params_reject_bad_combinations():
    with pytest.raises(ValueError, match="merge_adapter needs method: lora"):
        TrainParams(method="full", merge_adapter=True)
    with pytest.raises(ValueError, match="max_steps must be positive"):
        TrainParams(max_steps=0)


def test_checkpoints_of_another_run_are_never_resumed(tmp_path):
    params = TrainParams()
    fp = fingerprint(params, 1, "d.dir", "b.dir")
    ckpt = tmp_path / "ckpt"
    assert checkpoint_to_resume(ckpt, fp, True) is None  # nothing yet
    (ckpt / "checkpoint-3").mkdir()
    assert checkpoint_to_resume(ckpt, fp, True).endswith("checkpoint-3")
    assert checkpoint_to_resume(ckpt, fp, False) is None  # resume: false starts over...
    assert (ckpt / "checkpoint-3").is_dir()  # ...but keeps the same run's checkpoints
    other = fingerprint(params.model_copy(update={"learning_rate": 1e-3}), 1, "d.dir", "b.dir")
    assert checkpoint_to_resume(ckpt, other, True) is None
    assert not (ckpt / "checkpoint-3").exists()  # a changed run clears them
    assert checkpoint_to_resume(ckpt, fingerprint(params, 1, "other.dir", "b.dir"), True) is None


def test_a_finished_run_is_never_resumed(tmp_path):
    """`dvc repro -f train` after a run that finished trains from the start, not one step past it."""
    fp = fingerprint(TrainParams(), 1, "d.dir", "b.dir")
    ckpt = tmp_path / "ckpt"
    checkpoint_to_resume(ckpt, fp, True)
    (ckpt / "checkpoint-20").mkdir()
    (ckpt / COMPLETE).touch()
    assert checkpoint_to_resume(ckpt, fp, True) is None
    assert not (ckpt / "checkpoint-20").exists() and not (ckpt / COMPLETE).exists()


def test_padding_collator_pads_ids_with_pad_and_labels_with_ignore(base_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    batch = collator(tok, packing=False)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    )
    pad = tok.pad_token_id
    assert pad == 2  # <|im_end|>, as SmolLM2 ships it
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, pad, pad]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_packed_rows_never_attend_to_each_other(base_dir):
    """A packed batch gives every row exactly the logits it gets alone, and the padded batch's loss,
    through the model exactly as training builds it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    params = TrainParams(lora=LoraParams(dropout=0.0), packing=True)
    model = build_model(base_dir, params, 1).eval()
    rows = [
        {"input_ids": tok("The capital of France is Paris.")["input_ids"]},
        {"input_ids": tok("Two plus two equals four, said the teacher.")["input_ids"]},
    ]
    for r in rows:
        r["labels"] = [-100] + r["input_ids"][1:]
    packed = collator(tok, packing=True)(rows)
    n0, n1 = len(rows[0]["input_ids"]), len(rows[1]["input_ids"])
    assert "attention_mask" not in packed
    assert packed["position_ids"].tolist() == [list(range(n0)) + list(range(n1))]
    with torch.no_grad():
        out_packed = model(**packed)
        out_padded = model(**collator(tok, packing=False)(rows))
        alone = [model(input_ids=torch.tensor([r["input_ids"]])).logits[0] for r in rows]
    torch.testing.assert_close(out_packed.logits[0, :n0], alone[0], atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(out_packed.logits[0, n0:], alone[1], atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(out_packed.loss, out_padded.loss, atol=1e-5, rtol=1e-5)


def test_packs_hold_whole_rows_up_to_the_token_budget():
    lengths = [5, 3, 9, 2, 20, 4, 1, 6]
    packs = pack(lengths, 10, seed=1)
    assert sorted(i for p in packs for i in p) == list(range(8))  # every row once, none cut
    for p in packs:
        assert sum(lengths[i] for i in p) <= 10 or len(p) == 1  # a longer row goes alone
    assert pack(lengths, 10, seed=1) == packs and pack(lengths, 10, seed=2) != packs


def test_packed_dataset_items_collate_into_one_row_per_pack():
    from datasets import Dataset

    ds = Dataset.from_list(
        [{"input_ids": list(range(1, n + 1)), "labels": list(range(1, n + 1))} for n in (3, 4, 5, 6)]
    )
    packed = PackedRows(ds, 9, seed=0)
    assert sorted(len(packed[k]["rows"]) for k in range(len(packed))) == [1, 1, 2]
    batch = collator(None, packing=True)([packed[k] for k in range(len(packed))])
    assert batch["input_ids"].shape == (1, 18)
    starts = [i for i, v in enumerate(batch["position_ids"][0].tolist()) if v == 0]
    assert len(starts) == 4 and all(batch["labels"][0, i] == -100 for i in starts)


@pytest.mark.slow
def test_train_stage_lowers_the_loss(stage_repo):
    repo = stage_repo["repo"]
    report = json.loads((repo / "reports/train.json").read_text())
    assert report["in"] == 24 and report["out"] == 24 and report["dropped"] == {"no_labels": 0, "too_long": 0}
    assert report["method"] == "lora" and report["steps"] == 6 and report["device"] == "cpu"
    assert report["loss_last"] < 0.5 * report["loss_first"]
    assert report["eval_rows"] == 8 and report["eval_perplexity"] == pytest.approx(
        2.718281828 ** report["eval_loss"], rel=1e-5
    )
    curve = list(csv.DictReader((repo / "reports/train_loss.csv").open()))
    assert [int(r["step"]) for r in curve] == [1, 2, 3, 4, 5, 6]
    assert float(curve[0]["loss"]) == report["loss_first"] and float(curve[-1]["loss"]) == report["loss_last"]
    sft = repo / "models/sft"
    adapter = json.loads((sft / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and adapter["lora_alpha"] == 32 and adapter["peft_type"] == "LORA"
    # in a fixed order, not the set's hash order, so the folder's bytes repeat from run to run
    assert (
        adapter["target_modules"] == sorted(adapter["target_modules"]) and len(adapter["target_modules"]) > 1
    )
    assert (sft / "adapter_model.safetensors").stat().st_size > 1_000_000
    assert (sft / "tokenizer.json").is_file() and not (sft / "README.md").exists()
    assert sorted(p.name for p in (repo / ".cache/checkpoints").iterdir()) == [
        "checkpoint-3",
        "checkpoint-6",
        "sftpipe_complete",  # a finished run: the next one starts over
        "sftpipe_run.json",
    ]
    assert list(read_jsonl(repo / "reports/generations.jsonl"))  # evaluate ran on what train wrote
    # Neither stage wrote into its input (datasets' cache files would change export's DVC output).
    assert dvc_md5(stage_repo["data"]) == stage_repo["data_md5_before"]


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.mark.slow
def test_resume_after_interruption_matches_uninterrupted_run(base_dir, tiny_data, tmp_path):
    params = TrainParams(
        max_steps=4,
        batch_size=4,
        learning_rate=1e-3,
        warmup=0.0,
        save_steps=2,
        max_eval_samples=4,
        max_length=None,
    )
    whole = train(params, 3, tiny_data, base_dir, tmp_path / "whole", tmp_path / "ckpt-whole")
    cut = train(params, 3, tiny_data, base_dir, tmp_path / "cut", tmp_path / "ckpt-cut", stop_after=3)
    assert cut.report == {} and not (tmp_path / "cut").exists()  # killed after step 3; step 2 was saved
    resumed = train(params, 3, tiny_data, base_dir, tmp_path / "cut", tmp_path / "ckpt-cut")
    assert resumed.report["resumed_from_step"] == 2 and resumed.report["steps"] == 4
    again = train(params, 3, tiny_data, base_dir, tmp_path / "again", tmp_path / "ckpt-cut")
    assert again.report["resumed_from_step"] == 0 and again.report["steps"] == 4  # finished: start over
    losses = [e["loss"] for e in whole.log_history if "loss" in e]
    assert [e["loss"] for e in resumed.log_history if "loss" in e] == pytest.approx(
        losses, rel=1e-5, abs=1e-6
    )
    assert resumed.report["eval_loss"] == pytest.approx(whole.report["eval_loss"], rel=1e-5)
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
