"""base_model: materialize the base model and tokenizer named by params.yaml `model.source`.

Writes models/base/ (Hugging Face format: config.json, model.safetensors, generation_config.json,
tokenizer files) and reports/base_model.json.
"""

import argparse
import time

from sftpipe.core.jsonio import write_json
from sftpipe.core.params import load_params
from sftpipe.model.base_model import ModelParams, materialize, resolve
from sftpipe.runtime import cli, tracking


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--out", default="models/base", help="model folder to write (default: models/base)")
    ap.add_argument("--report", default="reports/base_model.json", help="report to write")
    args = ap.parse_args()

    params = load_params(args.params, model=ModelParams).model
    source = resolve(params.source)
    deps = [source.path] if source.path else []
    with tracking.stage_run("base_model", {"model": params}, deps=deps, outs=[args.out]) as run:
        start = time.perf_counter()
        report = materialize(params, args.out)
        write_json(args.report, report)
        run.log_metrics({"n_params": report["n_params"], "seconds": time.perf_counter() - start})
        run.set_tags({"model.source": params.source})
    print(
        f"base_model: {report['architecture']} with {report['n_params']:,} params from {params.source} "
        f"-> {args.out}"
    )


if __name__ == "__main__":
    cli.run(main)
