"""The pieces every stage shares: params, records, accounting, JSON I/O, the worker engine.

Importing it pins the CPU kernels of torch, MKL and oneDNN to AVX2 (unless the environment already
names a level): each picks its code path from the CPU it runs on, so a model trained on a machine
with AVX-512 differed at 1e-6 from one trained without, and `dvc.lock` and the reports with it.
AVX2 is what nearly every x86-64 machine of the last decade has, so the same inputs give the same
bytes on each of them. Every stage imports this before torch; a user who prefers the native path
sets ATEN_CPU_CAPABILITY, MKL_CBWR and ONEDNN_MAX_CPU_ISA (e.g. to avx512 / AUTO / ALL).
"""

import os

for _name, _value in {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}.items():
    os.environ.setdefault(_name, _value)
