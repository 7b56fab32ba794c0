"""evaluate: did the data help? Base vs trained on fixed held-out rows of val and test: loss and
perplexity, the paired difference with a 95% CI and the share of rows improved (per split and
source), generation metrics, task accuracy (evaluate.tasks) and an optional LLM-judge win rate, as
params.yaml `evaluate:` says.

Reads data/processed/hf, models/base and models/sft; writes reports/evaluate.json (DVC metrics, so
`dvc exp show` and `dvc metrics diff` show what training bought), reports/eval_rows.jsonl (per-row
results of both models, for `python -m sftpipe.compare`) and reports/generations.jsonl.
"""

import argparse
import sys
import time

from sftpipe.core.jsonio import write_json
from sftpipe.core.params import load_params, read
from sftpipe.model.evaluate import EvaluateParams, evaluate
from sftpipe.model.tasks import decontaminated
from sftpipe.runtime import cli, tracking


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--data", default="data/processed/hf", help="exported DatasetDict (save_to_disk folder)")
    ap.add_argument("--base", default="models/base", help="base model folder")
    ap.add_argument("--model", default="models/sft", help="trained adapter or model folder")
    ap.add_argument("--report", default="reports/evaluate.json", help="metrics report to write")
    ap.add_argument("--generations", default="reports/generations.jsonl", help="generations to write")
    ap.add_argument("--rows", default="reports/eval_rows.jsonl", help="per-row results to write")
    args = ap.parse_args()

    params = load_params(args.params, evaluate=EvaluateParams)
    p = params.evaluate
    clean = decontaminated(p.tasks, _decontaminate_sets(args.params))
    for name, ok in clean.items():
        if not ok:
            print(
                f"evaluate: warning: task {name} ({p.tasks[name].path}) is not in dedup.decontaminate.sets; "
                "the training data may contain it",
                file=sys.stderr,
            )
    deps = [args.data, args.base, args.model]
    outs = [args.report, args.generations, args.rows]
    with tracking.stage_run("evaluate", {"seed": params.seed, "evaluate": p}, deps=deps, outs=outs) as run:
        start = time.monotonic()
        report = evaluate(
            p, args.data, args.base, args.model, args.generations, args.rows, params.seed, clean
        )
        seconds = time.monotonic() - start
        write_json(args.report, report)
        run.log_metrics(report)
        run.log_artifact(args.generations)
        run.log_artifact(args.rows)
    for split in p.splits:
        base, trained, d = report["base"][split], report["trained"][split], report["paired"].get(split)
        if d is None:  # no row with a trained token
            continue
        print(
            f"evaluate {split}: loss {base['loss']:.4f} -> {trained['loss']:.4f} "
            f"(delta {d['delta']:+.4f}, 95% CI {d['ci_low']:+.4f} to {d['ci_high']:+.4f}, "
            f"{d['improved']}/{d['n']} rows better), "
            f"perplexity {base['perplexity']:.2f} -> {trained['perplexity']:.2f}"
        )
    gen = report["generation"]
    print(
        f"evaluate generations ({gen['n']}): stop rate {gen['base']['stop_rate']:.2f} -> "
        f"{gen['trained']['stop_rate']:.2f}, mean tokens {gen['base']['mean_tokens']} -> "
        f"{gen['trained']['mean_tokens']}, repetition {gen['base']['repetition']:.3f} -> "
        f"{gen['trained']['repetition']:.3f}"
    )
    for name, t in report["tasks"].items():
        print(
            f"evaluate task {name} ({t['n']}): accuracy {t['base']['accuracy']:.3f} -> "
            f"{t['trained']['accuracy']:.3f} (delta 95% CI {t['delta']['ci_low']:+.3f} to {t['delta']['ci_high']:+.3f})"
        )
    if "judge" in report:
        j = report["judge"]
        print(
            f"evaluate judge ({j['n']} prompts): trained win rate {j['win_rate']:.3f} "
            f"(95% CI {j['ci_low']:.3f} to {j['ci_high']:.3f}; {j['wins']} wins, {j['ties']} ties, "
            f"{j['losses']} losses, {j['failed']} failed)"
        )
    print(f"evaluate: {seconds:.0f}s")


def _decontaminate_sets(path: str) -> dict:
    """dedup.decontaminate.sets, read raw: the one key of another section this stage looks at."""
    dedup = read(path).get("dedup") or {}
    sets = (dedup.get("decontaminate") or {}).get("sets") if isinstance(dedup, dict) else None
    return sets if isinstance(sets, dict) else {}


if __name__ == "__main__":
    cli.run(main)
