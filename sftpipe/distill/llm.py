"""An async chat-completions client for any OpenAI-compatible endpoint, built to survive bad days.

Per endpoint: at most `max_concurrent` requests in flight, a request timeout, retries with
exponential backoff and jitter on 429 (honouring `Retry-After`), 5xx, timeouts, dropped
connections and malformed bodies, and a cap on attempts. A request that still fails comes back as
a failed `Reply` with its reason; it never raises, so one bad request cannot stop a run.

Completed requests are kept in a persistent `RequestCache` keyed by (endpoint, model, full
request), so re-running after an interruption or a crash repeats no completed request and, since
the answers are the cached ones, gives the same output.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import json
import os
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import model_validator

from sftpipe.core.config import Section
from sftpipe.core.errors import SftpipeError
from sftpipe.core.jsonio import dumps

StructuredOutput = Literal["llama_cpp", "openai", "json_mode", "off"]


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
    """Attempts per request, first included; after the last, the failure is recorded, not raised."""
    backoff_s: float = 1.0
    """First retry delay in seconds; doubles per attempt, with jitter."""
    backoff_max_s: float = 60.0
    """Longest delay between attempts, also the most of a `Retry-After` that is honoured."""
    structured_output: StructuredOutput = "llama_cpp"
    """How to ask for JSON: llama_cpp (json_object + schema grammar), openai (json_schema), json_mode, off."""

    @model_validator(mode="after")
    def _positive(self) -> EndpointSpec:
        if self.max_concurrent < 1 or self.max_attempts < 1:
            raise ValueError("max_concurrent and max_attempts must be at least 1")
        if self.timeout_s <= 0 or self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError("timeout_s must be positive, backoff_s and backoff_max_s not negative")
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
    error: str | None = None  # rate_limited, http_<status>, timeout, connection, bad_response
    cached: bool = False

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
        return hashlib.sha256(dumps({"endpoint": identity, "request": request})).hexdigest()

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


class _Retry(Exception):
    def __init__(self, reason: str, after: float | None = None):
        super().__init__(reason)
        self.reason, self.after = reason, after


class _Fatal(Exception):
    """A failure that a retry would only repeat (bad request, auth, unknown model)."""


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


class LLMClient:
    """Chat completions against one endpoint; `stats` counts requests, retries, cache hits, failures.

    `cache_only`: answer from the cache and nothing else; a miss comes back as a failed reply
    ("not_cached", counted in `stats["misses"]`) - to find out whether a run needs any server.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        cache: RequestCache | None = None,
        balancer: Balancer | None = None,
        cache_only: bool = False,
    ):
        self.endpoint, self.spec, self.cache, self.cache_only = endpoint, endpoint.spec, cache, cache_only
        self.balancer = balancer or Balancer(len(endpoint.urls))
        self._clients = []
        if not cache_only:
            import openai  # here, not at the top: it takes seconds to import and most stages never need it

            self._clients = [
                # Retries are ours (counted, capped, Retry-After aware), so the SDK's own are off.
                openai.AsyncOpenAI(
                    base_url=url,
                    api_key=endpoint.api_key or "none",
                    max_retries=0,
                    timeout=self.spec.timeout_s,
                )
                for url in endpoint.urls
            ]
        self._slots = asyncio.Semaphore(self.spec.max_concurrent)
        self.stats: Counter[str] = Counter()

    async def complete(self, request: dict) -> Reply:
        """One chat completion (`request` holds messages, temperature, seed...; the model is added)."""
        request = {"model": self.spec.model, **request}
        cache = self.cache
        key = RequestCache.key(self.endpoint.identity, request) if cache is not None else None
        if cache is not None and key is not None and (hit := cache.get(key)) is not None:
            self.stats["cache_hits"] += 1
            return Reply(True, hit["content"], hit.get("finish_reason"), cached=True)
        if self.cache_only:
            self.stats["misses"] += 1
            return Reply(False, error="not_cached")
        reason = "unknown"
        for attempt in range(1, self.spec.max_attempts + 1):
            try:
                content, finish = await self._attempt(request)
            except _Fatal as exc:
                reason = str(exc)
                self.stats[f"error:{reason}"] += 1
                break
            except _Retry as exc:
                reason = exc.reason
                self.stats[f"error:{reason}"] += 1
                if attempt < self.spec.max_attempts:
                    self.stats["retries"] += 1
                    await asyncio.sleep(self._delay(attempt, exc.after))
                continue
            if cache is not None and key is not None:
                cache.put(key, {"content": content, "finish_reason": finish})
            return Reply(True, content, finish)
        self.stats["failed"] += 1
        return Reply(False, error=reason)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.spec.backoff_max_s)
        base = min(self.spec.backoff_max_s, self.spec.backoff_s * 2 ** (attempt - 1))
        # Full jitter spreads out clients that failed together (e.g. after a server restart).
        return base * (0.5 + random.random() / 2)

    async def _attempt(self, request: dict) -> tuple[str, str | None]:
        import openai

        async with self._slots:
            with self.balancer.pick() as i:
                self.stats["requests"] += 1
                try:
                    raw = await self._clients[i].chat.completions.with_raw_response.create(**request)
                    body = raw.text
                except openai.RateLimitError as exc:
                    raise _Retry("rate_limited", _retry_after(exc.response.headers)) from None
                except openai.APIStatusError as exc:
                    if exc.status_code >= 500 or exc.status_code in (408, 409):
                        raise _Retry(f"http_{exc.status_code}", _retry_after(exc.response.headers)) from None
                    raise _Fatal(f"http_{exc.status_code}") from None
                except openai.APITimeoutError:
                    raise _Retry("timeout") from None
                except openai.APIConnectionError:
                    raise _Retry("connection") from None
        return _parse_completion(body)

    async def close(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.close()


def _parse_completion(body: str) -> tuple[str, str | None]:
    """The first choice's text and finish reason from a chat-completions body, or a retry."""
    try:
        data = json.loads(body)
        choice = data["choices"][0]
        content = choice["message"].get("content") or ""
        if not isinstance(content, str):
            raise TypeError("content is not a string")
        return content, choice.get("finish_reason")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise _Retry("bad_response") from None


def _retry_after(headers) -> float | None:
    """Seconds to wait from `Retry-After` (seconds or an HTTP date) or `retry-after-ms`."""
    if (ms := headers.get("retry-after-ms")) is not None:
        with contextlib.suppress(ValueError):
            return max(0.0, float(ms) / 1000)
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    return None
