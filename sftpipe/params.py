"""params.yaml as typed, validated objects. Each stage reads only its own section.

from sftpipe.params import load_params
params = load_params()          # the whole file, validated
params.sources["sharegpt"]      # a SourceSpec
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import field_validator

from sftpipe.base_model import ModelParams
from sftpipe.clean import CleanParams
from sftpipe.config import ParamsError, Section, load_yaml, validate
from sftpipe.dedup import DedupParams
from sftpipe.distill import DistillParams
from sftpipe.evaluate import EvaluateParams
from sftpipe.export import ExportParams
from sftpipe.format import FormatParams
from sftpipe.mix import MixParams
from sftpipe.publish import PublishParams
from sftpipe.report import ReportParams
from sftpipe.sources import NAME, SourceSpec
from sftpipe.split import SplitParams
from sftpipe.train import TrainParams


class Params(Section):
    seed: int = 42
    """Seed for every random choice (split, mix, sampling, training)."""
    workers: int = 0
    """Processes for CPU-heavy steps; 0 means every available core."""
    engine: Literal["local", "ray"] = "local"
    """Where ingest, clean, dedup and format run: `local` worker processes, or `ray` (Ray Data on
    a local Ray instance, or the cluster at RAY_ADDRESS). Outputs are byte-identical either way."""
    sources: dict[str, SourceSpec]
    """Input datasets by name; each is its own `ingest@<name>` stage."""
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    clean: CleanParams = CleanParams()
    dedup: DedupParams = DedupParams()
    split: SplitParams = SplitParams()
    mix: MixParams = MixParams()
    export: ExportParams = ExportParams()
    publish: PublishParams = PublishParams()
    report: ReportParams = ReportParams()
    format: FormatParams = FormatParams()
    distill: DistillParams = DistillParams()

    @field_validator("sources")
    @classmethod
    def _names(cls, sources: dict) -> dict:
        for name in sources:
            if not NAME.match(name):
                raise ValueError(f"source name {name!r}: use letters, digits, '.', '_' or '-'")
        return sources

    @property
    def n_workers(self) -> int:
        return self.workers or len(os.sched_getaffinity(0))


def load_params(path: str | Path = "params.yaml") -> Params:
    if not Path(path).is_file():
        raise ParamsError(f"{path}: no such params file (run stages from the repository root)")
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections")
    return validate(Params, data)
