"""sftpipe.core.engine: parts cover every line once, results come back in order whoever runs them, and
the stages' outputs do not depend on the engine or the number of workers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sftpipe.core.engine import ordered_map, split_lines
from sftpipe.data.clean.rules import CleanError, CleanParams, clean
from sftpipe.data.ingest import ingest
from sftpipe.io.sources import SourceSpec
from tests.conftest import GPT2, ROOT, copy_repo
from tests.test_publish import moto_url, s3  # noqa: F401  (fixtures: a loopback S3)


@pytest.mark.parametrize("content", [b"", b"a\nb\n\nc\n", b"a\nb\nc", b"\n\n\n", b"x\r\ny\r\n", b"x\n" * 10])
@pytest.mark.parametrize("size", [1, 2, 3, 100])
def test_parts_hold_every_non_blank_line_once_with_its_number(tmp_path, content, size):
    path = tmp_path / "f.jsonl"
    path.write_bytes(content)
    parts = split_lines(path, size)
    got = [line for part in parts for line in part.lines()]
    want = [(k, ln.rstrip(b"\r")) for k, ln in enumerate(content.split(b"\n"), 1) if ln.strip()]
    assert got == want
    assert [p.index for p in parts] == list(range(len(parts)))
    assert all(p.n_lines == size for p in parts[:-1])
    assert sum(p.n_lines for p in parts) == len(content.splitlines())


def _numbered(state, part):
    return state, [int(line) for _, line in part.lines()]


def test_ordered_map_keeps_part_order_and_builds_state_per_worker(tmp_path):
    path = tmp_path / "n.txt"
    path.write_bytes(b"".join(b"%d\n" % i for i in range(1000)))
    parts = split_lines(path, 37)
    one = list(ordered_map(_numbered, parts, setup=str.upper, setup_args=("s",), workers=1))
    two = list(ordered_map(_numbered, parts, setup=str.upper, setup_args=("s",), workers=2))
    assert one == two
    assert [n for _, ns in two for n in ns] == list(range(1000))
    assert {s for s, _ in two} == {"S"}


class _Unpicklable:
    """A worker state that cannot travel pickled: only a fork can hand it to a worker."""

    def __init__(self):
        self.tag = lambda: "driver"

    def __reduce__(self):
        raise TypeError("not picklable")


def _tagged(state, part):
    import os

    return state.tag(), os.getpid(), [int(line) for _, line in part.lines()]


@pytest.mark.skipif(sys.platform != "linux", reason="workers start from a built state by fork on Linux")
def test_a_built_state_reaches_forked_workers_without_setup(tmp_path):
    path = tmp_path / "n.txt"
    path.write_bytes(b"".join(b"%d\n" % i for i in range(100)))
    parts = split_lines(path, 7)
    got = list(ordered_map(_tagged, parts, setup=_no_setup, workers=2, state=_Unpicklable()))
    assert [n for _, _, ns in got for n in ns] == list(range(100))
    assert {tag for tag, _, _ in got} == {"driver"}
    assert len({pid for _, pid, _ in got}) == 2 and os.getpid() not in {pid for _, pid, _ in got}
    one = list(ordered_map(_tagged, parts, setup=_no_setup, workers=1, state=_Unpicklable()))
    assert {pid for _, pid, _ in one} == {os.getpid()}  # one worker: this process, no setup


def _no_setup():
    raise AssertionError("a worker with a built state must not run setup")


def test_a_worker_error_names_the_file_and_line(tmp_path):
    src = tmp_path / "in.jsonl"
    good = '{"id": "a/1", "source": "a", "messages": [{"role": "user", "content": "hi"}], "meta": {}}\n'
    src.write_text(good * 3000 + "{broken\n" + good)
    with pytest.raises(CleanError, match=rf"{src}:3001: invalid JSON"):
        clean([src], tmp_path / "out", CleanParams(), workers=2)


JSONL_SOURCES = {  # real corpora, with bad lines (alpaca-libre), trees (oasst), expansion (self-instruct)
    "libre": {"path": "alpaca_libre_v2.jsonl"},
    "oasst": {"path": "oasst1_en_100_tree.jsonl", "mode": "all", "lang": "en"},
    "seed": {"path": "self_instruct_seed_tasks.jsonl", "format": "self_instruct"},
    "dolly": {"path": "dolly_hhrlhf_1k.jsonl", "max_samples": 700},
}


@pytest.mark.parametrize("name", sorted(JSONL_SOURCES))
def test_parallel_ingest_writes_what_sequential_ingest_writes(tmp_path, corpora, name):
    spec = SourceSpec.model_validate(
        {**JSONL_SOURCES[name], "path": str(corpora / JSONL_SOURCES[name]["path"])}
    )
    reports = []
    for workers in (1, 2):
        tally = ingest(name, spec, tmp_path / f"w{workers}", workers=workers)
        reports.append(tally.as_dict())
    assert reports[0] == reports[1] and reports[0]["out"] > 0
    for file in ("records.jsonl", "rejected.jsonl"):
        assert (tmp_path / "w1" / file).read_bytes() == (tmp_path / "w2" / file).read_bytes()


# ---------------------------------------------------------------- the stages on Ray vs. local

STAGES = [
    ["stages/ingest.py", "libre"],
    ["stages/ingest.py", "oasst"],
    ["stages/ingest.py", "alpaca"],
    ["stages/clean.py"],
    ["stages/dedup.py"],
    ["stages/format.py", "--tokenizer", str(GPT2)],
]


def _run_stages(repo: Path, engine: str, workers: int, corpora: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(engine=engine, workers=workers)
    params["sources"] = {
        "libre": {"path": str(corpora / "alpaca_libre_v2.jsonl")},
        "oasst": {"path": str(corpora / "oasst1_en_100_tree.jsonl"), "mode": "all"},
        "alpaca": {"path": str(corpora / "alpaca_5000.json"), "format": "alpaca"},  # a JSON array
    }
    params["distill"]["enabled"] = False
    params["format"]["max_length"] = 256  # some records too long: drops travel back too
    params["format"]["template"] = "chat"  # GPT-2 has no chat template of its own, nor ChatML tokens
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    for cmd in STAGES:
        proc = subprocess.run([sys.executable, *cmd], cwd=repo, capture_output=True, text=True)
        assert proc.returncode == 0, f"{engine}: {' '.join(cmd)}\n{proc.stderr[-3000:]}"


def _outputs(repo: Path) -> dict[str, bytes]:
    files = [*sorted((repo / "data" / "interim").rglob("*")), *sorted((repo / "reports").rglob("*"))]
    return {str(f.relative_to(repo)): f.read_bytes() for f in files if f.is_file()}


@pytest.mark.slow
def test_ray_engine_writes_byte_identical_outputs(tmp_path, corpora, gpt2_dir):
    pytest.importorskip("ray")
    outputs = {}
    for engine, workers in (("local", 2), ("ray", 2)):
        repo = copy_repo(tmp_path / engine)
        shutil.rmtree(repo / "data" / "interim", ignore_errors=True)
        _run_stages(repo, engine, workers, corpora)
        outputs[engine] = _outputs(repo)
    local, ray = outputs["local"], outputs["ray"]
    assert "data/interim/format/data.parquet" in local
    assert sorted(local) == sorted(ray)
    differ = [name for name in local if local[name] != ray[name]]
    assert not differ, f"ray and local outputs differ: {differ}"


def test_parts_of_an_s3_object_read_what_the_local_file_holds(s3, corpora):  # noqa: F811
    client, bucket = s3
    local = corpora / "alpaca_libre_v2.jsonl"
    client.put_object(Bucket=bucket, Key="in/libre.jsonl", Body=local.read_bytes())
    remote = split_lines(f"s3://{bucket}/in/libre.jsonl", 500)
    assert remote[0].location == f"s3://{bucket}/in/libre.jsonl"  # what a worker on any node opens
    assert [ln for p in remote for ln in p.lines()] == [
        ln for p in split_lines(local, 500) for ln in p.lines()
    ]


def _fail_on_seven(state, part):
    values = [int(line) for _, line in part.lines()]
    if 7 in values:
        raise CleanError(f"{part.path}:{part.first_line}: seven")
    return values


@pytest.mark.slow
def test_ray_map_orders_parts_of_several_files_and_reraises_worker_errors(tmp_path, ray_engine):
    files = []
    for k, numbers in enumerate((range(0, 5), range(10, 40), range(100, 103))):
        files.append(tmp_path / f"{k}.txt")
        files[-1].write_bytes(b"".join(b"%d\n" % i for i in numbers))
    parts = [p for f in files for p in split_lines(f, 4)]  # Part.index restarts in every file
    got = list(ordered_map(_numbered, parts, setup=str.upper, setup_args=("s",), engine="ray", workers=2))
    assert [n for _, ns in got for n in ns] == [*range(0, 5), *range(10, 40), *range(100, 103)]
    (tmp_path / "bad.txt").write_bytes(b"1\n7\n8\n9\n")
    with pytest.raises(CleanError, match="bad.txt:1: seven"):  # the worker's own error, one line
        list(ordered_map(_fail_on_seven, split_lines(tmp_path / "bad.txt", 3), engine="ray", workers=2))
