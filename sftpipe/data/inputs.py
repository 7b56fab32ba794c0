"""inputs: fingerprints of the files each stage reads, so a stage depends on its own inputs only.

DVC depends on paths written in dvc.yaml, and its templating cannot reach a key that only some
sources have (a local `path`, not a hub id), so every ingest used to depend on all of data/raw/:
one new file there re-ran every source. The `inputs` stage depends on data/raw/ instead and writes
one small JSON per consumer saying what identifies the bytes it reads: each local file's md5, the
package version and file md5, the URL's ETag, the hub id and revision. Each consumer depends on its
own JSON, and DVC skips it when that comes out the same. It also gives evaluate's task files a DVC
dependency they lacked, and distill the model files its params name (an NLI model, a GGUF): keep
them under data/raw/ so that replacing one re-runs this stage.
"""

from __future__ import annotations

from pathlib import Path

from sftpipe.core.config import ParamsError
from sftpipe.core.hashing import file_md5
from sftpipe.core.jsonio import write_json
from sftpipe.io.readers import ReadError, files_in
from sftpipe.io.sources import SourceSpec, digest


def local_files(key: str, path: str | Path) -> dict[str, str]:
    """md5 of each file a local path names (a file, or every readable file of a folder), by path."""
    try:
        found = files_in(path)
    except ReadError as exc:
        raise ParamsError(f"{key}: {exc}") from None
    return {str(p): file_md5([p]) for p in found}


def model_files(key: str, path: str) -> dict[str, str]:
    """md5 of a model file, or of every file of a model folder, by path."""
    root = Path(path)
    if not root.exists():
        raise ParamsError(
            f"{key}: {path}: no such file or folder (a local path; fetch a hub model once with "
            "`hf download <id> --local-dir data/raw/models/<name>`)"
        )
    found = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): file_md5([p]) for p in found}


def source(name: str, spec: SourceSpec) -> dict:
    if spec.path:
        return {"files": local_files(f"sources.{name}.path", spec.path)}
    return {"input": digest(spec)}


def _paths(params: dict, *keys: str) -> dict:
    """The value at a dotted path of the raw params, {} when any part is absent (the consuming
    stage validates its own section)."""
    node: object = params
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def evaluation_files(params: dict) -> tuple[dict, dict]:
    """(decontamination sets, evaluate's local files) as name -> {file: md5}."""
    sets = {
        name: local_files(f"dedup.decontaminate.sets.{name}", path)
        for name, path in sorted(_paths(params, "dedup", "decontaminate", "sets").items())
    }
    files = {
        f"tasks.{name}": local_files(f"evaluate.tasks.{name}.path", task["path"])
        for name, task in sorted(_paths(params, "evaluate", "tasks").items())
        if isinstance(task, dict) and isinstance(task.get("path"), str)
    }
    prompts = _paths(params, "evaluate", "judge").get("prompts")
    if isinstance(prompts, str):
        files["judge.prompts"] = local_files("evaluate.judge.prompts", prompts)
    return sets, files


def distill_files(params: dict) -> dict:
    """The model files distill's params name, as name -> {file: md5} ({} when distill is off)."""
    if _paths(params, "distill").get("enabled") is False:
        return {}
    named = {"nli.model": _paths(params, "distill", "nli").get("model")}
    named["local.gguf"] = _paths(params, "distill", "local").get("gguf")
    return {k: model_files(f"distill.{k}", v) for k, v in named.items() if isinstance(v, str)}


def write(out: str | Path, sources: dict[str, SourceSpec], params: dict) -> dict[str, int]:
    """Write `out`/sources/<name>.json, `out`/decontaminate.json, `out`/evaluate.json and
    `out`/distill.json; a missing file stops it before anything is written."""
    found = {f"sources/{name}.json": source(name, spec) for name, spec in sorted(sources.items())}
    sets, files = evaluation_files(params)
    models = distill_files(params)
    found.update({"decontaminate.json": sets, "evaluate.json": files, "distill.json": models})
    for name, fingerprint in found.items():
        write_json(Path(out) / name, fingerprint)
    return {
        "sources": len(sources),
        "decontaminate": len(sets),
        "evaluate": len(files),
        "distill": len(models),
    }
