"""An LLM judge's pairwise verdict on base vs trained answers (MT-Bench / AlpacaEval style).

Each prompt is judged twice, once with the base answer shown first and once with the trained
answer first, so a judge that prefers a position cancels out. A verdict is `[[A]]`, `[[B]]` or
`[[C]]` (a tie). The trained model scores 1 per order it wins, 0.5 per tie, 0 per loss; a prompt's
score is the mean over the orders that got a verdict, and the win rate is the mean over prompts,
with a 95% bootstrap interval. A prompt whose two orders disagree (A then A) scores 0.5: a tie.

The endpoint is any OpenAI-compatible one, configured like the distill endpoints
(`sftpipe.distill.llm`), with the same retries, limits and on-disk request cache.
"""

from __future__ import annotations

import asyncio
import re

from pydantic import model_validator

from sftpipe.core.config import Section
from sftpipe.distill.llm import Endpoint, EndpointSpec, LLMClient, RequestCache
from sftpipe.model.stats import mean_ci

SYSTEM = (
    "You are an impartial judge. Compare the two assistant answers to the user's question below "
    "for helpfulness, correctness, relevance and level of detail. Ignore the order in which they "
    "are shown and their length as such. Explain briefly, then give your verdict on the last line: "
    '"[[A]]" if answer A is better, "[[B]]" if answer B is better, "[[C]]" for a tie.'
)
USER = (
    "[Question]\n{question}\n\n"
    "[The Start of Assistant A's Answer]\n{a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{b}\n[The End of Assistant B's Answer]"
)
_VERDICT = re.compile(r"\[\[([ABC])\]\]")


class JudgeParams(Section):
    """params.yaml `evaluate.judge:`."""

    enabled: bool = False
    """Ask an LLM judge which answer is better, trained or base (off by default: it needs an endpoint)."""
    prompts: str | None = None
    """JSONL of held-out prompts (`turns` (first used) or question/prompt/instruction); null = the
    held-out test prompts used for `generations`."""
    max_prompts: int = 40
    """Judge at most this many prompts (the first of the file)."""
    max_new_tokens: int = 256
    """Answer length limit when generating answers for `prompts` (greedy)."""
    endpoint: EndpointSpec = EndpointSpec(structured_output="off")
    """The judge endpoint (base_url is required: there is no local judge server here)."""
    temperature: float = 0.0
    """Judge sampling temperature."""
    cache_dir: str | None = ".cache/judge"
    """Request cache folder (re-running repeats no completed request); null = no cache."""

    @model_validator(mode="after")
    def _endpoint(self) -> JudgeParams:
        if self.enabled and self.endpoint.base_url is None:
            raise ValueError("endpoint.base_url: the judge needs an OpenAI-compatible endpoint URL")
        return self


def verdict(text: str) -> str | None:
    """A, B or C (tie) from the judge's reply: the last `[[X]]` in it; None when there is none."""
    found = _VERDICT.findall(text)
    return found[-1] if found else None


def _request(question: str, a: str, b: str, temperature: float) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": USER.format(question=question, a=a, b=b)},
        ],
        "temperature": temperature,
    }


async def _judge_all(client: LLMClient, items: list[dict], temperature: float) -> list[list[str | None]]:
    async def one(item: dict) -> list[str | None]:
        # Order 1: base is A; order 2: trained is A.
        first, second = await asyncio.gather(
            client.complete(_request(item["question"], item["base"], item["trained"], temperature)),
            client.complete(_request(item["question"], item["trained"], item["base"], temperature)),
        )
        return [verdict(r.content) if r.ok else None for r in (first, second)]

    try:
        return list(await asyncio.gather(*(one(it) for it in items)))
    finally:
        await client.close()


def order_scores(verdicts: list[str | None]) -> list[float]:
    """The trained model's score in each order that got a verdict (order 1: trained is B)."""
    out = []
    for i, v in enumerate(verdicts):
        if v is None:
            continue
        trained = "B" if i == 0 else "A"
        out.append(0.5 if v == "C" else (1.0 if v == trained else 0.0))
    return out


def judge(items: list[dict], params: JudgeParams, seed: int = 0) -> tuple[dict, list[dict]]:
    """(summary, per-prompt rows) for items {"id", "question", "base", "trained"}."""
    endpoint = Endpoint.resolve("evaluate.judge", params.endpoint)
    cache = RequestCache(f"{params.cache_dir}/requests.sqlite") if params.cache_dir else None
    client = LLMClient(endpoint, cache)
    try:
        verdicts = asyncio.run(_judge_all(client, items, params.temperature))
    finally:
        if cache is not None:
            cache.close()
    rows, scores = [], []
    counts = {"wins": 0, "ties": 0, "losses": 0, "failed": 0, "a_chosen": 0, "verdicts": 0}
    for item, vs in zip(items, verdicts, strict=True):
        counts["verdicts"] += sum(v is not None for v in vs)
        counts["a_chosen"] += sum(v == "A" for v in vs)
        s = order_scores(vs)
        if not s:
            counts["failed"] += 1
            continue
        score = sum(s) / len(s)
        scores.append(score)
        counts["wins" if score > 0.5 else "losses" if score < 0.5 else "ties"] += 1
        rows.append({"id": item["id"], "source": item.get("source"), "verdicts": vs, "score": score})
    ci = mean_ci(scores, seed=seed)
    summary = {
        "n": ci["n"],
        "win_rate": ci["mean"],
        "ci_low": ci["ci_low"],
        "ci_high": ci["ci_high"],
        "wins": counts["wins"],
        "ties": counts["ties"],
        "losses": counts["losses"],
        "failed": counts["failed"],
        # How often the judge picked the answer shown first: far from 0.5 = position bias.
        "first_position_share": round(counts["a_chosen"] / counts["verdicts"], 6)
        if counts["verdicts"]
        else None,
        "requests": dict(sorted(client.stats.items())),
    }
    return summary, rows
