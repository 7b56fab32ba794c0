"""distill: knowledge slices -> instruction-response pairs written by a generator LLM, scored by
several judge LLMs and the grounding gate, the good ones kept as canonical records (source
"distill").

Every slice (after chunking) x sample is one unit of accounting: `in` = slices x samples,
`expanded` = extra chunks x samples, `out` = kept pairs, and each other unit is dropped with its
reason (generation_failed, truncated, no_json, invalid_pair, judge_failed, low_score,
too_few_votes, ungrounded, incomplete, contradicts_passage). Control pairs (controls.py) are judged
and decided beside them to measure each judge and the gate (gate.py), written to controls.jsonl
with their verdicts, never counted or exported. Outputs are ordered by
slice and sample, never by completion order, and every answer (and grounding gain) comes from the
request cache on a re-run, so the same inputs give the same bytes. When more than
`max_error_rate` of one endpoint's requests fail, the stage fails and writes nothing.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import model_validator

from sftpipe.core.accounting import Tally
from sftpipe.core.config import Section
from sftpipe.core.hashing import digest
from sftpipe.core.jsonio import JsonlWriter, atomic_path, write_json
from sftpipe.core.progress import bar
from sftpipe.core.records import Drop, Record, make_record, message
from sftpipe.distill.controls import Control, control_pairs
from sftpipe.distill.gate import decide, judge_gate
from sftpipe.distill.grounding import GroundingParams, check_model, signals
from sftpipe.distill.llama_server import DEFAULT_GGUF, LocalServerSpec, identity, local_servers
from sftpipe.distill.llm import (
    Balancer,
    Endpoint,
    EndpointSpec,
    LLMClient,
    Reply,
    RequestCache,
    identity_of,
    read_key,
    response_format,
    server_limits,
    server_of,
)
from sftpipe.distill.nli import NliParams, contradictions
from sftpipe.distill.nli import check_model as check_nli_model
from sftpipe.distill.parse import expected_scores, parse_pair, parse_verdict, weighted
from sftpipe.distill.prompts import (
    DIMENSIONS,
    JUDGE_PROMPT,
    JUDGE_SYSTEM_PROMPT,
    PROMPT,
    SYSTEM_PROMPT,
    fill,
    pair_schema,
    rubric,
    template,
    verdict_schema,
)
from sftpipe.distill.slices import Chunk, DistillError, chunks_of, read_slices
from sftpipe.runtime.tracking import repo_root

SOURCE = "distill"
LOGPROB_ALTERNATIVES = 20  # top_logprobs asked for (OpenAI's most)


class JudgeSpec(EndpointSpec):
    """One judge: an endpoint with a name (the name also varies its sampling seed)."""

    name: str
    """Judge name, used in scores and reports."""
    temperature: float | None = None
    """Sampling temperature of this judge; null = distill.judge_temperature."""
    logprob_scores: bool = False
    """Ask for token log-probabilities and score each dimension by its expected value over 0-10
    (where the server returns them; otherwise the sampled number stands)."""


class DistillParams(Section):
    """The `distill:` section of params.yaml."""

    enabled: bool = True
    """false = write empty outputs and a balanced report without calling any model."""
    slices: str = "data/knowledge/slices.jsonl"
    """Knowledge slices: JSONL (or JSON/Parquet/CSV) rows {"id"?, "content", "metadata"?}."""
    chunk_chars: int = 1500
    """Longest chunk in characters; longer content is split on paragraph boundaries."""
    samples_per_slice: int = 2
    """Pairs generated per chunk."""
    system_prompt: str = SYSTEM_PROMPT
    """Generator system prompt."""
    prompt: str = PROMPT
    """Generator prompt template; {content} is the chunk."""
    prompt_file: str | None = None
    """File holding the generator prompt template (instead of `prompt`)."""
    temperature: float = 0.8
    """Generator sampling temperature."""
    max_tokens: int = 384
    """Most tokens the generator may write per pair."""
    max_response_chars: int = 600
    """Longest response in characters, enforced through the JSON schema where supported."""
    judge_system_prompt: str = JUDGE_SYSTEM_PROMPT
    """Judge system prompt."""
    judge_prompt: str = JUDGE_PROMPT
    """Judge prompt template; {content}, {instruction}, {input}, {response}."""
    judge_prompt_file: str | None = None
    """File holding the judge prompt template (instead of `judge_prompt`)."""
    judge_temperature: float = 0.5
    """Default judge sampling temperature."""
    judge_max_tokens: int = 160
    """Most tokens a judge may write per verdict."""
    weights: dict[str, float] = dict.fromkeys(DIMENSIONS, 1.0)
    """The score dimensions and their weights in a judge's weighted average; a dimension not among
    the five defaults needs a rubric."""
    rubrics: dict[str, str] = {}
    """Rubric text per dimension, sent to the judges (appended to judge_system_prompt); {} = none."""
    min_score_threshold: float = 4.0
    """Keep a pair when the judges' mean weighted score is at least this (0-10); 4 suits the 135M
    default judges, real judges deserve 7-8..."""
    min_votes: int = 1
    """...and at least this many judges each give it a weighted score of at least the threshold."""
    generator: EndpointSpec = EndpointSpec()
    """The generator endpoint."""
    judges: list[JudgeSpec] = [JudgeSpec(name="judge-a"), JudgeSpec(name="judge-b")]
    """The judge endpoints."""
    local: LocalServerSpec = LocalServerSpec()
    """The local llama.cpp server used by endpoints whose base_url is null."""
    cache_dir: str | None = ".cache/distill"
    """Request cache folder (resume without repeating requests); relative to the repository root, so
    `dvc exp run`, `--temp` and `--queue` share it; null = no cache."""
    max_error_rate: float = 0.05
    """Fail the stage (writing nothing) when more than this share of one endpoint's requests fail."""
    calibrate: bool = True
    """Score control pairs (good and deliberately bad, built from the slices) to measure each judge."""
    control_chunks: int = 20
    """Chunks that get control pairs (6 each; the first chunks by a hash of their id)."""
    min_judge_auc: float = 0.7
    """A judge whose AUC on the control pairs is below this is ignored (with a warning)."""
    grounding: GroundingParams = GroundingParams()
    """The grounding gate: the base model's log-likelihood gain from the passage."""
    nli: NliParams = NliParams()
    """The contradiction gate: an NLI model reads each response sentence against the passage."""

    @model_validator(mode="after")
    def _check(self) -> DistillParams:
        if self.chunk_chars < 100 or self.samples_per_slice < 1:
            raise ValueError("chunk_chars must be at least 100, samples_per_slice at least 1")
        if not self.weights or min(self.weights.values()) < 0 or not sum(self.weights.values()):
            raise ValueError("weights: give a weight >= 0 for each score dimension, not all 0")
        if unknown := sorted(set(self.rubrics) - set(self.weights)):
            raise ValueError(
                f"rubrics: {', '.join(unknown)} not in weights (add a weight for each dimension)"
            )
        if missing := sorted(set(self.weights) - set(DIMENSIONS) - set(self.rubrics)):
            raise ValueError(f"rubrics: give a rubric for the custom dimension(s) {', '.join(missing)}")
        names = [j.name for j in self.judges]
        if not names or len(set(names)) != len(names) or "generator" in names:
            raise ValueError("judges: give at least one judge, with unique names other than 'generator'")
        if not 0 <= self.min_votes <= len(names):
            raise ValueError(f"min_votes must be between 0 and the number of judges ({len(names)})")
        if not 0 <= self.min_score_threshold <= 10:
            raise ValueError("min_score_threshold must be between 0 and 10")
        if not 0 <= self.max_error_rate <= 1 or not 0 <= self.min_judge_auc <= 1:
            raise ValueError("max_error_rate and min_judge_auc must be between 0 and 1")
        if self.control_chunks < 1:
            raise ValueError("control_chunks must be at least 1")
        return self


def seed_for(seed: int, *parts: object) -> int:
    """A per-request seed: stable for the same (seed, parts), different across samples and judges."""
    blob = "/".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(digest(blob, size=4), "big") & 0x7FFFFFFF


@dataclass
class Unit:
    index: int
    chunk: Chunk
    sample: int
    reply: Reply | None = None
    pair: dict | None = None
    status: str = ""
    verdicts: dict[str, dict] = field(default_factory=dict)  # judge name -> scores or error
    score: float | None = None  # mean weighted score over the judges used that gave one
    dimension_scores: dict[str, float] | None = None  # per dimension, mean over those judges
    votes: int = 0  # judges whose weighted score reached the threshold
    grounding: float | None = None  # the passage's log-likelihood gain (grounding.py)
    end_logprob: float | None = None  # log-probability of ending the turn after the response
    min_token_gain: float | None = None  # the smallest per-token gain
    contradiction: float | None = None  # the NLI model's largest P(contradiction) over sentences
    control: Control | None = None  # a control pair: judged, never generated nor exported

    @property
    def key(self) -> str:
        return self.control.key if self.control else f"{self.chunk.id}/{self.sample}"


class _Run:
    def __init__(self, params: DistillParams, seed: int, generator: LLMClient, judges: dict[str, LLMClient]):
        self.p, self.seed, self.gen, self.judges = params, seed, generator, judges
        self.gen_template, self.judge_template = template(params, False), template(params, True)
        self.gen_format = response_format(
            params.generator.structured_output, "pair", pair_schema(params.max_response_chars)
        )
        self.specs = {j.name: j for j in params.judges}

    def gen_request(self, unit: Unit) -> dict:
        req = {
            "messages": [
                message("system", self.p.system_prompt),
                message("user", fill(self.gen_template, {"content": unit.chunk.content})),
            ],
            "temperature": self.p.temperature,
            "max_tokens": self.p.max_tokens,
            "seed": seed_for(self.seed, "generate", unit.key),
        }
        return {**req, "response_format": self.gen_format} if self.gen_format else req

    def judge_request(self, name: str, unit: Unit) -> dict:
        spec = self.specs[name]
        assert unit.pair is not None  # only a unit with a pair is judged (`unit`)
        values = {"content": unit.chunk.content, **unit.pair}
        req = {
            "messages": [
                message("system", self.p.judge_system_prompt + rubric(self.p.rubrics)),
                message("user", fill(self.judge_template, values)),
            ],
            "temperature": self.p.judge_temperature if spec.temperature is None else spec.temperature,
            "max_tokens": self.p.judge_max_tokens,
            "seed": seed_for(self.seed, "judge", name, unit.key),
        }
        if spec.logprob_scores:
            req.update(logprobs=True, top_logprobs=LOGPROB_ALTERNATIVES)
        fmt = response_format(spec.structured_output, "verdict", verdict_schema(self.p.weights))
        return {**req, "response_format": fmt} if fmt else req

    async def judge(self, name: str, unit: Unit) -> None:
        try:
            reply = await self.judges[name].complete(self.judge_request(name, unit))
            verdict = parse_verdict(reply, self.p.weights)
        except Drop as drop:
            unit.verdicts[name] = {"error": drop.reason}
            return
        if self.specs[name].logprob_scores and reply.logprobs:
            expected = expected_scores(reply.logprobs, self.p.weights)
            verdict["sampled"] = verdict["scores"]
            verdict["scores"] = {**verdict["scores"], **expected}
        unit.verdicts[name] = {**verdict, "weighted": weighted(verdict["scores"], self.p.weights)}

    async def unit(self, unit: Unit) -> Unit:
        if unit.pair is None:  # a control, or a pair given to `score`, is judged as it is
            unit.reply = await self.gen.complete(self.gen_request(unit))
            try:
                unit.pair, unit.status = parse_pair(unit.reply), "ok"
            except Drop as drop:
                unit.pair, unit.status = None, drop.reason
        if unit.pair is not None:
            await asyncio.gather(*(self.judge(name, unit) for name in self.judges))
        return unit

    async def run(self, units: list[Unit]) -> None:
        progress = bar(total=len(units), desc="distill", unit=" pair")
        for done in asyncio.as_completed([self.unit(u) for u in units]):
            await done
            progress.update()
        progress.close()


def _endpoints(params: DistillParams) -> list[tuple[str, EndpointSpec]]:
    return [("generator", params.generator), *((j.name, j) for j in params.judges)]


def _clients(
    params: DistillParams, local_urls: list[str] | None, cache: RequestCache | None, cache_only: bool
):
    local = any(spec.base_url is None for _, spec in _endpoints(params))
    ident = identity(params.local) if local else "local"
    shared = Balancer(len(local_urls)) if local_urls else None  # the local servers serve every local endpoint
    slots = server_limits([spec for _, spec in _endpoints(params)], params.local.servers)

    def client(name: str, spec: EndpointSpec) -> LLMClient:
        if cache_only:  # no server to reach, only the cache keys matter
            endpoint = Endpoint(name, [], spec, identity_of(spec, ident))
        else:
            endpoint = Endpoint.resolve(name, spec, local_urls, ident)
        balancer = shared if spec.base_url is None else None
        return LLMClient(endpoint, cache, balancer, cache_only, slots[server_of(spec)])

    return client("generator", params.generator), {j.name: client(j.name, j) for j in params.judges}


Clients = dict[str, LLMClient]


async def _run_all(params, seed, units, local_urls, cache, cache_only=False) -> Clients:
    gen, judges = _clients(params, local_urls, cache, cache_only)
    try:
        await _Run(params, seed, gen, judges).run(units)
    finally:
        for client in (gen, *judges.values()):
            await client.close()
    return {"generator": gen, **judges}


def _answer(params: DistillParams, seed: int, make_units, cache: RequestCache | None):
    """Run every unit; local servers start only when the cache cannot answer every request (so
    re-running after a change of threshold or weights takes seconds)."""
    if not any(spec.base_url is None for _, spec in _endpoints(params)):
        units = make_units()
        return units, asyncio.run(_run_all(params, seed, units, None, cache))
    if cache is not None:
        units = make_units()
        clients = asyncio.run(_run_all(params, seed, units, None, cache, cache_only=True))
        if not any(c.stats["misses"] for c in clients.values()):
            return units, clients
    units = make_units()
    with local_servers(params.local, seed) as urls:
        return units, asyncio.run(_run_all(params, seed, units, urls, cache))


def cache_file(cache_dir: str) -> Path:
    """The request cache; a relative folder is taken from the repository root (an experiment's
    temporary workspace maps back to it), so every run and experiment shares one cache."""
    folder = Path(cache_dir)
    return (folder if folder.is_absolute() else repo_root() / folder) / "requests.sqlite"


def check_errors(clients: Clients, params: DistillParams) -> None:
    """Fail loudly when an endpoint's failed requests exceed `max_error_rate`: a 401, a wrong model
    or a dead server must not end in a quietly empty (and DVC-locked) output."""
    for name, client in clients.items():
        calls, failed = client.stats["calls"], client.stats["failed"]
        if calls and failed / calls > params.max_error_rate:
            reason, body = client.first_error or ("unknown", "")
            where = client.spec.base_url or "the local llama.cpp server"
            raise DistillError(
                f"distill: {failed} of {calls} requests to {name} ({where}) failed, more than "
                f"max_error_rate {params.max_error_rate:g}; first error: {reason}: "
                f"{' '.join(body.split()) or '(no body)'}. Nothing was written."
            )


def control_units(params: DistillParams, chunks: list[Chunk], start: int) -> list[Unit]:
    if not params.calibrate:
        return []
    order = sorted(chunks, key=lambda c: digest(c.id, size=8))
    chosen = {c.id for c in order[: params.control_chunks]}
    controls = control_pairs([c for c in chunks if c.id in chosen])
    return [Unit(start + k, c.chunk, -1, pair=c.pair, control=c) for k, c in enumerate(controls)]


def _ground(params: DistillParams, units: list[Unit], cache: RequestCache | None) -> None:
    todo = [(u, u.pair) for u in units if u.pair is not None]
    found = signals(params.grounding, [(u.chunk.content, pair) for u, pair in todo], cache)
    for (unit, _), got in zip(todo, found, strict=True):
        unit.grounding, unit.end_logprob = got["gain"], got["end_logprob"]
        unit.min_token_gain = got["min_token_gain"]


def _contradict(params: DistillParams, units: list[Unit], cache: RequestCache | None) -> None:
    todo = [(u, u.pair) for u in units if u.pair is not None]
    found = contradictions(params.nli, [(u.chunk.content, pair["response"]) for u, pair in todo], cache)
    for (unit, _), got in zip(todo, found, strict=True):
        unit.contradiction = got


def preflight(params: DistillParams) -> None:
    """Fail on a bad template, a missing key or a missing grounding or NLI model before starting any server."""
    template(params, False)
    template(params, True)
    for name, spec in _endpoints(params):
        read_key(name, spec)
    if params.grounding.enabled:
        check_model(params.grounding)
    check_nli_model(params.nli)


def score(params: DistillParams, seed: int, make_units) -> tuple[list[Unit], dict, list[str]]:
    """Generate (units without a pair), judge and ground every unit, measure the judges on the
    control units, and decide every unit (controls too, to show what the gate would keep):
    (units, calibration report, judges used)."""
    units = make_units()
    if units:
        cache = RequestCache(cache_file(params.cache_dir)) if params.cache_dir else None
        try:
            units, clients = _answer(params, seed, make_units, cache)
            for name, client in clients.items():
                print(f"distill {name}: {dict(sorted(client.stats.items()))}", file=sys.stderr)
            check_errors(clients, params)
            if params.grounding.enabled:
                _ground(params, units, cache)
            if params.nli.enabled:
                _contradict(params, units, cache)
        finally:
            if cache is not None:
                cache.close()
    calibration, used = judge_gate(params, [u for u in units if u.control])
    for u in units:
        if u.pair is not None:
            u.status = decide(u, used, params)
    return units, calibration, used


def distill(params: DistillParams, seed: int, out_dir: str | Path) -> tuple[Tally, dict]:
    """Run the stage: write records, generated_raw, scored, controls, rejected and metadata into
    `out_dir` (atomically); return the tally and the metadata."""
    slices = read_slices(params.slices) if params.enabled else []
    chunks = chunks_of(slices, params.chunk_chars)
    if params.enabled:
        preflight(params)
    n = params.samples_per_slice

    def make_units() -> list[Unit]:
        real = [Unit(i, c, s) for i, (c, s) in enumerate((c, s) for c in chunks for s in range(n))]
        return real + control_units(params, chunks, len(real)) if real else []

    units, calibration, used = score(params, seed, make_units)
    return _write(params, slices, chunks, units, out_dir, calibration, used)


def _write(params, slices, chunks, units: list[Unit], out_dir, calibration, used) -> tuple[Tally, dict]:
    n = params.samples_per_slice
    real = [u for u in sorted(units, key=lambda u: u.index) if u.control is None]
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        with (
            JsonlWriter(tmp / "records.jsonl") as records,
            JsonlWriter(tmp / "generated_raw.jsonl") as raw,
            JsonlWriter(tmp / "scored.jsonl") as scored,
            JsonlWriter(tmp / "rejected.jsonl") as rejected,
        ):
            tally = Tally(rejected)
            tally.seen(len(slices) * n)
            tally.expand((len(chunks) - len(slices)) * n)
            for u in real:
                assert u.reply is not None  # `_answer` ran every unit
                raw.write({"slice": u.chunk.id, "sample": u.sample, **u.reply.as_dict()})
                where = {"slice": u.chunk.id, "sample": u.sample}
                if u.pair is None:
                    tally.drop(u.status, {"content": u.reply.content, "error": u.reply.error}, **where)
                    continue
                record = _record(u, u.pair)
                scored.write({**where, "id": record["id"], **u.pair, **judging(u), "status": u.status})
                if u.status == "kept":
                    records.write(record)
                    tally.kept()
                else:
                    tally.drop(u.status, record, **where)
            tally.check()
        _write_controls(tmp / "controls.jsonl", [u for u in units if u.control])
        metadata = _metadata(params, slices, chunks, real, tally)
        metadata.update(calibration=calibration, judges_used=used, control_verdicts=control_verdicts(units))
        write_json(tmp / "metadata.json", metadata)
    return tally, metadata


def judging(u: Unit) -> dict:
    """What the judges and the grounding and contradiction gates said of a unit, as the output
    files carry it (`contradiction` only when the NLI gate is on)."""
    out = {
        "judges": dict(sorted(u.verdicts.items())),
        "score": u.score,
        "votes": u.votes,
        "grounding": u.grounding,
        "end_logprob": u.end_logprob,
        "min_token_gain": u.min_token_gain,
    }
    if u.contradiction is not None:
        out["contradiction"] = u.contradiction
    return out


def control_verdicts(units: list[Unit]) -> dict[str, dict[str, int]]:
    """Per control kind, how many the gate would keep and why it drops the others: a bad kind with
    `kept` is one the gate cannot see."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for u in units:
        if u.control is not None:
            counts[u.control.kind][u.status] += 1
    return {kind: dict(sorted(c.items())) for kind, c in sorted(counts.items())}


def _write_controls(path: Path, units: list[Unit]) -> None:
    with JsonlWriter(path) as out:
        for u in sorted(units, key=lambda u: u.index):
            assert u.control is not None and u.pair is not None  # controls come with their pair
            head = {"slice": u.chunk.id, "kind": u.control.kind, "label": u.control.label}
            out.write({**head, **u.pair, **judging(u), "verdict": u.status})


def _record(u: Unit, pair: dict) -> Record:
    user = pair["instruction"] + (f"\n\n{pair['input']}" if pair["input"] else "")
    meta = {
        "format": SOURCE,
        "slice": u.chunk.id,
        "slice_id": u.chunk.slice_id,
        "sample": u.sample,
        "scores": {k: v["scores"] for k, v in u.verdicts.items() if "scores" in v},
        "judges": sorted(u.verdicts),
        "score": u.score,
        "votes": u.votes,
    }
    if u.score is not None:  # as the ShareGPT rows of the specification carry them
        meta["avg_score"], meta["dimension_scores"] = u.score, u.dimension_scores
    if u.grounding is not None:
        meta["grounding"] = u.grounding
        meta["end_logprob"], meta["min_token_gain"] = u.end_logprob, u.min_token_gain
    if u.contradiction is not None:
        meta["contradiction"] = u.contradiction
    if pair["input"]:
        meta["alpaca_input"] = pair["input"]
    if u.chunk.metadata:
        meta["slice_metadata"] = u.chunk.metadata
    return make_record(SOURCE, [message("user", user), message("assistant", pair["response"])], meta, u.key)


def _mean(xs: list[float | None]) -> float | None:
    found = [x for x in xs if x is not None]
    return round(sum(found) / len(found), 4) if found else None


def _dimension_means(units: list[Unit]) -> dict[str, float | None]:
    """Per dimension, the mean over `units` of the judges' (used ones') mean score."""
    dims = sorted({d for u in units for d in (u.dimension_scores or {})})
    return {d: _mean([(u.dimension_scores or {}).get(d) for u in units]) for d in dims}


def _kept_scores(units: list[Unit]) -> list[float]:
    """The judges' scores of the kept pairs (none when no judge's votes count)."""
    return [u.score for u in units if u.status == "kept" and u.score is not None]


def _metadata(params: DistillParams, slices, chunks, units: list[Unit], tally: Tally) -> dict:
    per_judge: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    failures: dict[str, Counter] = defaultdict(Counter)
    for u in units:
        for name, v in u.verdicts.items():
            if "scores" in v:
                for d in params.weights:
                    per_judge[name][d].append(v["scores"][d])
                per_judge[name]["weighted"].append(v["weighted"])
            else:
                failures[name][v["error"]] += 1
    scores = {
        j.name: {
            "n": len(per_judge[j.name]["weighted"]),
            "failed": dict(sorted(failures[j.name].items())),
            "mean": {d: round(sum(xs) / len(xs), 4) for d, xs in sorted(per_judge[j.name].items()) if xs},
        }
        for j in params.judges
    }
    generation = Counter(u.status if u.pair is None else "valid" for u in units)
    failed = Counter(u.reply.error for u in units if u.reply is not None and not u.reply.ok)
    kept = _kept_scores(units)

    def where(e: EndpointSpec) -> str:
        return e.base_url or f"local:{Path(params.local.gguf or DEFAULT_GGUF).name}"

    return {
        "enabled": params.enabled,
        "slices": len(slices),
        "chunks": len(chunks),
        "samples_per_slice": params.samples_per_slice,
        "units": len(units),
        "generator": {"model": params.generator.model, "endpoint": where(params.generator)},
        "judges": [{"name": j.name, "model": j.model, "endpoint": where(j)} for j in params.judges],
        "generation": dict(sorted(generation.items())),
        "generation_errors": dict(sorted(failed.items())),
        "scores": scores,
        "kept": tally.n_out,
        "mean_score_kept": round(sum(kept) / len(kept), 4) if kept else None,
        "dimension_means_kept": _dimension_means([u for u in units if u.status == "kept"]),
        "mean_grounding_kept": _mean([u.grounding for u in units if u.status == "kept"]),
        "min_score_threshold": params.min_score_threshold,
        "min_votes": params.min_votes,
    }
