"""publish: deterministic packing, cards, a real S3-compatible store (moto's server on loopback)
read back through a `url:` source, the hub client up to the network boundary (a recording
stand-in on loopback), one-line errors, and a credentials canary through `dvc repro`."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from sftpipe.core.config import ParamsError, validate
from sftpipe.core.jsonio import read_jsonl
from sftpipe.data.card import minimal
from sftpipe.data.export import save_hf
from sftpipe.publish import (
    PublishError,
    PublishParams,
    check_urls,
    dir_digest,
    model_card,
    pack,
    publish,
    scrub,
)
from tests.conftest import ROOT, copy_repo, dvc, format_table
from tests.hubserver import FakeHub

CANARY_SECRET = "canary-aws-secret-7f3a9c"
CANARY_TOKEN = "hf_canary_token_51d2e8"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_url():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(moto_url, monkeypatch, request):
    """A fresh bucket on the loopback server; credentials and endpoint only in the environment."""
    import boto3
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    s3fs.S3FileSystem.clear_instance_cache()  # an instance cached before this env would skip it
    bucket = request.node.name.replace("_", "-").lower()[:50]
    client = boto3.client("s3")
    client.create_bucket(Bucket=bucket)
    yield client, bucket
    s3fs.S3FileSystem.clear_instance_cache()


def make_processed(root: Path, rows: dict[str, list[dict]] | None = None, tokenizer=None) -> Path:
    """data/processed as export writes it: hf/ (save_to_disk) and metadata.json."""
    rows = rows or {
        "train": [{"id": f"a/{i}", "source": "a"} for i in range(5)],
        "val": [{"id": "a/v", "source": "a"}],
        "test": [{"id": "b/t", "source": "b"}],
    }
    data = root / "data" / "processed"
    save_hf({s: format_table(r, tokenizer) for s, r in rows.items()}, data / "hf")
    meta = {"params_digest": "0123456789abcdef", "template": "chatml", "tokenizer": "gpt2", "sources": {}}
    (data / "metadata.json").write_text(json.dumps(meta))
    return data


def make_adapter(root: Path) -> Path:
    model = root / "models" / "sft"
    model.mkdir(parents=True)
    config = {"peft_type": "LORA", "base_model_name_or_path": "models/base", "r": 8, "lora_alpha": 16}
    (model / "adapter_config.json").write_text(json.dumps(config))
    (model / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 4)
    return model


def load(data: Path):
    import datasets

    return datasets.load_from_disk(str(data / "hf"))


# -- params and pieces ------------------------------------------------------------------------


def test_params_default_off_and_errors_name_the_key():
    assert PublishParams().enabled is False and PublishParams().hub.private is True
    with pytest.raises(ParamsError, match=r"publish\.hub\.repo_id: expected <user or org>/<name>"):
        validate(PublishParams, {"hub": {"repo_id": "no-namespace"}}, "publish")
    with pytest.raises(ParamsError, match=r"publish\.store\.shard_rows: must be at least 1"):
        validate(PublishParams, {"store": {"shard_rows": 0}}, "publish")
    with pytest.raises(ParamsError, match=r"publish\.store\.url: expected a URL with a scheme"):
        validate(PublishParams, {"store": {"url": "bucket/prefix"}}, "publish")


def test_credentials_in_a_url_are_refused_without_repeating_them():
    p = PublishParams.model_validate({"store": {"url": "s3://AKIAXX:hunter22secret@bucket/x"}})
    with pytest.raises(PublishError) as exc:
        check_urls(p)
    assert str(exc.value) == (
        "publish.store.url holds credentials (user@host); remove them and use environment variables"
    )


def test_scrub_replaces_credential_values(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", CANARY_TOKEN)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY_SECRET)
    assert scrub(f"bad {CANARY_TOKEN} and {CANARY_SECRET}!") == "bad *** and ***!"


def test_pack_is_deterministic_and_loads_back(tmp_path):
    data = make_processed(tmp_path)
    pack(data / "hf", tmp_path / "a.tar.gz", "ds")
    os.utime(data / "hf" / "dataset_dict.json", (1, 1))  # times and owners never enter the bytes
    pack(data / "hf", tmp_path / "b.tar.gz", "ds")
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        members = tar.getmembers()
        assert members[0].name == "ds" and {m.mtime for m in members} == {0}
        assert "ds/dataset_dict.json" in tar.getnames() and "ds/train/state.json" in tar.getnames()
        tar.extractall(tmp_path / "x", filter="data")
    import datasets

    back = datasets.load_from_disk(str(tmp_path / "x" / "ds"))
    assert back["train"]["id"] == [f"a/{i}" for i in range(5)]
    assert back["train"].column_names == load(data)["train"].column_names


def test_generated_dataset_card(tmp_path):
    dsd = load(make_processed(tmp_path))
    card = minimal(dsd, "mini", "sha256:abc", {"template": "chatml", "params_digest": "0123"})
    assert card == (
        "---\npretty_name: mini\ntags:\n- sft\n- sftpipe\n---\n\n# mini\n\n"
        "Supervised fine-tuning data built by the sftpipe pipeline (tokenized, split by cluster).\n\n"
        "- dataset digest: `sha256:abc`\n"
        "- splits: train 5, val 1, test 1\n"
        "- columns: `id`, `source`, `cluster`, `text`, `input_ids`, `attention_mask`, `labels`, `messages`, "
        "`tools`, `meta`\n"
        "- template: `chatml`\n"
        "- params digest: `0123`\n"
    )
    from huggingface_hub import DatasetCard

    parsed = DatasetCard(card)
    assert parsed.data.to_dict() == {"pretty_name": "mini", "tags": ["sft", "sftpipe"]}
    assert parsed.text.startswith("\n# mini\n") and str(parsed) == card


def test_stored_card_names_the_shards_and_loads_with_load_dataset(tmp_path):
    """The store's copy of the report's card keeps its metadata and text, and its `configs` point at
    the shards beside it (the report names the hub's data/ layout), so the folder loads as is."""
    import datasets
    from huggingface_hub import DatasetCard

    from sftpipe.data.card import build

    data = make_processed(tmp_path)
    meta = {"license": ["mit"], "pretty_name": "mini", "configs": [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}
    ]}  # fmt: skip
    build(meta, "# mini\n\nReviewed.\n").save(tmp_path / "card.md")
    p = PublishParams.model_validate(
        {"enabled": True, "store": {"url": (tmp_path / "store").as_uri(), "shard_rows": 3}}
    )
    out = publish(p, data, tmp_path / "card.md", tmp_path / "no-model", None)
    folder = tmp_path / "store" / "sftpipe-sft"
    assert out["card"] == str(tmp_path / "card.md") and out["model"] is None
    card = DatasetCard.load(folder / "README.md")
    assert card.data.license == ["mit"] and card.data.pretty_name == "mini"
    assert card.data.configs == [{"config_name": "default", "data_files": [
        {"split": s, "path": f"{s}/part-*.parquet"} for s in ("train", "val", "test")
    ]}]  # fmt: skip
    assert card.text == "\n# mini\n\nReviewed.\n"
    loaded = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
    assert {s: ds["id"] for s, ds in loaded.items()} == {s: ds["id"] for s, ds in load(data).items()}


def test_model_card_names_dataset_digest_and_params(tmp_path):
    model = make_adapter(tmp_path)
    card = model_card(
        model, "mini", "sha256:abc", {"params_digest": "0123"}, {"lr": 0.0002, "epochs": 1}, "me/ds"
    )
    front = yaml.safe_load(card.split("---\n")[1])
    assert front == {"datasets": ["me/ds"], "library_name": "peft", "tags": ["sft", "sftpipe"]}
    assert "- dataset digest: `sha256:abc`\n" in card and "- data params digest: `0123`\n" in card
    assert f"- model digest: `{dir_digest(model)}`\n" in card
    assert "- r: `8`\n" in card and "- base_model_name_or_path: `models/base`\n" in card
    assert card.endswith("## Training params\n\n```yaml\nepochs: 1\nlr: 0.0002\n```\n")


# -- S3-compatible store ----------------------------------------------------------------------


def test_store_round_trip_through_a_url_source(s3, tmp_path):
    from sftpipe.data.ingest import ingest
    from sftpipe.io.sources import SourceSpec

    client, bucket = s3
    data = make_processed(tmp_path)
    model = make_adapter(tmp_path)
    p = PublishParams.model_validate(
        {"enabled": True, "store": {"url": f"s3://{bucket}/team/v1", "shard_rows": 3}}
    )
    out = publish(p, data, tmp_path / "no-card.md", model, None)
    # Publishing again stores byte-identical objects (tarball, shards, cards).
    assert publish(p, data, tmp_path / "no-card.md", model, None) == out

    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [
        "team/v1/sftpipe-sft-model/README.md",
        "team/v1/sftpipe-sft-model/adapter_config.json",
        "team/v1/sftpipe-sft-model/adapter_model.safetensors",
        "team/v1/sftpipe-sft.tar.gz",
        "team/v1/sftpipe-sft/README.md",
        "team/v1/sftpipe-sft/test/part-00000.parquet",
        "team/v1/sftpipe-sft/train/part-00000.parquet",
        "team/v1/sftpipe-sft/train/part-00001.parquet",
        "team/v1/sftpipe-sft/val/part-00000.parquet",
    ]
    assert sorted(out["store"]["files"]) == [k.removeprefix("team/v1/") for k in keys]
    assert out["splits"] == {"train": 5, "val": 1, "test": 1} and out["card"] == "generated"
    # The stored tarball is byte-identical to a local pack, and its md5 is what the report says.
    pack(data / "hf", tmp_path / "local.tar.gz", "sftpipe-sft")
    stored = client.get_object(Bucket=bucket, Key="team/v1/sftpipe-sft.tar.gz")
    assert stored["Body"].read() == (tmp_path / "local.tar.gz").read_bytes()
    assert stored["ETag"].strip('"') == out["store"]["files"]["sftpipe-sft.tar.gz"]["md5"]
    card = client.get_object(Bucket=bucket, Key="team/v1/sftpipe-sft-model/README.md")["Body"].read().decode()
    assert f"- dataset digest: `{out['dataset_digest']}`" in card

    # Read the shards back with a source spec: the same records as the local dataset's rows.
    train = load(data)["train"]
    records = []
    for i in range(2):
        url = f"s3://{bucket}/team/v1/sftpipe-sft/train/part-{i:05d}.parquet"
        tally = ingest("back", SourceSpec(url=url), tmp_path / f"back{i}")
        assert tally.as_dict() == {"in": 3 - i, "out": 3 - i, "dropped": {}}
        records += list(read_jsonl(tmp_path / f"back{i}" / "records.jsonl"))
    train.to_parquet(str(tmp_path / "local.parquet"))
    ingest("back", SourceSpec(path=str(tmp_path / "local.parquet")), tmp_path / "local")
    assert records == list(read_jsonl(tmp_path / "local" / "records.jsonl"))
    assert [r["id"] for r in records] == [
        f"back/{i.split('/', 1)[1]}" for i in train["id"]
    ]  # the canonical adapter's ids
    # The rows carry their records: read back, they are the conversations, not the rendered text.
    assert [r["messages"] for r in records] == train["messages"]


def test_store_endpoint_from_params(s3, tmp_path, monkeypatch):
    client, bucket = s3
    endpoint = os.environ.pop("AWS_ENDPOINT_URL")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    data = make_processed(tmp_path)
    p = PublishParams.model_validate(
        {
            "enabled": True,
            "name": "d",
            "store": {"url": f"s3://{bucket}", "endpoint_url": endpoint, "tarball": False},
        }
    )
    out = publish(p, data, tmp_path / "none.md", tmp_path / "no-model", None)
    assert sorted(out["store"]["files"]) == [
        "d/README.md", "d/test/part-00000.parquet", "d/train/part-00000.parquet", "d/val/part-00000.parquet",
    ]  # fmt: skip
    body = client.get_object(Bucket=bucket, Key="d/val/part-00000.parquet")["Body"].read()
    assert pq.read_table(io.BytesIO(body)).column("id").to_pylist() == ["a/v"]


def test_store_errors_are_one_line_and_name_the_object(s3, tmp_path, monkeypatch):
    data = make_processed(tmp_path)
    p = PublishParams.model_validate(
        {"enabled": True, "store": {"url": "s3://no-such-bucket/x", "parquet": False}}
    )
    with pytest.raises(PublishError) as exc:
        publish(p, data, tmp_path / "none.md", tmp_path / "none", None)
    msg = str(exc.value)
    assert (
        msg.startswith("publish to s3://no-such-bucket/x/") and "\n" not in msg and CANARY_SECRET not in msg
    )
    with pytest.raises(PublishError, match=r"no saved DatasetDict; run the export stage first"):
        publish(p, tmp_path / "empty", tmp_path / "none.md", tmp_path / "none", None)
    with pytest.raises(PublishError, match=r"no target: set publish.store.url"):
        publish(PublishParams(enabled=True), data, tmp_path / "none.md", tmp_path / "none", None)


def test_store_round_trip_real_corpus(s3, tmp_path, corpora, gpt2_dir):
    """Real alpaca-libre records, tokenized with GPT-2, published and read back unchanged."""
    from transformers import AutoTokenizer

    from sftpipe.data.ingest import ingest
    from sftpipe.io.sources import SourceSpec

    client, bucket = s3
    ingest("libre", SourceSpec(path=str(corpora / "alpaca_libre_v2.jsonl"), max_samples=120), tmp_path / "in")
    recs = list(read_jsonl(tmp_path / "in" / "records.jsonl"))
    rows = [
        {"id": r["id"], "source": r["source"], "prompt": r["messages"][0]["content"] + "\n",
         "completion": r["messages"][-1]["content"]}
        for r in recs
    ]  # fmt: skip
    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    data = make_processed(tmp_path, {"train": rows[:100], "val": rows[100:110], "test": rows[110:]}, tok)
    p = PublishParams.model_validate({"enabled": True, "store": {"url": f"s3://{bucket}/libre"}})
    out = publish(p, data, tmp_path / "none.md", tmp_path / "none", None)
    assert out["splits"] == {"train": 100, "val": 10, "test": len(rows) - 110}
    url = f"s3://{bucket}/libre/sftpipe-sft/train/part-00000.parquet"
    tally = ingest("back", SourceSpec(url=url), tmp_path / "back")
    assert tally.as_dict() == {"in": 100, "out": 100, "dropped": {}}
    back = list(read_jsonl(tmp_path / "back" / "records.jsonl"))
    assert [r["messages"] for r in back] == [
        [{"role": "user", "content": r["prompt"].strip()}, {"role": "assistant", "content": r["completion"]}]
        for r in rows[:100]
    ]
    table = pq.read_table(
        io.BytesIO(client.get_object(Bucket=bucket, Key=url[5 + len(bucket) + 1 :])["Body"].read())
    )
    assert table.column("input_ids").to_pylist() == load(data)["train"]["input_ids"]


# -- the stage script: disabled default, hub up to the network boundary --------------------


def run_stage(cwd: Path, publish_params: dict, env: dict) -> subprocess.CompletedProcess:
    (cwd / "params.yaml").write_text(yaml.safe_dump({"sources": {}, "publish": publish_params}))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "AWS_"))}
    return subprocess.run(
        [sys.executable, str(ROOT / "stages" / "publish.py")],
        cwd=cwd, env={**base, "HF_HUB_DISABLE_XET": "1", **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_stage_disabled_by_default_writes_only_a_report(tmp_path):
    proc = run_stage(tmp_path, {}, {})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "publish: disabled (publish.enabled: false); nothing published\n"
    assert json.loads((tmp_path / "reports" / "publish.json").read_text()) == {
        "in": 0, "out": 0, "dropped": {}, "enabled": False,
        "note": "publish.enabled is false: nothing was published",
    }  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "reports"]


def test_stage_pushes_dataset_and_model_to_the_hub(tmp_path):
    import datasets

    data = make_processed(tmp_path)
    make_adapter(tmp_path)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "dataset_card.md").write_text(
        "---\nlicense: cc0-1.0\n---\n# Team SFT data\n\nReviewed.\n"
    )
    hub_params = {
        "repo_id": "team/sft-data",
        "model_repo_id": "team/sft-model",
        "revision": "v2",
        "private": True,
    }
    with FakeHub() as hub:
        proc = run_stage(
            tmp_path, {"enabled": True, "hub": hub_params}, {"HF_ENDPOINT": hub.url, "HF_TOKEN": CANARY_TOKEN}
        )
        assert proc.returncode == 0, proc.stderr
        creates = [json.loads(r["body"]) for r in hub.requests if r["path"] == "/api/repos/create"]
        assert creates == [
            {"name": "sft-data", "organization": "team", "visibility": "private", "type": "dataset"},
            {"name": "sft-model", "organization": "team", "visibility": "private", "type": "model"},
        ], creates
        # Every repo call carries the token from HF_TOKEN (LFS uploads go to pre-signed URLs).
        repo_calls = [
            r for r in hub.requests if r["path"].startswith(("/api/repos/", "/api/datasets/", "/api/models/"))
        ]
        assert len(repo_calls) > 10
        assert {r["headers"].get("authorization") for r in repo_calls} == {f"Bearer {CANARY_TOKEN}"}
        assert "/api/datasets/team/sft-data/branch/v2" in {r["path"] for r in hub.requests}
        files = hub.files("dataset", "team/sft-data", "v2")
        assert hub.files("dataset", "team/sft-data", "main") == {}  # pushed to the branch only
        model_files = hub.files("model", "team/sft-model", "v2")

    assert sorted(files) == [
        "README.md", "data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet",
        "data/val-00000-of-00001.parquet",
    ]  # fmt: skip
    card = files["README.md"].decode()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "cc0-1.0" and card.endswith("# Team SFT data\n\nReviewed.\n")
    assert [s["name"] for s in front["dataset_info"]["splits"]] == ["train", "val", "test"]
    pushed = datasets.Dataset(pq.read_table(io.BytesIO(files["data/train-00000-of-00001.parquet"])))
    assert pushed.to_list() == load(data)["train"].to_list()

    assert sorted(model_files) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert model_files["adapter_model.safetensors"] == bytes(range(256)) * 4
    report = json.loads((tmp_path / "reports" / "publish.json").read_text())
    assert f"- dataset digest: `{report['dataset_digest']}`" in model_files["README.md"].decode()
    assert report["in"] == report["out"] == 7 and report["card"] == "reports/dataset_card.md"
    assert (
        report["hub"]["dataset"]["repo_id"] == "team/sft-data"
        and report["hub"]["dataset"]["revision"] == "v2"
    )
    assert report["dataset_digest"] == dir_digest(data / "hf")
    assert proc.stdout.endswith(
        f"publish: sftpipe-sft (7 rows, {report['dataset_digest'][:19]}) -> "
        "hf:datasets/team/sft-data@v2, hf:models/team/sft-model@v2\n"
    )


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"HF_HUB_OFFLINE": "1", "HF_TOKEN": "x" * 8},
         "error: publish to hub team/d: HF_HUB_OFFLINE is set; unset it to publish, or set "
         "publish.hub.repo_id: null\n"),
        ({}, "error: publish.hub: HF_TOKEN is not set; export a write token (never put it in params)\n"),
        ({"HF_TOKEN": "x" * 8, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"},
         "error: publish to hub dataset team/d: the hub is unreachable ("),
    ],
)  # fmt: skip
def test_stage_hub_failures_are_one_line(tmp_path, env, expected):
    make_processed(tmp_path)
    proc = run_stage(tmp_path, {"enabled": True, "hub": {"repo_id": "team/d"}}, env)
    assert proc.returncode == 1
    assert proc.stderr.startswith(expected) and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "reports" / "publish.json").exists()


# -- credentials canary through dvc repro -------------------------------------------------


@pytest.mark.slow
def test_credentials_never_reach_params_lock_reports_or_logs(s3, tmp_path):
    client, bucket = s3
    repo = copy_repo(tmp_path / "repo")
    make_processed(repo)
    make_adapter(repo)
    (repo / "reports").mkdir()
    (repo / "reports" / "dataset_card.md").write_text("# card\n")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["publish"] = {
        "enabled": True, "store": {"url": f"s3://{bucket}/canary"},
        "hub": {"repo_id": "team/canary", "model_repo_id": "team/canary-model"},
    }  # fmt: skip
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    with FakeHub() as hub, pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_ENDPOINT", hub.url)
        mp.setenv("HF_TOKEN", CANARY_TOKEN)
        mp.setenv("HF_HUB_DISABLE_XET", "1")
        mp.delenv(
            "HF_HUB_OFFLINE", raising=False
        )  # the fake hub is on loopback; offline mode would refuse it
        proc = dvc(repo, "repro", "--single-item", "publish")
        seen = {r["headers"].get("authorization") for r in hub.requests}
    assert f"Bearer {CANARY_TOKEN}" in seen  # the token did travel, to the hub only
    assert client.list_objects_v2(Bucket=bucket, Prefix="canary/")["KeyCount"] == 8
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["publish"]
    assert lock["params"]["params.yaml"]["publish"]["hub"]["repo_id"] == "team/canary"
    report = json.loads((repo / "reports" / "publish.json").read_text())
    assert set(report["hub"]) == {"dataset", "model"} and len(report["store"]["files"]) == 8
    assert "publish: sftpipe-sft (7 rows" in proc.stdout  # the stage's own output passed through dvc
    texts = {
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "params.yaml": (repo / "params.yaml").read_text(),
        "dvc.lock": (repo / "dvc.lock").read_text(),
    }
    texts.update(
        {str(p.relative_to(repo)): p.read_text(errors="replace") for p in (repo / "reports").rglob("*")}
    )
    assert {"reports/dataset_card.md", "reports/publish.json"} <= set(texts)
    for canary in (CANARY_SECRET, CANARY_TOKEN):
        assert [name for name, text in texts.items() if canary in text] == []
