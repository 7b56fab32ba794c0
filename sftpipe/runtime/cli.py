"""What every stage script shares: one-line errors instead of tracebacks for bad input or params,
and an MLflow run per stage (its params sections, report metrics and DVC digests, read from the
stage's own entry in dvc.yaml, so the script and the DAG never disagree)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from sftpipe.core.errors import SftpipeError

# Errors whose message already says what is wrong and where; anything else is a bug and keeps
# its traceback. A missing file names itself.
USER_ERRORS: tuple[type[BaseException], ...] = (SftpipeError, FileNotFoundError)


def run(main: Callable[[], object], stage: str | None = None) -> None:
    """Run a stage's `main`; with `stage`, log the finished stage to MLflow as dvc.yaml declares it."""
    try:
        main()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    if stage:
        track(stage)


def _paths(entries: list | None) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries or []]


def dvc_stage(stage: str, key: str | None = None, dvc_yaml: str | Path = "dvc.yaml") -> dict | None:
    """The stage's entry in dvc.yaml (a foreach stage's `do`, with `${key}` filled), or None."""
    import yaml

    path = Path(dvc_yaml)
    if not path.is_file():
        return None
    spec = (yaml.safe_load(path.read_text()) or {}).get("stages", {}).get(stage)
    if spec is None:
        return None
    if "foreach" in spec:
        text = yaml.safe_dump(spec["do"]).replace("${key}", str(key))
        spec = yaml.safe_load(text)
    return spec


def track(stage: str, params_file: str = "params.yaml") -> None:
    """Log a finished stage: the params it declares, its metrics files, digests of deps and outs."""
    from sftpipe.core.config import load_yaml
    from sftpipe.core.jsonio import loads
    from sftpipe.runtime import tracking

    if not tracking.enabled():
        return
    key = sys.argv[1] if stage == "ingest" and len(sys.argv) > 1 else None
    spec = dvc_stage(stage, key)
    if spec is None or not Path(params_file).is_file():
        return
    all_params = load_yaml(params_file)
    params = {}
    for name in spec.get("params", []):
        node = all_params
        for part in str(name).split("."):
            node = node.get(part) if isinstance(node, dict) else None
        params[str(name)] = node
    metrics = {}
    for m in _paths(spec.get("metrics")):
        if Path(m).is_file():
            metrics.update(tracking.flatten(loads(Path(m).read_bytes()), Path(m).stem))
    outs = _paths(spec.get("outs")) + _paths(spec.get("metrics"))
    name = f"{stage}@{key}" if key else stage
    tracking.log_stage(
        name, params, metrics=tracking.numeric(metrics), deps=_paths(spec.get("deps")), outs=outs
    )
