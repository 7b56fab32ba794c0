"""An async chat-completions client for any OpenAI-compatible endpoint, built to survive bad days.

Per endpoint: at most `max_concurrent` requests in flight, a timeout per attempt and at most
`max_attempts` attempts per request. The openai SDK retries what the transport gets wrong - 408,
409, 429 and 5xx answers, timeouts, dropped connections - with its own exponential backoff and
jitter (0.5 s doubling to 8 s), waiting out a server's `Retry-After`/`retry-after-ms` of up to two
minutes instead (a longer one is not retried: the request fails). Other 4xx answers (a bad
request, a bad key, an unknown model) are not retried. This client adds what the SDK cannot know:
a malformed body or an empty answer (servers send one when overloaded or misconfigured) is retried
at once, within the same `max_attempts`. A request that still fails comes back as a failed `Reply`
with its reason; it never raises, so one bad request cannot stop a run. The SDK's delays cannot be
set through its public API, so an endpoint has no backoff params: `max_attempts` is the knob.

Completed requests are kept in a persistent `RequestCache` keyed by (endpoint, model, full
request), so re-running after an interruption or a crash repeats no completed request and, since
the answers are the cached ones, gives the same output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator, model_validator

from sftpipe.core.config import Section
from sftpipe.core.errors import SftpipeError
from sftpipe.core.hashing import sha256_hex
from sftpipe.core.jsonio import dumps
from sftpipe.runtime.tracking import scrub

StructuredOutput = Literal["llama_cpp", "openai", "json_mode", "off"]
MaxTokensField = Literal["max_tokens", "max_completion_tokens"]

# An environment variable's name: letters, digits, underscores. A value that is not one, or that
# looks like a key (a known key prefix, or long, mixed-case and with digits), is refused.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_KEY_PREFIX = re.compile(r"(sk|pk|rk|hf|gsk|xai|ghp|gho|AIza|AKIA|Bearer)[-_]?", re.I)


class SecretInParams(SftpipeError):
    """A key where the name of its environment variable belongs; the message never quotes it."""


class EndpointSpec(Section):
    """One OpenAI-compatible endpoint: where it is, which model, and how hard to push it."""

    base_url: str | None = None
    """Base URL, e.g. https://api.openai.com/v1; null = the local llama.cpp server the stage starts."""
    model: str = "local"
    """Model name sent with each request (ignored by the local server, which serves one model)."""
    api_key_env: str | None = None
    """Name of the environment variable (or .env entry) holding the API key; never the key itself."""
    max_concurrent: int = 1
    """Requests in flight at once to this endpoint."""
    timeout_s: float = 120.0
    """Seconds before one attempt is abandoned (and retried)."""
    max_attempts: int = 4
    """Attempts per request, first included, the SDK's retries and ours alike; after the last, the
    failure is recorded, not raised."""
    structured_output: StructuredOutput = "llama_cpp"
    """How to ask for JSON: llama_cpp (json_object + schema grammar), openai (json_schema: OpenAI,
    vLLM), json_mode (json_object alone: DashScope, most hosted APIs), off."""
    max_tokens_field: MaxTokensField = "max_tokens"
    """Request field for the token limit: max_tokens, or max_completion_tokens (OpenAI o-series, GPT-5)."""
    extra_body: dict[str, Any] = {}
    """Extra request fields sent as they are, e.g. {enable_thinking: false} for DashScope Qwen3."""

    @field_validator("api_key_env")
    @classmethod
    def _a_name_not_a_key(cls, value: str | None) -> str | None:
        # Raised as a SecretInParams, not a ValueError: pydantic would quote the value back in its
        # message, and the value may be a pasted key.
        if value is not None and (
            not _ENV_NAME.fullmatch(value)
            or (_KEY_PREFIX.match(value) and not value.isupper())
            or (len(value) >= 24 and not value.isupper() and any(c.isdigit() for c in value))
        ):
            raise SecretInParams(
                "api_key_env: this looks like an API key, not the name of an environment variable: "
                "put the key in the environment (or .env) and give the variable's name here, e.g. "
                "OPENAI_API_KEY (and remove the key from params.yaml and its git history)"
            )
        return value

    @model_validator(mode="after")
    def _positive(self) -> EndpointSpec:
        if self.max_concurrent < 1 or self.max_attempts < 1:
            raise ValueError("max_concurrent and max_attempts must be at least 1")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        return self


class EndpointError(SftpipeError, ValueError):
    """An endpoint cannot be used as configured (e.g. its key's environment variable is unset)."""


@dataclass
class Endpoint:
    """An endpoint ready to call: URLs resolved (one per local server), key read from the environment."""

    name: str
    urls: list[str]
    spec: EndpointSpec
    identity: str  # what the cache keys on: stable across runs, unlike a local server's port
    api_key: str | None = field(default=None, repr=False)

    @classmethod
    def resolve(
        cls, name: str, spec: EndpointSpec, local_urls: list[str] | None = None, local_identity: str = "local"
    ) -> Endpoint:
        """`local_urls` serve endpoints without a base_url; `local_identity` names what they serve
        (model file, chat format), so cached answers of another local model are never reused."""
        if spec.base_url is not None:
            urls = [spec.base_url]
        elif local_urls:
            urls = list(local_urls)
        else:
            raise EndpointError(f"{name}: base_url is null but no local server is running")
        return cls(name, urls, spec, identity_of(spec, local_identity), read_key(name, spec))


def identity_of(spec: EndpointSpec, local_identity: str = "local") -> str:
    return local_identity if spec.base_url is None else spec.base_url.rstrip("/")


def read_key(name: str, spec: EndpointSpec) -> str | None:
    """The key named by `spec.api_key_env`, from the environment or .env; None when none is named."""
    if spec.api_key_env is None:
        return None
    from dotenv import dotenv_values, find_dotenv

    # .env (git-ignored; searched from the working directory up) fills only what the environment
    # lacks, and is read, not loaded: the key never reaches os.environ or a child process.
    key = os.environ.get(spec.api_key_env) or dotenv_values(find_dotenv(usecwd=True)).get(spec.api_key_env)
    if not key:
        raise EndpointError(f"{name}: environment variable {spec.api_key_env} (api_key_env) is not set")
    return key


@dataclass(frozen=True)
class Reply:
    """What one request came to: the answer's text, or why there is none."""

    ok: bool
    content: str = ""
    finish_reason: str | None = None
    error: str | None = None  # rate_limited, http_<status>, timeout, connection, bad_response, empty_reply
    cached: bool = False
    detail: str = ""  # the server's error body (secrets scrubbed), for the failure message
    logprobs: tuple | None = None  # ((token, {alternative: logprob}), ...) when the server sent them

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "content": self.content,
            "finish_reason": self.finish_reason,
            "error": self.error,
        }


class RequestCache:
    """Completed requests on disk (one SQLite file), committed one by one so a crash loses none."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL)")
        self._db.commit()

    @staticmethod
    def key(identity: str, request: dict) -> str:
        return sha256_hex(dumps({"endpoint": identity, "request": request}))

    def get(self, key: str) -> dict | None:
        row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, reply: dict) -> None:
        self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?)", (key, json.dumps(reply)))
        self._db.commit()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def through_cache(
    cache: RequestCache | None, keys: list[str], compute: Callable[[list[int]], list[dict]]
) -> list[dict]:
    """The reply stored under each key; the missing ones come from one call of `compute` with
    their positions (nothing is loaded when every key is there), and are stored."""
    found = [None if cache is None else cache.get(key) for key in keys]
    todo = [i for i, got in enumerate(found) if got is None]
    if todo:
        for i, got in zip(todo, compute(todo), strict=True):
            found[i] = got
            if cache is not None:
                cache.put(keys[i], got)
    return [got for got in found if got is not None]


class _Failed(Exception):
    """Why an attempt brought no answer: a reason for `stats` and the body, for the message."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def response_format(mode: StructuredOutput, name: str, schema: dict) -> dict | None:
    """The `response_format` that asks `mode`'s kind of server for JSON matching `schema`."""
    if mode == "llama_cpp":
        return {"type": "json_object", "schema": schema}
    if mode == "openai":
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}
    if mode == "json_mode":
        return {"type": "json_object"}
    return None


class Balancer:
    """Spreads requests over several servers of the same model (local llama.cpp servers run one
    request at a time each): each request goes to the server with the fewest in flight. Clients
    that share the servers share one balancer."""

    def __init__(self, n: int):
        self.inflight = [0] * n

    @contextlib.contextmanager
    def pick(self) -> Iterator[int]:
        i = self.inflight.index(min(self.inflight))
        self.inflight[i] += 1
        try:
            yield i
        finally:
            self.inflight[i] -= 1


def server_limits(specs: list[EndpointSpec], local_cap: int) -> dict[str, asyncio.Semaphore]:
    """One semaphore per server (base URL), so several entries on one host (a generator and two
    judges, say) share one cap: the largest `max_concurrent` among them. The local llama.cpp
    servers run one request at a time each, so their cap is their number (`local_cap`)."""
    caps: dict[str, int] = {}
    for spec in specs:
        key = server_of(spec)
        caps[key] = local_cap if spec.base_url is None else max(caps.get(key, 1), spec.max_concurrent)
    return {key: asyncio.Semaphore(cap) for key, cap in caps.items()}


def server_of(spec: EndpointSpec) -> str:
    return "local" if spec.base_url is None else spec.base_url.rstrip("/")


class LLMClient:
    """Chat completions against one endpoint. `stats` counts `calls`, `requests` (attempts sent,
    the SDK's retries included), `retries`, `cache_hits`, `failed` and, per failed call, the reason
    it failed with as `error:<reason>` (rate_limited, http_<status>, timeout, connection,
    bad_response, empty_reply).

    `cache_only`: answer from the cache and nothing else; a miss comes back as a failed reply
    ("not_cached", counted in `stats["misses"]`) - to find out whether a run needs any server.
    `server_slots`: a semaphore shared by the clients of one server (see `server_limits`); the
    client's own `max_concurrent` still applies within it.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        cache: RequestCache | None = None,
        balancer: Balancer | None = None,
        cache_only: bool = False,
        server_slots: asyncio.Semaphore | None = None,
    ):
        self.endpoint, self.spec, self.cache, self.cache_only = endpoint, endpoint.spec, cache, cache_only
        self.balancer = balancer or Balancer(len(endpoint.urls))
        self._clients = []
        if not cache_only:
            import openai  # here, not at the top: it takes seconds to import and most stages never need it

            self._clients = [
                openai.AsyncOpenAI(
                    base_url=url,
                    api_key=endpoint.api_key or "none",
                    max_retries=self.spec.max_attempts - 1,
                    timeout=self.spec.timeout_s,
                    http_client=openai.DefaultAsyncHttpxClient(event_hooks={"request": [self._sent]}),
                )
                for url in endpoint.urls
            ]
        self._slots = asyncio.Semaphore(self.spec.max_concurrent)
        # Shared by every client of the same server, so entries on one host share its cap.
        self._server_slots = server_slots or asyncio.Semaphore(self.spec.max_concurrent)
        self.stats: Counter[str] = Counter()
        self.first_error: tuple[str, str] | None = None  # (reason, scrubbed body) of the first failure

    async def _sent(self, request: Any) -> None:
        """Counts every attempt that goes out; the SDK numbers its own retries in this header."""
        self.stats["requests"] += 1
        if request.headers.get("x-stainless-retry-count", "0") != "0":
            self.stats["retries"] += 1

    async def complete(self, request: dict) -> Reply:
        """One chat completion (`request` holds messages, temperature, seed, max_tokens...; the
        model, the endpoint's token-limit field and its extra_body are applied here)."""
        self.stats["calls"] += 1
        request = {"model": self.spec.model, **request}
        if "max_tokens" in request and self.spec.max_tokens_field != "max_tokens":
            request[self.spec.max_tokens_field] = request.pop("max_tokens")
        if self.spec.extra_body:
            request["extra_body"] = self.spec.extra_body
        cache = self.cache
        key = RequestCache.key(self.endpoint.identity, request) if cache is not None else None
        if cache is not None and key is not None and (hit := cache.get(key)) is not None:
            self.stats["cache_hits"] += 1
            top = _top(hit.get("logprobs"))
            return Reply(True, hit["content"], hit.get("finish_reason"), cached=True, logprobs=top)
        if self.cache_only:
            self.stats["misses"] += 1
            return Reply(False, error="not_cached")
        try:
            content, finish, logprobs = await self._answer(request)
        except _Failed as failure:
            self.stats["failed"] += 1
            self.stats[f"error:{failure.reason}"] += 1
            detail = scrub(scrub(failure.detail, [k for k in [self.endpoint.api_key] if k]))
            self.first_error = self.first_error or (failure.reason, detail)
            return Reply(False, error=failure.reason, detail=detail)
        if cache is not None and key is not None:
            answer = {"content": content, "finish_reason": finish}
            cache.put(key, {**answer, "logprobs": logprobs} if logprobs is not None else answer)
        return Reply(True, content, finish, logprobs=_top(logprobs))

    async def _answer(self, request: dict) -> tuple[str, str | None, list | None]:
        """Attempts until a usable body, `max_attempts` in all, the SDK's retries and ours alike.
        A malformed or empty body is retried at once: the request keeps its slots, so its retries
        add no load beyond `max_concurrent`, and the SDK has no public hook to reuse its backoff."""
        # The entry's own slot first: waiting for it must not hold one of the server's.
        async with self._slots, self._server_slots:
            with self.balancer.pick() as i:
                client, left = self._clients[i], self.spec.max_attempts
                while True:
                    raw = await self._send(client, request)
                    left -= raw.retries_taken + 1
                    try:
                        return _parse_completion(raw.text)
                    except _Failed:
                        if left <= 0:
                            raise
                    self.stats["retries"] += 1
                    client = self._clients[i].with_options(max_retries=left - 1)

    async def _send(self, client: Any, request: dict) -> Any:
        """The raw response (its body not yet parsed) once the SDK got one; `_Failed` if it did not."""
        import openai

        try:
            return await client.chat.completions.with_raw_response.create(**request)
        except openai.RateLimitError as exc:
            raise _Failed("rate_limited", _body(exc)) from None
        except openai.APIStatusError as exc:
            raise _Failed(f"http_{exc.status_code}", _body(exc)) from None
        except openai.APITimeoutError:
            raise _Failed("timeout", f"no answer within {self.spec.timeout_s:g} s") from None
        except openai.APIConnectionError as exc:
            raise _Failed("connection", str(exc.__cause__ or exc)) from None

    async def close(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.close()


def _body(exc: Any) -> str:
    """The start of an error response's body (scrubbed later, with the endpoint's key)."""
    try:
        return exc.response.text[:500]
    except Exception:  # a body that cannot be read still leaves the status to report
        return ""


def _top(logprobs: list | None) -> tuple | None:
    """Token log-probabilities as ((token, {alternative: logprob}), ...)."""
    if not logprobs:
        return None
    return tuple((t, dict(alts)) for t, alts in logprobs)


def _logprobs(choice: dict) -> list | None:
    """[[token, [[alternative, logprob], ...]], ...] from a choice's `logprobs.content`, when the
    server sent them (asked with `logprobs: true, top_logprobs: n`)."""
    content = (choice.get("logprobs") or {}).get("content")
    if not isinstance(content, list):
        return None
    return [
        [t["token"], [[a["token"], a["logprob"]] for a in t.get("top_logprobs") or []]]
        for t in content
        if isinstance(t, dict) and isinstance(t.get("token"), str)
    ]


def _parse_completion(body: str) -> tuple[str, str | None, list | None]:
    """The first choice's text, finish reason and token log-probabilities (None unless sent) from
    a chat-completions body; a malformed body or an empty answer raises `_Failed` (to be retried,
    and never cached)."""
    try:
        data = json.loads(body)
        choice = data["choices"][0]
        content = choice["message"].get("content") or ""
        if not isinstance(content, str):
            raise TypeError("content is not a string")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise _Failed("bad_response", detail=body[:500]) from None
    if not content.strip():
        raise _Failed("empty_reply", detail=body[:500])
    try:
        logprobs = _logprobs(choice)
    except (KeyError, TypeError, AttributeError):
        logprobs = None  # malformed log-probabilities: the sampled answer still stands
    return content, choice.get("finish_reason"), logprobs
