"""Sentence encoders for semantic dedup: sentence-transformers on torch, or the same model exported to
ONNX and run with ONNX Runtime, in float32 or with int8 weights (`dedup.semantic.backend`).

The ONNX file holds the whole sentence-transformers pipeline (transformer, pooling, normalization),
so its output is the embedding itself. It is built locally from the model folder (torch's
TorchScript exporter, ONNX Runtime's transformer graph fusions, then for `onnx-int8` its dynamic
quantization of every MatMul, one int8 scale per output channel) and cached under `.cache/onnx/`,
keyed by the model folder's bytes and the onnxruntime version: the first run spends ~15 s on it.
Per-channel scales keep int8 embeddings at cosine >= 0.97 to torch's, mean 0.994 (one scale per
matrix: min 0.89); benchmarks/RESULTS.md has the measurements.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

Backend = Literal["onnx-int8", "onnx", "torch"]
Encode = Callable[[list[str]], np.ndarray]
CACHE = Path(".cache") / "onnx"


def cores() -> int:
    """The cores this process may run on: the encoder's threads (the stage's workers wait meanwhile)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def encoder(folder: Path, backend: Backend, max_seq_length: int, threads: int | None = None) -> Encode:
    """A function from a batch of texts to their unit-length float32 embeddings, one row per text;
    ONNX Runtime runs on `threads` (default: all the process's cores)."""
    if backend == "torch":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        model.max_seq_length = max_seq_length
        return lambda batch: model.encode(
            batch, batch_size=len(batch), normalize_embeddings=True, convert_to_numpy=True
        )
    import onnxruntime as ort
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cores()
    options.inter_op_num_threads = 1
    # waiting threads sleep instead of spinning: on shared cores spinning cost 15% more CPU and wall
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    path = onnx_file(folder, int8=backend == "onnx-int8")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def encode(batch: list[str]) -> np.ndarray:
        # as sentence-transformers tokenizes: stripped, cut to max_seq_length, padded to the longest
        enc = tokenizer([t.strip() for t in batch], padding=True, truncation=True, max_length=max_seq_length,
                        return_tensors="np")  # fmt: skip
        vecs = session.run(None, {n: enc[n].astype(np.int64) for n in names})[0]
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)

    return encode


def onnx_file(folder: Path, int8: bool, cache: Path = CACHE) -> Path:
    """The model's ONNX file, built on first use and kept under `cache` by the model's bytes."""
    import onnxruntime

    digest = hashlib.sha256(f"onnxruntime {onnxruntime.__version__} int8 {int8}".encode())
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f.relative_to(folder).as_posix().encode() + b"\0" + f.read_bytes())
    path = cache / digest.hexdigest()[:24] / "model.onnx"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".build-"))
        try:
            _build(folder, tmp / "model.onnx", int8)
            os.makedirs(path.parent, exist_ok=True)
            os.replace(tmp / "model.onnx", path)  # atomic: a concurrent run sees all of it or none
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _build(folder: Path, dest: Path, int8: bool) -> None:
    """Export the sentence-transformers model to `dest`, fuse its graph, and quantize it if asked."""
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True).eval()
    names = [n for n in model.tokenizer.model_input_names if n != "position_ids"]

    class Pipeline(torch.nn.Module):  # positional tensors in, the sentence embedding out
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.model(dict(zip(names, inputs, strict=True)))["sentence_embedding"]

    sample = model.tokenizer(
        ["a short text", "a text that is a little longer"], padding=True, return_tensors="pt"
    )
    raw = dest.with_name("raw.onnx")
    axes = {n: {0: "batch", 1: "tokens"} for n in names}
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer's notes on shapes it fixes (the pooling's mask check holds for every input)
        warnings.simplefilter("ignore", (torch.jit.TracerWarning, UserWarning, DeprecationWarning))
        torch.onnx.export(
            Pipeline(), tuple(sample[n] for n in names), str(raw), input_names=names,
            output_names=["embedding"], dynamic_axes={**axes, "embedding": {0: "batch"}}, opset_version=17,
            dynamo=False,  # the TorchScript exporter: no onnxscript needed, and ONNX Runtime's fusions know its graphs
        )  # fmt: skip
    fused = dest.with_name("fused.onnx")
    # opt_level 1: fusions that run on any CPU (levels 2+ bake in this machine's kernels)
    optimize_model(str(raw), model_type="bert", opt_level=1).save_model_to_file(str(fused))
    if not int8:
        os.replace(fused, dest)
        return
    quantize_dynamic(
        str(fused), str(dest), weight_type=QuantType.QInt8, per_channel=True,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # the fused ops have no shape inference
    )  # fmt: skip
