"""The LLM client against a real HTTP server on loopback (tests/fake_openai.py): retries (the
openai SDK's and ours, counted, within one cap) on 5xx, 429 with Retry-After, timeouts, dropped
connections, malformed, truncated and empty bodies, a server killed mid-run; failures recorded after
the cap, never raised; the request cache; the concurrency cap; keys from the environment. In-memory
and loopback only, no network.

The SDK's backoff starts at 0.5 s and cannot be shortened, so tests that retry often have the server
send a short `Retry-After` (which the SDK honours) and the others keep attempts low."""

from __future__ import annotations

import asyncio
import time

import pytest

from sftpipe.distill.llm import (
    Balancer,
    Endpoint,
    EndpointError,
    EndpointSpec,
    LLMClient,
    RequestCache,
)
from tests.fake_openai import FakeOpenAI, body_key


def client(url: str, cache: RequestCache | None = None, **spec) -> LLMClient:
    spec = {"timeout_s": 5.0, **spec}
    return LLMClient(Endpoint.resolve("test", EndpointSpec(base_url=url, model="m", **spec)), cache)


def request(i: int = 0) -> dict:
    return {
        "messages": [{"role": "user", "content": f"Passage:\nText number {i}.\n\nWrite it."}],
        "temperature": 0.0,
        "seed": i,
    }


def sent(i: int = 0) -> dict:
    """The body the server receives for `request(i)` (the client adds the model)."""
    return {"model": "m", **request(i)}


def run(coro):
    return asyncio.run(coro)


async def _complete(c: LLMClient, reqs: list[dict]):
    try:
        return await asyncio.gather(*(c.complete(r) for r in reqs))
    finally:
        await c.close()


def test_retries_5xx_then_succeeds():
    with FakeOpenAI(lambda body, n: ("status", 500) if n < 2 else "ok") as srv:
        c = client(srv.url)
        [reply] = run(_complete(c, [request()]))
        assert reply.ok and reply.content.startswith('{"instruction": "What does the guide say about Text')
        first, second, third = srv.requests_for(body_key(sent()))
        assert second["t"] - first["t"] >= 0.3  # the SDK's backoff: 0.5 s less up to 25% jitter
        assert c.stats["retries"] == 2 and c.stats["requests"] == 3 and c.stats["failed"] == 0


def test_429_honours_retry_after():
    with FakeOpenAI(lambda body, n: ("status", 429, 1) if n == 0 else "ok") as srv:
        c = client(srv.url)
        [reply] = run(_complete(c, [request()]))
        first, second = srv.requests_for(body_key(sent()))
        assert reply.ok and c.stats["retries"] == 1
        assert second["t"] - first["t"] >= 0.95  # waited the server's Retry-After, not the 0.5 s backoff


def test_a_retry_after_too_long_to_wait_fails_at_once():
    with FakeOpenAI(lambda body, n: ("status", 429, 600)) as srv:
        c = client(srv.url)
        [reply] = run(_complete(c, [request()]))
        assert (reply.ok, reply.error) == (False, "rate_limited") and srv.n_requests == 1


def test_timeout_is_retried():
    with FakeOpenAI(lambda body, n: ("sleep", 3.0) if n == 0 else "ok") as srv:
        c = client(srv.url, timeout_s=0.4)
        start = time.monotonic()
        [reply] = run(_complete(c, [request()]))
        assert reply.ok and c.stats["retries"] == 1
        # 0.4 s timeout + the SDK's 0.5 s backoff + an answer: never the 3 s the server stalled
        assert len(srv.requests_for(body_key(sent()))) == 2 and time.monotonic() - start < 2.0
    with FakeOpenAI(lambda body, n: ("sleep", 1.0)) as srv:
        c = client(srv.url, timeout_s=0.3, max_attempts=1)
        [reply] = run(_complete(c, [request()]))
        assert (reply.ok, reply.error) == (False, "timeout") and c.stats["error:timeout"] == 1


@pytest.mark.parametrize("fault", ["malformed", "truncated", "empty", "short"])
def test_broken_bodies_are_retried(fault):
    # malformed, truncated and empty bodies are retried here, a connection dropped mid-body by the SDK
    with FakeOpenAI(lambda body, n: fault if n < 2 else "ok") as srv:
        c = client(srv.url)
        [reply] = run(_complete(c, [request()]))
        assert reply.ok and c.stats["retries"] == 2 and c.stats["requests"] == srv.n_requests == 3


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("malformed", "bad_response"), ("empty", "empty_reply"), ("short", "connection")],
)
def test_broken_bodies_fail_after_the_cap_with_their_reason(fault, reason):
    with FakeOpenAI(lambda body, n: fault) as srv:
        c = client(srv.url, max_attempts=2)
        [reply] = run(_complete(c, [request()]))
        assert (reply.ok, reply.error) == (False, reason) and srv.n_requests == 2
        assert c.stats["failed"] == c.stats[f"error:{reason}"] == 1 and c.stats["retries"] == 1


def test_the_sdks_retries_and_ours_share_one_cap():
    def storm(body, n):  # a 500 (retried by the SDK), a malformed body (retried here), an answer
        return [("status", 500, 0.01), "malformed", "ok"][min(n, 2)]

    with FakeOpenAI(storm) as srv:
        c = client(srv.url, max_attempts=3)
        [reply] = run(_complete(c, [request()]))
        assert reply.ok and srv.n_requests == 3 and c.stats["retries"] == 2
    with FakeOpenAI(storm) as srv:
        c = client(srv.url, max_attempts=2)
        [reply] = run(_complete(c, [request()]))
        assert (reply.ok, reply.error) == (False, "bad_response") and srv.n_requests == 2


def test_empty_replies_are_never_cached(tmp_path):
    with FakeOpenAI(lambda body, n: "empty") as srv:
        cache = RequestCache(tmp_path / "c.sqlite")
        [reply] = run(_complete(client(srv.url, cache, max_attempts=2), [request()]))
        assert reply.error == "empty_reply" and len(cache) == 0
        cache.close()


def test_failure_after_the_cap_is_recorded_not_raised():
    with FakeOpenAI(lambda body, n: ("status", 503, 0.01)) as srv:
        c = client(srv.url, max_attempts=3)
        replies = run(_complete(c, [request(0), request(1)]))
        assert [(r.ok, r.error, r.content) for r in replies] == [(False, "http_503", "")] * 2
        assert srv.n_requests == c.stats["requests"] == 6
        assert c.stats["failed"] == c.stats["error:http_503"] == 2 and c.stats["retries"] == 4
        assert c.first_error is not None and c.first_error[0] == "http_503" and "fake 503" in c.first_error[1]


@pytest.mark.parametrize("status", [400, 401, 404])
def test_client_errors_are_not_retried(status):
    with FakeOpenAI(lambda body, n: ("status", status)) as srv:
        c = client(srv.url, max_attempts=4)
        [reply] = run(_complete(c, [request()]))
        assert (reply.ok, reply.error) == (False, f"http_{status}") and srv.n_requests == 1
        assert c.stats["retries"] == 0 and c.stats[f"error:http_{status}"] == 1


def test_cache_answers_completed_requests_across_runs(tmp_path):
    with FakeOpenAI(lambda body, n: ("status", 500, 0.01) if body["seed"] == 2 else "ok") as srv:
        cache = RequestCache(tmp_path / "c.sqlite")
        first = run(_complete(client(srv.url, cache, max_attempts=2), [request(i) for i in range(3)]))
        cache.close()
        assert [r.ok for r in first] == [True, True, False] and srv.n_requests == 4
        cache = RequestCache(tmp_path / "c.sqlite")  # a new process, as after a crash
        assert len(cache) == 2
        c = client(srv.url, cache, max_attempts=2)
        again = run(_complete(c, [request(i) for i in range(3)]))
        assert [r.content for r in again[:2]] == [r.content for r in first[:2]]
        assert [r.cached for r in again] == [True, True, False]
        # Only the failed request went to the server again; the completed ones were not repeated.
        assert srv.n_requests == 6 and c.stats["cache_hits"] == 2
        cache.close()


def test_cache_keys_on_endpoint_model_and_request(tmp_path):
    base = RequestCache.key("http://a/v1", {"model": "m", **request()})
    assert base == RequestCache.key("http://a/v1", {"model": "m", **request()})
    assert base != RequestCache.key("http://b/v1", {"model": "m", **request()})
    assert base != RequestCache.key("http://a/v1", {"model": "n", **request()})
    assert base != RequestCache.key("http://a/v1", {"model": "m", **request(1)})


@pytest.mark.parametrize("limit", [1, 3])
def test_concurrency_never_exceeds_max_concurrent(limit):
    with FakeOpenAI(delay=0.15) as srv:
        c = client(srv.url, max_concurrent=limit)
        replies = run(_complete(c, [request(i) for i in range(9)]))
        assert all(r.ok for r in replies)
        assert srv.max_inflight == limit  # reached, never passed


def test_server_killed_mid_run_then_resume(tmp_path):
    cache = RequestCache(tmp_path / "c.sqlite")
    srv = FakeOpenAI(delay=0.2)
    port = srv.port

    async def scenario():
        c = client(srv.url, cache, max_attempts=1, timeout_s=2.0)
        tasks = [asyncio.create_task(c.complete(request(i))) for i in range(6)]
        while sum(srv.completed.values()) < 2:
            await asyncio.sleep(0.02)
        await asyncio.to_thread(srv.stop)  # the server dies with requests queued behind it
        try:
            return await asyncio.gather(*tasks), c
        finally:
            await c.close()

    replies, c = run(scenario())
    done = {i for i, r in enumerate(replies) if r.ok}
    assert len(done) >= 2 and len(done) < 6  # some finished, the rest failed: recorded, not raised
    assert {r.error for r in replies if not r.ok} == {"connection"}

    with FakeOpenAI(port=port) as again:
        c = client(again.url, cache, max_attempts=2)
        replies = run(_complete(c, [request(i) for i in range(6)]))
        assert all(r.ok for r in replies)
        seen = {k for k, v in again.seen.items() if v}
        assert seen == {body_key(sent(i)) for i in range(6) if i not in done}  # none repeated
    cache.close()


def test_api_key_from_environment_never_in_repr(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env
    spec = EndpointSpec(base_url="http://127.0.0.1:9/v1", api_key_env="SFTPIPE_TEST_KEY")
    monkeypatch.delenv("SFTPIPE_TEST_KEY", raising=False)
    with pytest.raises(EndpointError, match="SFTPIPE_TEST_KEY"):
        Endpoint.resolve("judge", spec)
    (tmp_path / ".env").write_text("SFTPIPE_TEST_KEY=sk-from-dotenv\n")
    endpoint = Endpoint.resolve("judge", spec)
    assert endpoint.api_key == "sk-from-dotenv" and "sk-from" not in repr(endpoint)
    monkeypatch.setenv("SFTPIPE_TEST_KEY", "sk-secret-123")
    with FakeOpenAI() as srv:
        spec = EndpointSpec(base_url=srv.url, api_key_env="SFTPIPE_TEST_KEY")
        c = LLMClient(Endpoint.resolve("judge", spec))
        run(_complete(c, [request()]))
        assert srv.auth == ["Bearer sk-secret-123"]


def test_local_endpoint_needs_a_server():
    with pytest.raises(EndpointError, match="no local server"):
        Endpoint.resolve("generator", EndpointSpec())
    e = Endpoint.resolve(
        "generator", EndpointSpec(), ["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"], "local:x"
    )
    assert e.urls == ["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"] and e.identity == "local:x"


def test_requests_spread_over_local_servers():
    with FakeOpenAI(delay=0.15) as a, FakeOpenAI(delay=0.15) as b:
        spec = EndpointSpec(max_concurrent=2)
        shared = Balancer(2)
        gen = LLMClient(Endpoint.resolve("generator", spec, [a.url, b.url], "local:x"), balancer=shared)
        judge = LLMClient(Endpoint.resolve("judge", spec, [a.url, b.url], "local:x"), balancer=shared)

        async def both():
            try:
                return await asyncio.gather(*(c.complete(request(i)) for i in range(4) for c in (gen, judge)))
            finally:
                await gen.close()
                await judge.close()

        assert all(r.ok for r in run(both()))
        # Four in flight at most (two per client), two per server: one balancer for both clients.
        assert (a.n_requests, b.n_requests) == (4, 4) and a.max_inflight == b.max_inflight == 2


def test_extra_body_and_max_completion_tokens_reach_the_server():
    bodies = []

    def keep(body, n):
        bodies.append(body)
        return "ok"

    with FakeOpenAI(keep) as srv:
        extra = {"enable_thinking": False, "chat_template_kwargs": {"thinking": False}}
        c = client(srv.url, max_tokens_field="max_completion_tokens", extra_body=extra)
        [reply] = run(_complete(c, [{**request(), "max_tokens": 77}]))
        plain = client(srv.url)
        run(_complete(plain, [{**request(1), "max_tokens": 77}]))
    assert reply.ok
    assert bodies[0]["max_completion_tokens"] == 77 and "max_tokens" not in bodies[0]
    assert bodies[0]["enable_thinking"] is False and bodies[0]["chat_template_kwargs"] == {"thinking": False}
    assert bodies[1]["max_tokens"] == 77 and "enable_thinking" not in bodies[1]


def test_extra_body_is_part_of_the_cache_key(tmp_path):
    with FakeOpenAI() as srv:
        cache = RequestCache(tmp_path / "c.sqlite")
        run(_complete(client(srv.url, cache), [request()]))
        run(_complete(client(srv.url, cache, extra_body={"enable_thinking": False}), [request()]))
        assert srv.n_requests == 2  # a different request body is a different answer
        cache.close()


def test_one_host_cap_is_shared_by_its_entries():
    from sftpipe.distill.llm import server_limits

    with FakeOpenAI(delay=0.15) as srv:
        specs = [
            EndpointSpec(base_url=srv.url + suffix, model="m", max_concurrent=3) for suffix in ("", "/", "")
        ]

        async def three_entries():
            slots = server_limits(specs, local_cap=1)
            assert len(slots) == 1  # one server: "…/v1" and "…/v1/" are the same
            [shared] = slots.values()
            clients = [
                LLMClient(Endpoint.resolve(f"e{k}", spec), server_slots=shared)
                for k, spec in enumerate(specs)
            ]
            try:
                return await asyncio.gather(*(c.complete(request(i)) for i in range(6) for c in clients))
            finally:
                for c in clients:
                    await c.close()

        replies = run(three_entries())
        assert all(r.ok for r in replies) and srv.n_requests == 18
        assert srv.max_inflight == 3  # not 3 x 3


def test_server_limits_take_the_largest_cap_per_host_and_the_local_server_count():
    from sftpipe.distill.llm import server_limits

    async def caps():
        specs = [
            EndpointSpec(base_url="http://a/v1", max_concurrent=2),
            EndpointSpec(base_url="http://a/v1", max_concurrent=16),
            EndpointSpec(base_url="http://b/v1", max_concurrent=4),
            EndpointSpec(base_url=None, max_concurrent=1),
        ]
        return {k: s._value for k, s in server_limits(specs, local_cap=2).items()}

    assert run(caps()) == {"http://a/v1": 16, "http://b/v1": 4, "local": 2}


@pytest.mark.parametrize(
    "value",
    [
        "sk-proj-" + "A1b2" * 12,
        "sk_live_abcdefghijklmnop",
        "hf_AbCdEfGhIjKlMnOpQrStUv",
        "AbCdEf1234567890GhIjKlMnOp",
    ],
)
def test_a_key_pasted_into_api_key_env_is_refused_without_echoing_it(value):
    from sftpipe.core.config import validate
    from sftpipe.distill.llm import SecretInParams

    with pytest.raises(SecretInParams) as err:
        validate(EndpointSpec, {"api_key_env": value}, "distill.generator")
    assert value not in str(err.value) and value[:6] not in str(err.value)
    assert "api_key_env: this looks like an API key" in str(err.value)
    for name in ("OPENAI_API_KEY", "DASHSCOPE_API_KEY", "my_key", "HF_TOKEN", "SK_PROD_KEY"):
        assert EndpointSpec(api_key_env=name).api_key_env == name
