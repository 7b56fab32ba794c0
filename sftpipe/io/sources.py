"""Where a source's data lives: a hub dataset, a local file or folder, a file inside an installed
Python package, or an fsspec URL. `rows(name, spec)` yields `(where, row)` from any of them.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, model_validator

from sftpipe.core.config import Section
from sftpipe.core.errors import SftpipeError
from sftpipe.core.hashing import file_md5
from sftpipe.core.records import Drop
from sftpipe.io.readers import ReadError, files_in, kind_of, read_file
from sftpipe.io.schemas import FORMATS

Format = Literal[FORMATS]  # type: ignore[valid-type]
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SourceSpec(Section):
    """One entry of `sources:`; exactly one of hub / path / package (+ file) / url says where."""

    hub: str | None = None
    """Hugging Face dataset id (needs the network, or a filled `cache_dir`)."""
    path: str | None = None
    """Local file or folder (.json, .jsonl, .json.gz, .jsonl.gz, .parquet, .csv)."""
    package: str | None = None
    """Installed Python package holding the data; `file` is the path inside it."""
    file: str | None = None
    """Path of the data file inside `package`."""
    url: str | None = None
    """fsspec URL (s3://, https://, gs://...); credentials come from the environment only."""
    format: Format | None = None
    """Schema; auto-detected from the first record when absent."""
    config: str | None = None
    """Hub dataset configuration (subset) name."""
    split: str = "train"
    """Hub dataset split to read."""
    revision: str | None = None
    """Hub dataset revision (branch, tag or commit)."""
    streaming: bool = False
    """Stream the hub dataset instead of downloading it whole."""
    data_dir: str | None = None
    """Hub dataset `data_dir` argument."""
    cache_dir: str | None = None
    """Hub cache folder (a filled one lets a hub source load offline)."""
    max_samples: int | None = None
    """Read at most this many input records (OASST flat rows, one message each: conversations)."""
    lang: str | list[str] | None = None
    """Keep only records whose language field is one of these (records without one are kept)."""
    license: str | None = None
    """License recorded in every record's `meta.license` and in the dataset card."""
    mode: Literal["best", "all"] = "best"
    """OASST trees: follow the best-ranked reply (`best`) or take every root-to-leaf path (`all`)."""
    reasoning: Literal["split", "keep", "drop"] = "keep"
    """`<think>` blocks in assistant text: move into the turn's reasoning (`split`), leave as text (`keep`), or remove them and any reasoning (`drop`)."""
    on_bad_record: Literal["drop", "error"] = "drop"
    """A bad input record is dropped with its reason (`drop`) or stops the stage (`error`)."""
    on_truncated: Literal["drop", "error"] = "drop"
    """A truncated JSON array or damaged gzip: keep every complete record and drop the tail, or stop."""
    on_empty: Literal["error", "warn"] = "error"
    """Records in but none out (all dropped): stop the stage (`error`) or only warn (`warn`)."""

    @model_validator(mode="after")
    def _one_location(self) -> SourceSpec:
        given = [k for k in ("hub", "path", "package", "url") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of hub, path, package, url (got {given or 'none'})")
        if (self.package is None) != (self.file is None):
            raise ValueError("'package' and 'file' go together")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError("max_samples must be at least 1")
        if self.url is not None and (why := credentials_in(self.url)):
            # Said without the URL: params.yaml reaches git, dvc.lock, reports and MLflow.
            raise ValueError(
                f"url: holds {why}; give credentials through the environment (AWS_*, HF_TOKEN, "
                "fsspec's config) or a private store, never in params.yaml"
            )
        return self

    @property
    def langs(self) -> set[str] | None:
        return {self.lang} if isinstance(self.lang, str) else set(self.lang) if self.lang else None


# Query parameters that make a URL a credential by itself (presigned S3, GCS, Azure SAS, tokens).
_SIGNED = re.compile(
    r"(?:^|&)(?:x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|signature|sig|"
    r"token|access_token|api_key|apikey|key)=",
    re.I,
)


def credentials_in(url: str) -> str | None:
    """What secret `url` carries (a password, a presigned signature or token), or None."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.password:
        return "a password"
    if parts.query and _SIGNED.search(parts.query):
        return "a signature or token in its query string (a presigned URL)"
    return None


def _names(sources: dict) -> dict:
    for name in sources:
        if not NAME.match(name):
            raise ValueError(f"source name {name!r}: use letters, digits, '.', '_' or '-'")
    return sources


Sources = Annotated[dict[str, SourceSpec], AfterValidator(_names)]
"""The `sources:` section: input datasets by name; each is its own `ingest@<name>` stage."""


class SourceError(SftpipeError, RuntimeError):
    """A source cannot be read at all; the message is one line naming the source."""


def rows(name: str, spec: SourceSpec) -> Iterator[tuple[dict, dict | Drop]]:
    """Every raw row of a source, with where it came from."""
    try:
        if spec.hub:
            yield from _hub(name, spec)
        elif spec.path:
            for f in files_in(spec.path):
                yield from read_file(f)
        elif spec.package:
            yield from _package(name, spec)
        else:
            yield from _url(name, spec)
    except ReadError as exc:
        raise SourceError(f"source {name}: {exc}") from None


def _package(name: str, spec: SourceSpec) -> Iterator[tuple[dict, dict | Drop]]:
    assert spec.package is not None and spec.file is not None  # the validator pairs them
    try:
        root = importlib.resources.files(spec.package)
    except ModuleNotFoundError:
        raise SourceError(
            f"source {name}: package {spec.package!r} is not installed (pip install it)"
        ) from None
    resource = root.joinpath(spec.file)
    if not resource.is_file():
        raise SourceError(f"source {name}: package {spec.package!r} has no file {spec.file!r}")
    with importlib.resources.as_file(resource) as local:
        yield from read_file(Path(local), display=f"{spec.package}:{spec.file}")


def _url(name: str, spec: SourceSpec) -> Iterator[tuple[dict, dict | Drop]]:
    import fsspec

    url = spec.url
    assert url is not None  # the validator requires exactly one location, and it is not another
    kind_of(url)  # fail early on an unsupported file type
    with tempfile.TemporaryDirectory(prefix="sftpipe-url-") as tmp:
        local = Path(tmp) / Path(url.split("?", 1)[0]).name
        try:
            with fsspec.open(url, "rb") as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except Exception as exc:  # fsspec backends raise many types; say which URL failed and why
            raise SourceError(f"source {name}: cannot read {url}: {type(exc).__name__}: {exc}") from None
        yield from read_file(local, display=url)


def _hub(name: str, spec: SourceSpec) -> Iterator[tuple[dict, dict | Drop]]:
    import datasets

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        ds = datasets.load_dataset(
            spec.hub, name=spec.config, split=spec.split, revision=spec.revision,
            streaming=spec.streaming, data_dir=spec.data_dir, cache_dir=spec.cache_dir,
        )  # fmt: skip
    except Exception as exc:  # datasets raises connection, offline and not-found errors alike
        why = "HF_HUB_OFFLINE is set" if offline else "the hub is unreachable or the dataset is unknown"
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise SourceError(
            f"source {name}: cannot load hub dataset {spec.hub!r} ({why}; {first}). "
            "Use a local copy (path:) or fill cache_dir while online."
        ) from None
    with contextlib.suppress(AttributeError):
        ds = ds.with_format(None)
    for i, row in enumerate(ds):
        yield {"file": f"hub:{spec.hub}", "index": i}, row


def digest(spec: SourceSpec) -> str:
    """What identifies the source's input: an md5 of local or packaged bytes, the URL's ETag or
    checksum when the store gives one, the hub id and revision otherwise."""

    def md5(paths: list[Path]) -> str:
        return "md5:" + file_md5(paths)

    if spec.path:
        return md5(files_in(spec.path))
    if spec.package:
        assert spec.file is not None  # the validator pairs `package` and `file`
        from importlib.metadata import PackageNotFoundError, version

        try:
            ver = version(spec.package.split(".")[0].replace("_", "-"))
        except PackageNotFoundError:
            ver = "unknown"
        with importlib.resources.as_file(
            importlib.resources.files(spec.package).joinpath(spec.file)
        ) as local:
            return f"{spec.package}=={ver} {md5([Path(local)])}"
    if spec.url:
        import fsspec

        info = fsspec.core.url_to_fs(spec.url)[0].info(spec.url)
        tag = (
            info.get("ETag")
            or info.get("etag")
            or info.get("checksum")
            or info.get("md5")
            or info.get("mtime")
        )
        return f"{spec.url} {str(tag).strip(chr(34))}"
    return f"hub:{spec.hub}@{spec.revision or 'default'}"
