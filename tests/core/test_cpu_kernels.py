"""Importing sftpipe.core pins torch's CPU kernels to AVX2, so a machine with AVX-512 computes the
bytes a machine without it does (issue 19: CPU training differed at 1e-6 between machines)."""

import os
import subprocess
import sys

import pytest

PINS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")

# a forward and backward through the kernels a transformer uses: matmul, gelu, layer norm, softmax
PROGRAM = """
import hashlib, sys
if sys.argv[1] == "sftpipe":
    import sftpipe.core
import torch
torch.manual_seed(0)
x = torch.randn(64, 768, requires_grad=True)
h = torch.nn.functional.gelu(x @ (torch.randn(768, 3072) / 30))
y = torch.softmax(torch.nn.functional.layer_norm(h, (3072,)), -1).log().mean()
y.backward()
print(torch.backends.cpu.get_cpu_capability(), hashlib.md5(x.grad.numpy().tobytes()).hexdigest())
"""


def _run(mode: str, **env: str) -> tuple[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in PINS}
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0], out[1]


@pytest.fixture(scope="module")
def native() -> tuple[str, str]:
    found = _run("native")
    if found[0] not in ("AVX2", "AVX512"):
        pytest.skip(f"CPU kernels here are {found[0]}, not x86 AVX2 or better")
    return found


def test_sftpipe_pins_the_kernels_an_avx2_machine_uses(native):
    pinned = _run("sftpipe")
    avx2_machine = _run("native", ATEN_CPU_CAPABILITY="avx2", MKL_CBWR="AVX2", ONEDNN_MAX_CPU_ISA="AVX2")
    assert pinned == avx2_machine and pinned[0] == "AVX2"
    if native[0] == "AVX512":  # why the pin exists: left alone, this machine computes other bytes
        assert native[1] != pinned[1]


def test_a_level_the_user_sets_wins(native):
    assert _run("sftpipe", ATEN_CPU_CAPABILITY="default")[0] == "DEFAULT"
