"""The whole of params.yaml as one typed model: the README's params table and the tests use it.

A stage validates only its own sections (`sftpipe.core.params.load_params`), so that reading its
params never imports another stage's code.

    from sftpipe.params import load_params
    params = load_params()          # the whole file, validated
    params.sources["sharegpt"]      # a SourceSpec
"""

from __future__ import annotations

from pathlib import Path

from sftpipe.core.config import validate
from sftpipe.core.params import Common, read
from sftpipe.data.clean.rules import CleanParams
from sftpipe.data.dedup.params import DedupParams
from sftpipe.data.export import ExportParams
from sftpipe.data.format.formatter import FormatParams
from sftpipe.data.mix import MixParams
from sftpipe.data.report import ReportParams
from sftpipe.data.split import SplitParams
from sftpipe.distill.run import DistillParams
from sftpipe.io.sources import Sources
from sftpipe.model.base_model import ModelParams
from sftpipe.model.evaluate import EvaluateParams
from sftpipe.model.train import TrainParams
from sftpipe.publish import PublishParams


class Params(Common):
    sources: Sources
    """Input datasets by name; each is its own `ingest@<name>` stage."""
    model: ModelParams = ModelParams()
    distill: DistillParams = DistillParams()
    clean: CleanParams = CleanParams()
    dedup: DedupParams = DedupParams()
    format: FormatParams = FormatParams()
    split: SplitParams = SplitParams()
    mix: MixParams = MixParams()
    export: ExportParams = ExportParams()
    report: ReportParams = ReportParams()
    publish: PublishParams = PublishParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()


def load_params(path: str | Path = "params.yaml") -> Params:
    return validate(Params, read(path))
