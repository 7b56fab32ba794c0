"""evaluate: loss and perplexity of the base and the trained model on val and test (and per source),
and greedy generations for held-out test prompts, as params.yaml `evaluate:` says.

Reads data/processed/hf, models/base and models/sft; writes reports/evaluate.json (DVC metrics, so
`dvc metrics diff` shows what training bought) and reports/generations.jsonl (base vs trained).
"""

import argparse

from sftpipe.core.jsonio import write_json
from sftpipe.core.params import load_params
from sftpipe.model.evaluate import EvaluateParams, evaluate
from sftpipe.runtime import cli, tracking


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--data", default="data/processed/hf", help="exported DatasetDict (save_to_disk folder)")
    ap.add_argument("--base", default="models/base", help="base model folder")
    ap.add_argument("--model", default="models/sft", help="trained adapter or model folder")
    ap.add_argument("--report", default="reports/evaluate.json", help="metrics report to write")
    ap.add_argument("--generations", default="reports/generations.jsonl", help="generations to write")
    args = ap.parse_args()

    p = load_params(args.params, evaluate=EvaluateParams).evaluate
    deps = [args.data, args.base, args.model]
    with tracking.stage_run("evaluate", p, deps=deps, outs=[args.report, args.generations]) as run:
        report = evaluate(p, args.data, args.base, args.model, args.generations)
        write_json(args.report, report)
        run.log_metrics(report)
        run.log_artifact(args.generations)
    for split in p.splits:
        base, trained = report["base"][split], report["trained"][split]
        print(
            f"evaluate {split}: loss {base['loss']:.4f} -> {trained['loss']:.4f}, "
            f"perplexity {base['perplexity']:.2f} -> {trained['perplexity']:.2f} ({base['rows']} rows)"
        )


if __name__ == "__main__":
    cli.run(main)
