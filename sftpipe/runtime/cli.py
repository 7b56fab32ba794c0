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


def dvc_stage(name: str) -> dict | None:
    """The stage as DVC itself resolves it (a foreach item included): the values of the params
    it declares, its deps, outs and metrics files; None outside a DVC repo or for an unknown name."""
    from dvc.dependency.param import ParamsDependency
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo() as repo:
            (stage,) = repo.stage.collect(name)
            # the values of the params the stage declares, keyed as declared ("sources.sharegpt")
            params = {
                k: v
                for d in stage.deps
                if isinstance(d, ParamsDependency)
                for k, v in d.read_params().items()
            }
    except (DvcException, ValueError):
        return None
    return {
        "params": params,
        "deps": [d.def_path for d in stage.deps if not isinstance(d, ParamsDependency)],
        "outs": [o.def_path for o in stage.outs],
        # its JSON reports: summary.json is the one DVC metric, the others are uncached outs
        "metrics": [o.def_path for o in stage.outs if not o.use_cache and o.def_path.endswith(".json")],
    }


def track(stage: str) -> None:
    """Log a finished stage: the params it declares, its metrics files, digests of deps and outs."""
    from sftpipe.core.jsonio import loads
    from sftpipe.runtime import tracking

    if not tracking.enabled():
        return
    key = sys.argv[1] if stage == "ingest" and len(sys.argv) > 1 else None
    name = f"{stage}@{key}" if key else stage
    spec = dvc_stage(name)
    if spec is None:
        return
    metrics = {}
    for m in spec["metrics"]:
        if Path(m).is_file():
            # the stage's own report (reports/<stage>.json, reports/<stage>/<key>.json) keys its
            # metrics as train and evaluate do, unprefixed; another report is prefixed by its name
            own = Path(m).stem in (stage, key) or Path(m).parent.name == stage
            metrics.update(tracking.flatten(loads(Path(m).read_bytes()), "" if own else Path(m).stem))
    tracking.log_stage(
        name, spec["params"], metrics=tracking.numeric(metrics), deps=spec["deps"], outs=spec["outs"]
    )
