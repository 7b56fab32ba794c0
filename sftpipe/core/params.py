"""params.yaml for one stage: the top-level keys every stage shares, plus the sections it reads.

    params = load_params("params.yaml", sources=Sources, clean=CleanParams)
    params.clean.text, params.seed, params.n_workers

A stage validates only what it reads, so importing its params never imports another stage's code:
its import closure, and so its DVC deps, stay its own. `sftpipe.params.Params` validates the whole
file (the README table and the tests use it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, create_model

from sftpipe.core.config import ParamsError, Section, load_yaml, validate

# Every top-level key of params.yaml, in pipeline order (params.yaml, Params and the README table
# follow it; tests keep them equal).
KEYS = (
    "seed", "workers", "engine", "sources", "model", "distill", "clean", "dedup", "format", "split",
    "mix", "export", "report", "publish", "train", "evaluate",
)  # fmt: skip


class Common(Section):
    seed: int = 42
    """Seed for every random choice (split, mix, sampling, training)."""
    workers: Annotated[int, Field(ge=0)] = 0
    """Processes for CPU-heavy steps; 0 means every available core (outputs are the same for any
    number)."""
    engine: Literal["local", "ray"] = "local"
    """Where ingest, clean, dedup and format run: `local` worker processes, or `ray` (Ray Data on
    a local Ray instance, or the cluster at RAY_ADDRESS). Outputs are byte-identical either way."""

    @property
    def n_workers(self) -> int:
        return self.workers or len(os.sched_getaffinity(0))


def read(path: str | Path) -> dict:
    if not Path(path).is_file():
        raise ParamsError(f"{path}: no such params file (run stages from the repository root)")
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ParamsError(f"invalid params:\n  {unknown[0]}: unknown key")
    return data


def load_params(path: str | Path = "params.yaml", **sections: Any) -> Any:
    """The shared keys and the named sections of `path`, validated; a `Section` type gets its
    defaults when absent, any other type (such as `sources`) is required."""
    fields: dict[str, Any] = {
        name: (kind, kind() if isinstance(kind, type) and issubclass(kind, Section) else ...)
        for name, kind in sections.items()
    }
    model = create_model("StageParams", __base__=Common, **fields)
    data = read(path)
    keep = {k: v for k, v in data.items() if k in Common.model_fields or k in sections}
    return validate(model, keep)
