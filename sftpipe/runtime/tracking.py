"""MLflow tracking for every stage: one run per stage execution, tying outputs to inputs, nested
under one parent run per build (a `dvc repro` or a `dvc exp run`).

    with stage_run("clean", params.clean, deps=[...], outs=[...]) as run:
        report = ...                       # the stage's work
        run.log_metrics(report)            # in, out, dropped.<reason>, ...

On exit the run records the params section (flattened), the metrics, and tags: `stage`, the git
commit, `DVC_EXP_NAME` when set, and the DVC md5 of every dep and out (`dvc.deps.<path>`,
`dvc.outs.<path>`, computed the way `dvc` does, so they match `dvc.lock`). Everything is logged
at the end in a few calls, so MLflow never sits inside a stage's work, and a failed stage still
leaves a FAILED run with its params.

The parent run is found or made by the first stage of a build, keyed by what defines the build:
the experiment name (`DVC_EXP_NAME`), the git commit and params.yaml. It holds the whole params.yaml as params (keyed
`section.key`, as every stage run is) and the headline metrics of reports/summary.json, so
learning rate and val loss sit in one view.

Store: `MLFLOW_TRACKING_URI`, else SQLite at `<repo root>/mlflow.db` with artifacts in
`<repo root>/mlruns`. The repo root is absolute and the same for `dvc exp run --temp/--queue`
(whose workspaces live under `<repo>/.dvc/tmp/exps/`), so every run lands in one store.
`SFTPIPE_TRACKING=off` turns tracking off; in a multi-process launch only rank 0 logs.

No secret reaches MLflow: params hold only the NAMES of environment variables (`api_key_env`);
any value under a secret-looking key, any string shaped like a key, and the value of any
secret-looking environment variable is replaced by `***` in params, tags and text artifacts.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import math
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

EXPERIMENT = "sftpipe"
_OFF = ("0", "off", "false", "no")
_MAX_PARAM = 6000  # MLflow's limit on a param value
_REDACTED = "***"
_SECRET_NAME = re.compile(r"api[_-]?key|token|secret|passw|credential|private[_-]?key|auth", re.I)
_SECRET_VALUE = re.compile(
    r"sk-[A-Za-z0-9_-]{8,}|hf_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{16,}|github_pat_\w{16,}"
    r"|AKIA[0-9A-Z]{16}|xox[abprs]-[\w-]{10,}|AIza[\w-]{30,}|Bearer\s+[\w.~+/-]{8,}"
    r"|eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{4,}"
)


# --- where ---------------------------------------------------------------------------------


def repo_root(start: str | Path | None = None) -> Path:
    """The project's root: DVC_ROOT (set by dvc for stage commands) or the nearest folder with a
    `.dvc`, mapped from an experiment's temporary workspace back to the repository it belongs to."""
    here = Path(start or os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
    root = next((p for p in (here, *here.parents) if (p / ".dvc").is_dir()), here)
    parts = root.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def enabled() -> bool:
    """On unless SFTPIPE_TRACKING=off; only the main process of a torchrun / accelerate launch logs."""
    if os.environ.get("RANK", "0") != "0":
        return False
    return os.environ.get("SFTPIPE_TRACKING", "on").strip().lower() not in _OFF


def _artifact_location(uri: str) -> str | None:
    """Artifacts beside a SQLite store (MLflow's default is `./mlruns` of whatever the cwd is,
    which for `dvc exp run --temp` is a workspace that is deleted afterwards)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlruns").resolve().as_uri()
    return None


# --- what ----------------------------------------------------------------------------------


def dvc_md5(path: str | Path) -> str | None:
    """The md5 DVC records for `path` (a file's md5, or a directory's `<md5>.dir`); None if absent.

    Hashed through the repo's own DVC state (md5 by inode, size and mtime), so a file DVC has
    hashed is not read again, and what is hashed here DVC does not read again after the stage."""
    path = Path(path)
    if not path.exists():
        return None
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs import MemoryFileSystem
    from dvc_objects.fs.local import LocalFileSystem

    state = _dvc_state()
    odb = HashFileDB(MemoryFileSystem(), "/sftpipe-digests", **({"state": state} if state else {}))
    _, _, obj = build(odb, str(path.resolve()), LocalFileSystem(), "md5", dry_run=True)
    return obj.hash_info.value


@functools.cache
def _dvc_state():
    """The DVC state of the repo around the working directory, or None outside one."""
    try:
        from dvc.repo import Repo

        repo = Repo()  # the workspace around the working directory (an experiment's, too)
        atexit.register(repo.close)
        return repo.state
    except Exception:  # no DVC repo here (a test's temporary folder): hash without a state
        return None


def git_commit(cwd: str | Path | None = None) -> tuple[str | None, bool]:
    """(HEAD commit, whether tracked files differ from it); (None, False) outside git."""

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else False
    return commit, dirty


def _env_secrets() -> list[str]:
    return sorted(
        (v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 8),
        key=len,
        reverse=True,
    )


def scrub(text: str, secrets: Iterable[str] | None = None) -> str:
    """`text` with every secret-looking environment value and key-shaped string replaced by ***."""
    for secret in _env_secrets() if secrets is None else secrets:
        text = text.replace(secret, _REDACTED)
    return _SECRET_VALUE.sub(_REDACTED, text)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as `a.b.c` keys; lists and scalars stay values."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    if not isinstance(obj, Mapping):
        return {prefix: obj} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) or hasattr(value, "model_dump"):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def safe_params(params: Any, secrets: Iterable[str] | None = None) -> dict[str, str]:
    """Flattened params as MLflow strings: secret-named keys redacted (except `*_env`, which name
    a variable), every value scrubbed, long values cut to MLflow's limit."""
    import json

    secrets = _env_secrets() if secrets is None else list(secrets)
    out = {}
    for key, value in flatten(params).items():
        leaf = key.rsplit(".", 1)[-1]
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        if _SECRET_NAME.search(leaf) and not leaf.endswith("_env") and value not in (None, "", False):
            text = _REDACTED
        out[_key(key)] = scrub(text, secrets)[:_MAX_PARAM]
    return out


def numeric(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers (and booleans) of a flattened report, as MLflow metrics."""
    out = {}
    for key, value in flatten(metrics, prefix).items():
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, int | float) and math.isfinite(value):
            out[_key(key)] = float(value)
    return out


def _key(name: str) -> str:
    # MLflow accepts letters, digits, _ - . space / in keys.
    return re.sub(r"[^\w\-. /]", "_", name)


# --- the run -------------------------------------------------------------------------------


class StageRun:
    """What one stage logs; collected while the stage works, written to MLflow on exit."""

    def __init__(self, stage: str, params: Any, deps: Iterable[str | Path], outs: Iterable[str | Path]):
        self.stage = stage
        self.params = params
        self.deps = [str(p) for p in deps]
        self.outs = [str(p) for p in outs]
        self.metrics: dict[str, float] = {}
        self.curves: dict[str, list[tuple[int, float]]] = {}
        self.tags: dict[str, str] = {}
        self.artifacts: list[tuple[Path, str | None]] = []
        self.datasets: list[dict] = []
        self.model: dict | None = None
        self.digests: dict[str, str | None] = {}
        self.run_id: str | None = None

    def digest(self, path: str | Path) -> str | None:
        """DVC md5 of a dep (computed once per run; outs are hashed on exit, once written)."""
        key = str(path)
        if key not in self.digests:
            self.digests[key] = dvc_md5(path)
        return self.digests[key]

    def log_metrics(self, metrics: Mapping[str, Any], prefix: str = "") -> None:
        self.metrics.update(numeric(metrics, prefix))

    def log_curve(self, name: str, points: Iterable[tuple[int, float]]) -> None:
        """A metric's history, e.g. the training loss by step."""
        self.curves[_key(name)] = [(int(s), float(v)) for s, v in points if math.isfinite(v)]

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.tags.update({_key(k): str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file or folder to store with the run (text files are scrubbed of secrets)."""
        self.artifacts.append((Path(path), artifact_path))

    def log_model(self, base_dir: str | Path, sft_dir: str | Path, registered_name: str) -> None:
        """models/sft (an adapter on `base_dir`, or a full model) as an MLflow transformers model
        of this run, registered under `registered_name`; its version carries the dataset digests
        of the run's inputs, and the run links it to them."""
        self.model = {"base": Path(base_dir), "sft": Path(sft_dir), "name": registered_name}

    def log_dataset(self, dataset: Any, path: str | Path, context: str = "training", name: str | None = None):
        """A Hugging Face `datasets.Dataset` read from `path` (a DVC-tracked folder) as an MLflow
        dataset input whose digest is the folder's DVC md5."""
        self.datasets.append({"dataset": dataset, "path": Path(path), "context": context, "name": name})


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Any = None,
    *,
    deps: Iterable[str | Path] = (),
    outs: Iterable[str | Path] = (),
    metrics: Mapping[str, Any] | None = None,
) -> Iterator[StageRun]:
    """Collect a stage's tracking data in the body; log it as one MLflow run on exit."""
    run = StageRun(stage, params, deps, outs)
    if metrics:
        run.log_metrics(metrics)
    start = time.time()
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        if enabled():
            try:
                _flush(run, start, status)
            except Exception as exc:  # tracking must not undo a stage's finished work; say so loudly
                print(
                    f"warning: MLflow logging of stage {stage} failed: {type(exc).__name__}: {exc}",
                    file=sys.stderr,
                )


def log_stage(
    stage: str,
    params: Any = None,
    metrics: Mapping[str, Any] | None = None,
    deps: Iterable[str | Path] = (),
    outs: Iterable[str | Path] = (),
) -> str | None:
    """One call for a stage that already finished: log its params, metrics and digests."""
    with stage_run(stage, params, deps=deps, outs=outs, metrics=metrics) as run:
        pass
    return run.run_id


def _quiet() -> None:
    # Read by mlflow when it is first imported: warnings only, no progress bars.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    for name in ("alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _experiment(mlflow: Any, uri: str) -> str:
    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow.create_experiment(EXPERIMENT, artifact_location=_artifact_location(uri))
    except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel stage
        return mlflow.get_experiment_by_name(EXPERIMENT).experiment_id


def _workspace() -> Path:
    """The project the stage runs in (an experiment's own workspace, not mapped back like
    `repo_root`): its params.yaml is the build's."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd())


def build_key(root: Path | None = None) -> tuple[str, str]:
    """(key, run name) of the build a stage belongs to: stages of one `dvc repro` or one
    experiment share them; another experiment, commit or params.yaml starts another build. The
    working tree's other changes are left out on purpose: an experiment's own stages rewrite
    tracked files as they go, which split one build in two."""
    import hashlib

    root = root or _workspace()
    commit, _ = git_commit(root)
    params = root / "params.yaml"
    exp = os.environ.get("DVC_EXP_NAME", "")
    h = hashlib.sha256()
    for part in (exp.encode(), (commit or "").encode(), params.read_bytes() if params.is_file() else b""):
        h.update(hashlib.sha256(part).digest())
    name = exp or f"repro {commit[:7] if commit else 'workspace'}"
    return h.hexdigest()[:16], name


def _parent(client: Any, exp_id: str, secrets: list[str]) -> str:
    """The build's parent run id, created (with the whole params.yaml) by its first stage."""
    from mlflow.entities import Param

    key, name = build_key()
    found = client.search_runs([exp_id], filter_string=f"tags.`sftpipe.build` = '{key}'", max_results=1)
    if found:
        return found[0].info.run_id
    tags = {"sftpipe.build": key, "mlflow.note.content": "One build: its stage runs are nested below."}
    tags |= _source_tags()
    run_id = client.create_run(
        exp_id, run_name=name, tags={k: scrub(v, secrets) for k, v in tags.items()}
    ).info.run_id
    params_file = _workspace() / "params.yaml"
    if params_file.is_file():
        from sftpipe.core.config import load_yaml  # YAML 1.2, as DVC and the stages read it

        flat = safe_params(load_yaml(params_file) or {}, secrets)
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            client.log_batch(run_id, params=items[i : i + 100])
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def _source_tags() -> dict[str, str]:
    """Where a run comes from: the git commit (and whether the tree differed) and the experiment."""
    tags: dict[str, str] = {}
    commit, dirty = git_commit()
    if commit:
        tags.update(
            {"git_commit": commit, "git_dirty": str(dirty).lower(), "mlflow.source.git.commit": commit}
        )
    for var in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        if os.environ.get(var):
            tags[var.lower()] = os.environ[var]
    return tags


def _tags(run: StageRun) -> dict[str, str]:
    tags = {"stage": run.stage} | _source_tags()
    for p in run.deps:
        tags[_key(f"dvc.deps.{p}")] = run.digest(p) or "missing"
    for p in run.outs:
        tags[_key(f"dvc.outs.{p}")] = dvc_md5(p) or "missing"
    return {**tags, **run.tags}


def _flush(run: StageRun, start: float, status: str) -> None:
    _quiet()
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    secrets = _env_secrets()
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    exp_id = _experiment(mlflow, uri)
    parent = _parent(client, exp_id, secrets)
    tags = {k: scrub(v, secrets) for k, v in {**_tags(run), "mlflow.parentRunId": parent}.items()}
    created = client.create_run(exp_id, start_time=int(start * 1000), run_name=run.stage)
    run.run_id = run_id = created.info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in {**run.metrics, "duration_s": time.time() - start}.items()]
    if run.stage == "summary":  # the headline goes on the build, beside its params
        headline = [Metric(k, v, now, 0) for k, v in run.metrics.items()]
        for i in range(0, len(headline), 1000):
            client.log_batch(parent, metrics=headline[i : i + 1000])
    for name, points in run.curves.items():
        metrics += [Metric(name, v, now, step) for step, v in points]
    params = [Param(k, v) for k, v in safe_params(run.params or {}, secrets).items()]
    tag_list = [RunTag(k, v) for k, v in tags.items()]
    # log_batch takes at most 1000 metrics, 100 params and 100 tags per call.
    for i in range(0, max(len(params), len(tag_list)), 100):
        client.log_batch(run_id, params=params[i : i + 100], tags=tag_list[i : i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    if run.datasets:
        client.log_inputs(run_id, datasets=[_dataset_input(d, run) for d in run.datasets])
    for path, artifact_path in run.artifacts:
        _log_artifact(client, run_id, path, artifact_path, secrets)
    if run.model and status == "FINISHED":
        _log_model(mlflow, run_id, run)
    client.set_terminated(run_id, status=status)


def _log_model(mlflow: Any, run_id: str, run: StageRun) -> None:
    import importlib.metadata

    import mlflow.transformers
    from transformers import AutoTokenizer

    from sftpipe.model.evaluate import load_trained  # an adapter on the base, or a full model

    spec = run.model or {}
    sft: Path = spec["sft"]
    model = load_trained(spec["base"], sft, "cpu")
    reqs = [f"{p}=={importlib.metadata.version(p)}" for p in ("torch", "transformers", "peft", "accelerate")]
    digests = {f"dataset.{d['path']}": run.digest(d["path"]) or "missing" for d in run.datasets}
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # it looks the local base up on the hub for a model card and a license: neither exists
        warnings.filterwarnings("ignore")
        logging.getLogger("mlflow.transformers").setLevel(logging.ERROR)
        info = mlflow.transformers.log_model(
            {"model": model, "tokenizer": AutoTokenizer.from_pretrained(str(sft))},
            name="model",
            task="llm/v1/chat",
            pip_requirements=reqs,
            registered_model_name=spec["name"],
            tags=digests,
        )
    version = info.registered_model_version
    if version is not None:
        client = mlflow.MlflowClient()
        for key, value in digests.items():
            client.set_model_version_tag(spec["name"], str(version), key, value)


def _dataset_input(spec: dict, run: StageRun):
    from datasets import Value
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.huggingface_dataset import from_huggingface
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    path: Path = spec["path"]
    ds = spec["dataset"]
    # MLflow infers a schema from scalar columns only (token-id lists make it warn and give up).
    scalar = [name for name, feature in ds.features.items() if isinstance(feature, Value)]
    if scalar and len(scalar) < len(ds.column_names):
        ds = ds.select_columns(scalar)
    with warnings.catch_warnings():
        # MLflow hints that integer columns cannot hold missing values; ours never miss one.
        warnings.filterwarnings("ignore", message=r".*[Ii]nteger column", category=UserWarning)
        # a local folder, not a hub dataset (source_type "local"); MLflow registers the local
        # source class twice and says so
        warnings.filterwarnings(
            "ignore", message=".*can be interpreted in multiple ways", category=UserWarning
        )
        source = resolve_dataset_source(str(path.resolve()))
        ds = from_huggingface(ds, name=spec["name"] or str(path), digest=run.digest(path), source=source)
        entity = ds._to_mlflow_entity()  # the schema is inferred here, lazily
    return DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, spec["context"])])


_TEXT = {".json", ".jsonl", ".csv", ".txt", ".yaml", ".yml", ".md", ".jinja", ".tsv"}


def _log_artifact(
    client: Any, run_id: str, path: Path, artifact_path: str | None, secrets: list[str]
) -> None:
    import shutil
    import tempfile

    if not path.exists():
        return
    with tempfile.TemporaryDirectory(prefix="sftpipe-artifact-") as tmp:
        # Copy, scrubbing text files, so no secret that slipped into an output reaches the store.
        staged = Path(tmp) / path.name
        if path.is_dir():
            shutil.copytree(path, staged)
            files = [f for f in staged.rglob("*") if f.is_file()]
        else:
            shutil.copy2(path, staged)
            files = [staged]
        for f in files:
            if f.suffix in _TEXT:
                text = f.read_text(encoding="utf-8", errors="replace")
                clean = scrub(text, secrets)
                if clean != text:
                    f.write_text(clean, encoding="utf-8")
        if staged.is_dir():
            client.log_artifacts(
                run_id, str(staged), artifact_path=f"{artifact_path or ''}/{path.name}".strip("/")
            )
        else:
            client.log_artifact(run_id, str(staged), artifact_path=artifact_path)
