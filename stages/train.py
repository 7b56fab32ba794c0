"""train: fine-tune the base model (LoRA or full) on the exported dataset, as params.yaml `train:` says.

Reads data/processed/hf (and the template in data/processed/metadata.json) and models/base; writes
models/sft/ (adapter or model + tokenizer with the trained chat template), reports/train.json
(metrics) and reports/train_loss.csv (the loss curve). Checkpoints go to .cache/checkpoints/ (git-ignored and
no DVC output, so an experiment workspace without them never looks changed), kept between runs so
that `train.resume` can continue an interrupted run. With `train.devices` > 1 (or
`auto` on a machine with several GPUs) it re-runs itself under torchrun, one process per device.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from sftpipe.core.params import load_params
from sftpipe.model.train import TrainParams, launch_command, train, write_outputs
from sftpipe.runtime import cli, tracking


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--data", default="data/processed/hf", help="exported DatasetDict (save_to_disk folder)")
    ap.add_argument("--base", default="models/base", help="base model folder")
    ap.add_argument("--out", default="models/sft", help="folder for the adapter or trained model")
    ap.add_argument(
        "--checkpoints",
        default=".cache/checkpoints",
        help="checkpoint folder (kept for resume; not a DVC output)",
    )
    ap.add_argument("--report", default="reports/train.json", help="metrics report to write")
    ap.add_argument("--curve", default="reports/train_loss.csv", help="loss curve (CSV) to write")
    args = ap.parse_args()

    all_params = load_params(args.params, train=TrainParams)
    p, seed = all_params.train, all_params.seed
    launch = launch_command(p, [sys.argv[0], *sys.argv[1:]])
    if launch is not None:  # one process per device; rank 0 writes the outputs and prints the summary
        raise SystemExit(subprocess.run(launch).returncode)
    outs = [args.out, args.report, args.curve]
    with (
        tracking.stage_run(
            "train", {"seed": seed, "train": p}, deps=[args.data, args.base], outs=outs
        ) as run,
        tempfile.TemporaryDirectory(prefix="sftpipe-adapter-") as tmp,
    ):
        digests = {"data": run.digest(args.data), "base": run.digest(args.base)}
        merged_adapter = Path(tmp) / "adapter" if p.method != "full" and p.merge_adapter else None
        result = train(p, seed, args.data, args.base, args.out, args.checkpoints, digests, merged_adapter)
        if not result.report:  # not the main process of a multi-GPU run: it writes nothing
            return
        report = write_outputs(result, args.report, args.curve)
        run.log_metrics(report)
        run.log_metrics({"seconds": result.seconds})
        for name in ("loss", "learning_rate", "grad_norm"):
            run.log_curve(
                f"train/{name}",
                [(e["step"], e[name]) for e in result.log_history if name in e and "step" in e],
            )
        run.log_curve(
            "eval/loss", [(e["step"], e["eval_loss"]) for e in result.log_history if "eval_loss" in e]
        )
        from datasets import load_from_disk

        run.log_dataset(load_from_disk(args.data)["train"], args.data, context="training")
        if p.method != "full":
            run.log_artifact(merged_adapter or args.out, "adapter")
        for path in (args.report, args.curve, args.params):
            run.log_artifact(path)
        if p.registered_model:
            run.log_model(args.base, args.out, p.registered_model)
    print(
        f"train: {report['steps']} steps x {report['processes']} process(es) on {report['out']} of "
        f"{report['rows']['available']} rows ({report['tokens_seen']:,} tokens seen) in {result.seconds:.0f}s, "
        f"loss {report['loss_start']} -> {report['loss_end']} (first/last 10% of steps), "
        f"val loss {report['eval_loss']} -> {args.out}"
    )


if __name__ == "__main__":
    cli.run(main)
