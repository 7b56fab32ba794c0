"""Where the data stages' CPU-heavy work runs: worker processes on this machine (`engine: local`)
or Ray Data (`engine: ray`: a local Ray instance, or the cluster at `RAY_ADDRESS`).

Work is cut into `Part`s that name their input (a file and a range of its lines) and never carry
it: each worker reads its own part, so on a cluster the driver ships a few hundred descriptors,
not the data. Parts depend only on the input (never on the number of workers), both engines run
the same function on the same parts, and results come back in part order; so a stage's outputs
are byte-identical whichever engine and however many workers run it.

    parts = split_lines("data/interim/clean/records.jsonl", 4096)
    for result in ordered_map(work, parts, setup=make_state, setup_args=(params,), engine="ray"):
        ...  # results in part order; `work(state, part)` ran on some worker

The driver keeps what must be sequential (accounting, ids, writing the DVC outputs); on a
cluster every node must see the part's files: a shared filesystem, or an fsspec URL (`s3://`).
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import pickle
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from sftpipe.core.errors import SftpipeError

Engine = Literal["local", "ray"]
BLOCK = 16 << 20  # bytes read at a time while counting lines

T = TypeVar("T")  # a task: a `Part`, or any picklable object a stage cuts its work into
R = TypeVar("R")  # what `fn` returns for one task


class EngineError(SftpipeError, RuntimeError):
    """The engine cannot start (Ray missing, cluster unreachable)."""


@dataclass(frozen=True)
class Part:
    """Lines [first_line, first_line + n_lines) of `path`, at bytes [start, end). `path` is as
    the stage named it (for messages); `location` is where any worker on any node reads it."""

    path: str
    location: str
    start: int
    end: int
    first_line: int
    n_lines: int
    index: int

    def lines(self) -> Iterator[tuple[int, bytes]]:
        """(line number, line without its newline) for every non-blank line of the part."""
        with _open(self.location) as fh:
            fh.seek(self.start)
            data = fh.read(self.end - self.start)
        for k, line in enumerate(data.split(b"\n"), self.first_line):
            if line.strip():
                yield k, line.rstrip(b"\r")


def _open(path: str):
    if "://" in path:
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(path, "rb")


def split_lines(path: str | Path, lines_per_part: int) -> list[Part]:
    """Cut a line-delimited file into parts of `lines_per_part` lines (the last may be shorter),
    in one streaming pass that only counts newlines."""
    path = str(path)
    location = path if "://" in path else os.path.abspath(path)  # a cluster worker has another cwd
    parts: list[Part] = []
    start = pos = count = 0
    first, last = 1, b"\n"
    with _open(path) as fh:
        while block := fh.read(BLOCK):
            at = 0
            while (nl := block.find(b"\n", at)) >= 0:
                at, count = nl + 1, count + 1
                if count == lines_per_part:
                    parts.append(Part(path, location, start, pos + at, first, count, len(parts)))
                    start, first, count = pos + at, first + count, 0
            pos, last = pos + len(block), block[-1:]
    if pos > start:  # the last, shorter part; its last line may lack a newline
        parts.append(Part(path, location, start, pos, first, count + (last != b"\n"), len(parts)))
    return parts


# ---------------------------------------------------------------- running parts

_STATE: dict[str, Any] = {}


def _init_local(setup: Callable, setup_args: tuple, state: Any = None) -> None:
    _STATE["state"] = setup(*setup_args) if state is None else state


def _run_local(fn: Callable, part: Any):
    return fn(_STATE["state"], part)


def _no_state() -> None:
    return None


def ordered_map(
    fn: Callable[[Any, T], R],
    parts: Sequence[T],
    *,
    setup: Callable[..., Any] = _no_state,
    setup_args: tuple = (),
    engine: Engine = "local",
    workers: int = 1,
    state: Any = None,
) -> Iterator[R]:
    """`fn(state, part)` for every part, yielded in part order; `state = setup(*setup_args)` is
    built once per worker (compiled patterns, a tokenizer). At most a few parts per worker are in
    flight, so memory stays flat however large the input. `fn`, `setup` and `setup_args` travel
    to the workers pickled: module-level functions and plain data. Local workers are spawned, so
    they import the calling script again: a script that calls this (or a stage function that
    does) with several workers must do so under `if __name__ == "__main__":`, as the stages do.

    `state`, when given, is that state already built in this process: one local worker uses it,
    and several are forked with it (on Linux) instead of spawned to build their own, which saves
    each the imports and the setup (seconds per worker for a tokenizer). Pass it only from a
    process whose thread pools survive a fork: numpy's BLAS, pyarrow's allocator and the
    tokenizers library handle it (format's driver has started nothing else); rensa's pool does not."""
    if engine == "ray":
        yield from _ray_map(fn, parts, setup, setup_args, workers)
    elif workers <= 1 or len(parts) <= 1:
        if state is None:
            state = setup(*setup_args)
        for part in parts:
            yield fn(state, part)
    else:
        fork = state is not None and sys.platform == "linux"
        # spawn, not fork, by default: this process may run threads (rensa's and the tokenizers'
        # pools, Arrow's) that a fork would copy stopped, and a worker waiting on them hangs. Not
        # forkserver either: its pool made ingest's driver 1.8x slower at 1M (spawn: as fast as fork)
        ctx = multiprocessing.get_context("fork" if fork else "spawn")
        initargs = (setup, setup_args, state if fork else None)
        if fork:
            # the children's collector would otherwise write to every object they inherit, copying
            # the whole heap page by page on their first collection (the gc docs' advice for fork)
            gc.freeze()
        pool = ctx.Pool(min(workers, len(parts)), initializer=_init_local, initargs=initargs)
        if fork:
            gc.unfreeze()  # only what this call froze: the driver's objects are collectable again
        try:
            pending: deque = deque()
            for part in parts:
                pending.append(pool.apply_async(_run_local, (fn, part)))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().get()
            while pending:
                yield pending.popleft().get()
        except BaseException:  # an error, or the caller stopped early: stop the workers now
            pool.terminate()
            pool.join()
            raise
        pool.close()  # terminate() on a clean exit would make idle workers print stacks
        pool.join()


def init_ray(workers: int) -> None:
    """Join the cluster at RAY_ADDRESS, or start a local Ray instance with `workers` CPUs."""
    try:
        import ray
    except ImportError:
        raise EngineError(
            "engine: ray needs the `ray[data]` package (pip install -r requirements.txt)"
        ) from None
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address:
        import sftpipe

        # the cluster's workers get this checkout's library, whatever they have installed
        kwargs["runtime_env"] = {"py_modules": [str(Path(sftpipe.__file__).parent)]}
    else:
        kwargs["num_cpus"] = workers
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise EngineError(f"engine: ray: cannot reach the cluster at RAY_ADDRESS={address}: {exc}") from None
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # results in part order: outputs stay byte-identical
    logging.getLogger("ray.data").setLevel(logging.WARNING)


class _RayWorker:
    """A Ray Data actor: builds the state once, then runs `fn` on each part it is handed."""

    def __init__(self, fn: Callable, setup: Callable, setup_args: tuple, parts: Sequence[Any]):
        self.fn, self.parts = fn, parts
        self.state = setup(*setup_args)

    def __call__(self, batch: dict) -> dict:
        # results travel pickled: Arrow would retype Python values (ints, nulls, nested dicts)
        out = []
        for i in batch["part"]:
            try:
                result = self.fn(self.state, self.parts[int(i)])
            except Exception as exc:  # re-raised on the driver as itself, not as a RayTaskError
                result = _Failed(exc)
            out.append(pickle.dumps(result, protocol=5))
        return {"part": batch["part"], "result": out}


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _ray_map(fn, parts, setup, setup_args, workers) -> Iterator[Any]:
    if not parts:
        return
    init_ray(workers)
    import ray

    # numbered by position: Part.index restarts in every file of a multi-file input
    ds: ray.data.Dataset = ray.data.from_items(
        [{"part": k} for k in range(len(parts))], override_num_blocks=len(parts)
    )
    ds.context.execution_options.preserve_order = True
    ds = ds.map_batches(
        _RayWorker,
        fn_constructor_args=(fn, setup, setup_args, parts),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=max(1, min(workers, len(parts)))),
        num_cpus=1,
    )
    held: dict[int, bytes] = {}  # results that arrived early (preserve_order makes this rare)
    due = 0
    for row in ds.iter_rows():
        held[int(row["part"])] = row["result"]
        while due in held:
            result = pickle.loads(held.pop(due))
            if isinstance(result, _Failed):
                raise result.exc
            yield result
            due += 1
