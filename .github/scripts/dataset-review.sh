#!/usr/bin/env bash
# The dataset review of a pull request, as .github/workflows/dataset-review.yml runs it:
#   .github/scripts/dataset-review.sh BASE_REVISION > review.md
# It pulls from the team's DVC remote every output the PR's dvc.lock names and the remote holds,
# rebuilds only the data stages whose inputs the PR changed (distill's LLM servers and training
# never run unless their inputs changed), then writes the review of BASE vs the PR to stdout.
# The remote's credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
set -euo pipefail
base="${1:?usage: dataset-review.sh BASE_REVISION}"

if [ -z "$(dvc remote list)" ]; then
  echo "error: no DVC remote is configured, so every stage would be rebuilt from scratch;" \
    "add one as the README's 'Sharing data with a DVC remote' shows (dvc remote add -d ...)" >&2
  exit 1
fi
dvc pull --with-deps --allow-missing report >&2
dvc repro report >&2
python -m sftpipe.review "$base"
