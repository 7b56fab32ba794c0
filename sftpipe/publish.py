"""publish: share the exported dataset (and the trained model) with an S3-compatible object store
through fsspec/s3fs and with the Hugging Face hub. Off unless `publish.enabled`.

Store layout under `publish.store.url` (e.g. s3://bucket/prefix):
  <name>.tar.gz                          the save_to_disk folder, packed as <name>/ (deterministic bytes)
  <name>/<split>/part-00000.parquet      Parquet shards per split (readable as a `url:` source)
  <name>/README.md                       the dataset card (its `configs` name the shards above)
  <name>-model/...                       models/sft with a model card (README.md)

Where to publish lives in params; who publishes never does: S3 credentials come from the
environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, read by botocore), the
endpoint from params or AWS_ENDPOINT_URL, the hub token from HF_TOKEN only. Error messages are
scrubbed of those values, so they cannot leak through logs either.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import math
import os
import re
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import yaml
from pydantic import field_validator

from sftpipe.core.config import Section
from sftpipe.core.errors import SftpipeError
from sftpipe.core.hashing import file_md5
from sftpipe.core.progress import bar
from sftpipe.data import card as cards
from sftpipe.io.sources import NAME

SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN")
OFFLINE = "HF_HUB_OFFLINE is set; unset it to publish, or set publish.hub.repo_id: null"
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class StoreParams(Section):
    url: str | None = None
    """fsspec URL of the folder to publish into, e.g. s3://bucket/prefix; null skips the store."""
    endpoint_url: str | None = None
    """S3-compatible endpoint (MinIO, Ceph, R2...); null = AWS_ENDPOINT_URL from the environment, else AWS."""
    tarball: bool = True
    """Write <url>/<name>.tar.gz (the save_to_disk folder, packed)."""
    parquet: bool = True
    """Write <url>/<name>/<split>/part-NNNNN.parquet."""
    shard_rows: int = 100_000
    """Rows per Parquet shard."""

    @field_validator("url", "endpoint_url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        if url is not None and "://" not in url:
            raise ValueError("expected a URL with a scheme (s3://, file://...)")
        return url

    @field_validator("shard_rows")
    @classmethod
    def _rows(cls, n: int) -> int:
        if n < 1:
            raise ValueError("must be at least 1")
        return n


class HubParams(Section):
    repo_id: str | None = None
    """Dataset repo on the Hugging Face hub (<user or org>/<name>); null skips it."""
    model_repo_id: str | None = None
    """Model repo for models/sft (<user or org>/<name>); null skips it."""
    private: bool = True
    """Create the repos private (applies when a repo is created)."""
    revision: str | None = None
    """Branch to push to (created from main when missing); null = main."""

    @field_validator("repo_id", "model_repo_id")
    @classmethod
    def _repo(cls, repo_id: str | None) -> str | None:
        if repo_id is not None and not REPO_ID.match(repo_id):
            raise ValueError(f"expected <user or org>/<name>, got {repo_id!r}")
        return repo_id


class PublishParams(Section):
    enabled: bool = False
    """Publish at all; false makes the stage write a report saying so and nothing else."""
    name: str = "sftpipe-sft"
    """Name of the published dataset (tarball, shard folder); the model goes to <name>-model."""
    model: bool = True
    """Also publish models/sft (when present) to the store and to hub.model_repo_id."""
    store: StoreParams = StoreParams()
    hub: HubParams = HubParams()

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not NAME.match(name):
            raise ValueError(f"{name!r}: use letters, digits, '.', '_' or '-'")
        return name


class PublishError(SftpipeError, RuntimeError):
    """Publishing cannot proceed (missing input, credentials or target); the message is one line."""


def check_urls(p: PublishParams) -> None:
    """Refuse URLs that carry credentials (s3://key:secret@bucket): once the stage succeeds, its
    params are copied into dvc.lock. Checked even when publishing is disabled, for that reason;
    the message never repeats the URL (pydantic's would)."""
    for key in ("url", "endpoint_url"):
        url = getattr(p.store, key)
        if url and "@" in urlsplit(url).netloc:
            raise PublishError(
                f"publish.store.{key} holds credentials (user@host); remove them and use environment variables"
            )


def scrub(text: str) -> str:
    """`text` with the values of the credential variables replaced by ***."""
    for key in SECRET_ENV:
        value = os.environ.get(key)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _one_line(exc: BaseException) -> str:
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    return scrub(f"{type(exc).__name__}: {first[:300]}" if first else type(exc).__name__)


# -- what is published ------------------------------------------------------------------------


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def dir_digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes: names the exact dataset (or model)."""
    h = hashlib.sha256()
    for p in _files(root):
        rel = p.relative_to(root).as_posix().encode()
        h.update(b"%d:%s:%d:" % (len(rel), rel, p.stat().st_size))
        with open(p, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def pack(src: Path, dest: Path, arcname: str) -> None:
    """A tar.gz of `src` as `arcname/`, byte-identical for identical content (no times, owners)."""
    with (
        open(dest, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for path in [src, *sorted(src.rglob("*"))]:
            info = tar.gettarinfo(str(path), arcname=str(Path(arcname) / path.relative_to(src)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o755 if info.isdir() else 0o644
            if info.isfile():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)


def parquet_shards(dsd, dest: Path, shard_rows: int) -> list[Path]:
    """Each split as <dest>/<split>/part-NNNNN.parquet, at most `shard_rows` rows per shard."""
    out = []
    for split, ds in dsd.items():
        n = max(1, math.ceil(len(ds) / shard_rows))
        for i in range(n):
            path = dest / split / f"part-{i:05d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.shard(n, i, contiguous=True).to_parquet(str(path))
            out.append(path)
    return out


def _front_matter(meta: dict) -> str:
    return "---\n" + yaml.safe_dump(meta, sort_keys=True, allow_unicode=True) + "---\n"


def model_card(
    model_dir: Path,
    name: str,
    digest: str,
    metadata: dict,
    train_params: dict | None,
    dataset_ref: str | None,
) -> str:
    """Names what the model was trained on (dataset digest, data params digest) and with what params."""
    adapter = model_dir / "adapter_config.json"
    config = orjson.loads(adapter.read_bytes()) if adapter.exists() else {}
    front: dict = {"tags": ["sft", "sftpipe"], "library_name": "peft" if config else "transformers"}
    if dataset_ref and REPO_ID.match(dataset_ref):
        front["datasets"] = [dataset_ref]
    lines = [
        _front_matter(front),
        f"# {name}-model\n",
        ("A LoRA adapter" if config else "A model") + f" fine-tuned by sftpipe on `{dataset_ref or name}`.\n",
        f"- dataset digest: `{digest}`",
        f"- model digest: `{dir_digest(model_dir)}`",
    ]
    if metadata.get("params_digest"):
        lines.append(f"- data params digest: `{metadata['params_digest']}`")
    keys = ("peft_type", "base_model_name_or_path", "r", "lora_alpha", "lora_dropout", "target_modules")
    for key in keys:
        if key in config:
            lines.append(f"- {key}: `{config[key]}`")
    if train_params:
        lines += [
            "",
            "## Training params",
            "",
            "```yaml",
            yaml.safe_dump(train_params, sort_keys=True).rstrip(),
            "```",
        ]
    return "\n".join(lines) + "\n"


# -- object store -----------------------------------------------------------------------------


def store_fs(store: StoreParams):
    """The fsspec filesystem and root path of `store.url`; a fresh instance, so an endpoint or
    credentials changed in the environment are never served from fsspec's instance cache."""
    import fsspec

    if store.url is None:
        raise PublishError("publish.store.url is not set")
    opts: dict = {"skip_instance_cache": True}
    if store.endpoint_url and store.url.startswith(("s3://", "s3a://")):
        opts["endpoint_url"] = store.endpoint_url
    fs, root = fsspec.core.url_to_fs(store.url, **opts)
    return fs, root.rstrip("/")


def stage(
    tmp: Path, p: PublishParams, dsd, hf_dir: Path, card: str, model_dir: Path | None, mcard: str
) -> dict[str, Path]:
    """Everything the store gets, as {path under store.url: local file}."""
    files: dict[str, Path] = {}
    if p.store.tarball:
        files[f"{p.name}.tar.gz"] = tmp / f"{p.name}.tar.gz"
        pack(hf_dir, files[f"{p.name}.tar.gz"], p.name)
    if p.store.parquet:
        for path in parquet_shards(dsd, tmp / p.name, p.store.shard_rows):
            files[path.relative_to(tmp).as_posix()] = path
        card = cards.with_shards(card, dsd)
    files[f"{p.name}/README.md"] = tmp / "dataset-card.md"
    files[f"{p.name}/README.md"].write_text(card, encoding="utf-8")
    if model_dir is not None:
        for path in _files(model_dir):
            rel = path.relative_to(model_dir).as_posix()
            if rel != "README.md":  # the trainer's own card is replaced by ours
                files[f"{p.name}-model/{rel}"] = path
        files[f"{p.name}-model/README.md"] = tmp / "model-card.md"
        files[f"{p.name}-model/README.md"].write_text(mcard, encoding="utf-8")
    return files


def upload(files: dict[str, Path], store: StoreParams) -> dict[str, dict]:
    """Put every staged file under the store URL; returns {relative path: {size, md5}}."""
    fs, root = store_fs(store)
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    done = {}
    for rel in bar(sorted(files), desc="publish: store", unit="file"):
        path, target = files[rel], f"{root}/{rel}"
        try:
            if local:
                fs.makedirs(fs._parent(target), exist_ok=True)
            fs.put_file(str(path), target)
        except Exception as exc:  # botocore/aiohttp/OS errors alike: say which object and why
            raise PublishError(f"publish to {store.url}/{rel}: {_one_line(exc)}") from None
        done[rel] = {"md5": file_md5([path]), "size": path.stat().st_size}
    return done


# -- Hugging Face hub -------------------------------------------------------------------------


def hub_token() -> str:
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise PublishError("publish.hub: HF_TOKEN is not set; export a write token (never put it in params)")
    return token


@contextlib.contextmanager
def hub_errors(what: str) -> Iterator[None]:
    """Turn whatever the hub client raises (offline, unreachable, refused) into one line."""
    from huggingface_hub import constants

    try:
        yield
    except PublishError:
        raise
    except Exception as exc:  # huggingface_hub raises HTTP, connection and offline errors alike
        if constants.HF_HUB_OFFLINE or type(exc).__name__ == "OfflineModeIsEnabled":
            why = OFFLINE
        else:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            why = f"the hub at {constants.ENDPOINT} answered {status}" if status else "the hub is unreachable"
            why += f" ({_one_line(exc)})"
        raise PublishError(f"{what}: {why}") from None


def _hub_repo(api, repo_id: str, repo_type: str, hub: HubParams) -> None:
    api.create_repo(repo_id, repo_type=repo_type, private=hub.private, exist_ok=True)
    if hub.revision:
        api.create_branch(repo_id, branch=hub.revision, repo_type=repo_type, exist_ok=True)


def push_dataset(dsd, card: str, hub: HubParams, token: str, message: str) -> dict:
    """The card first, then `push_to_hub`, which keeps the card's text and adds its own
    dataset_info/configs metadata (the viewer and `load_dataset` read those)."""
    from huggingface_hub import HfApi

    repo_id = hub.repo_id
    if repo_id is None:
        raise PublishError("publish.hub.repo_id is not set")
    api = HfApi(token=token)
    with hub_errors(f"publish to hub dataset {repo_id}"):
        _hub_repo(api, repo_id, "dataset", hub)
        api.upload_file(
            path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo_id,
            repo_type="dataset", revision=hub.revision, commit_message="Dataset card",
        )  # fmt: skip
        info = dsd.push_to_hub(
            repo_id, private=hub.private, token=token, revision=hub.revision, commit_message=message
        )
    return {"repo_id": repo_id, "revision": hub.revision or "main", "commit": info.oid}


def push_model(model_dir: Path, card: str, hub: HubParams, token: str, message: str) -> dict:
    from huggingface_hub import CommitOperationAdd, HfApi

    repo_id = hub.model_repo_id
    if repo_id is None:
        raise PublishError("publish.hub.model_repo_id is not set")
    api = HfApi(token=token)
    ops = [
        CommitOperationAdd(p.relative_to(model_dir).as_posix(), str(p))
        for p in _files(model_dir)
        if p.relative_to(model_dir).as_posix() != "README.md"
    ]
    ops.append(CommitOperationAdd("README.md", card.encode()))
    with hub_errors(f"publish to hub model {repo_id}"):
        _hub_repo(api, repo_id, "model", hub)
        info = api.create_commit(repo_id, operations=ops, commit_message=message, revision=hub.revision)
    return {"repo_id": repo_id, "revision": hub.revision or "main", "commit": info.oid}


# -- the stage --------------------------------------------------------------------------------


def publish(
    p: PublishParams, data: Path, card_path: Path, model_dir: Path, train_params: dict | None
) -> dict:
    """Publish to every configured target; returns what the report records."""
    store, hub = p.store, p.hub
    if not store.url and not hub.repo_id and not hub.model_repo_id:
        raise PublishError(
            "publish.enabled is true but no target: set publish.store.url and/or publish.hub.repo_id"
        )
    token = ""
    if hub.repo_id or hub.model_repo_id:  # fail before any upload rather than half-way
        from huggingface_hub import constants

        token = hub_token()
        if constants.HF_HUB_OFFLINE:
            raise PublishError(f"publish to hub {hub.repo_id or hub.model_repo_id}: {OFFLINE}")
    hf_dir = data / "hf"
    if not (hf_dir / "dataset_dict.json").exists():
        raise PublishError(f"{hf_dir}: no saved DatasetDict; run the export stage first")
    import datasets

    dsd = datasets.load_from_disk(str(hf_dir))
    digest = dir_digest(hf_dir)
    meta_path = data / "metadata.json"
    metadata = orjson.loads(meta_path.read_bytes()) if meta_path.exists() else {}
    card = (
        card_path.read_text(encoding="utf-8")
        if card_path.exists()
        else cards.minimal(dsd, p.name, digest, metadata)
    )
    has_model = p.model and model_dir.is_dir() and bool(_files(model_dir))
    mcard = model_card(model_dir, p.name, digest, metadata, train_params, hub.repo_id) if has_model else ""
    message = f"Publish {p.name} ({digest[:19]})"
    out: dict = {
        "name": p.name,
        "dataset_digest": digest,
        "splits": {s: len(ds) for s, ds in dsd.items()},
        "card": str(card_path) if card_path.exists() else "generated",
        "model": str(model_dir) if has_model else None,
    }

    if store.url:
        with tempfile.TemporaryDirectory(prefix="sftpipe-publish-") as tmp:
            staged = stage(Path(tmp), p, dsd, hf_dir, card, model_dir if has_model else None, mcard)
            out["store"] = {"url": store.url, "files": upload(staged, store)}

    if hub.repo_id or (hub.model_repo_id and has_model):
        out["hub"] = {}
        if hub.repo_id:
            out["hub"]["dataset"] = push_dataset(dsd, card, hub, token, message)
        if hub.model_repo_id and has_model:
            out["hub"]["model"] = push_model(model_dir, mcard, hub, token, message)
    return out
