"""distill: generate instruction-response pairs from knowledge slices with an LLM, score them with
LLM judges, keep the good ones as canonical records (source "distill").

Writes data/interim/distill/{records,generated_raw,scored,controls,rejected}.jsonl + metadata.json
and reports/distill.json (with each judge's AUC on the control pairs). With no base_url configured
it runs a local llama.cpp server for the models; the grounding gate reads models/base.
"""

import argparse

from sftpipe.core.params import load_params
from sftpipe.distill.run import DistillParams, distill
from sftpipe.runtime import cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--out", default="data/interim/distill", help="output folder")
    ap.add_argument("--report", default="reports/distill.json", help="report file")
    args = ap.parse_args()

    params = load_params(args.params, distill=DistillParams)
    tally, metadata = distill(params.distill, params.seed, args.out)
    report = tally.write(
        args.report,
        enabled=metadata["enabled"],
        slices=metadata["slices"],
        chunks=metadata["chunks"],
        samples_per_slice=metadata["samples_per_slice"],
        mean_score_kept=metadata["mean_score_kept"],
        calibration=metadata.get("calibration", {}),
        judges_used=metadata.get("judges_used", []),
        control_verdicts=metadata.get("control_verdicts", {}),
    )
    dropped = sum(report["dropped"].values())
    print(f"distill: {report['in']} in, {report['out']} out, {dropped} dropped {report['dropped']}")


if __name__ == "__main__":
    cli.run(main, stage="distill")
