"""publish: share the exported DatasetDict (and models/sft) with an S3-compatible object store and
the Hugging Face hub. Off by default (`publish.enabled: false`): then it only writes a report
saying so.

Reads data/processed/hf (+ metadata.json), reports/dataset_card.md when present (else a minimal
card is generated), models/sft when present; writes reports/publish.json. Credentials come from
the environment only: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (+ AWS_ENDPOINT_URL) and HF_TOKEN.
"""

import argparse
from pathlib import Path

from sftpipe.core.accounting import Tally
from sftpipe.core.params import load_params
from sftpipe.model.train import TrainParams
from sftpipe.publish import PublishParams, check_urls, publish
from sftpipe.runtime import cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument(
        "--data", default="data/processed", help="export's output folder (holds hf/, metadata.json)"
    )
    ap.add_argument("--card", default="reports/dataset_card.md", help="dataset card; generated when absent")
    ap.add_argument("--model", default="models/sft", help="trained model or adapter folder (optional)")
    ap.add_argument("--reports", default="reports", help="folder for publish.json")
    args = ap.parse_args()

    params = load_params(args.params, publish=PublishParams, train=TrainParams)
    p = params.publish
    check_urls(p)
    report_path = Path(args.reports) / "publish.json"
    tally = Tally()
    if not p.enabled:
        tally.write(report_path, enabled=False, note="publish.enabled is false: nothing was published")
        print("publish: disabled (publish.enabled: false); nothing published")
        return

    train = getattr(params, "train", None)  # the model card names the training params when they exist
    train_params = train.model_dump(mode="json") if train is not None else None
    out = publish(p, Path(args.data), Path(args.card), Path(args.model), train_params)
    rows = sum(out["splits"].values())
    tally.seen(rows)
    tally.kept(rows)
    tally.write(report_path, enabled=True, **out)
    where = [out["store"]["url"]] if "store" in out else []
    where += [f"hf:{kind}s/{r['repo_id']}@{r['revision']}" for kind, r in out.get("hub", {}).items()]
    print(f"publish: {p.name} ({rows} rows, {out['dataset_digest'][:19]}) -> {', '.join(where)}")


if __name__ == "__main__":
    cli.run(main, stage="publish")
