"""benchmarks/gpu_train.py runs end to end: its CPU smoke mode times every side on a tiny model."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_gpu_benchmark_smoke_runs_every_side(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_train.py"), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    sides = {(r["method"], r["batching"]) for r in results}
    assert sides == {("lora", "padded"), ("lora", "packed"), ("full", "padded"), ("full", "packed")}
    assert all(r["tokens_per_s"] > 0 and r["step_s"] > 0 for r in results)
    assert "| tiny | lora | packed |" in proc.stdout
