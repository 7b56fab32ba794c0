"""A real HTTP server on loopback that speaks the OpenAI chat-completions JSON, for fault tests of
the LLM client and the distill stage (the client under test talks HTTP to it, nothing is mocked).

It answers like a tiny generator or judge, deterministically from the request:
- a generator request (no "reviewer" in the system prompt) gets a pair about the passage; passages
  with markers get faulty answers: `[nojson]` prose, `[truncated]` JSON cut off with
  finish_reason "length", `[invalid]` JSON without a response;
- a judge request gets scores for the five default dimensions and any `- name: rubric` line of the
  system prompt: 9 each, or 2 each when the response contains `[bad]`, or prose
  without JSON when it contains `[judgefail]`; with `[split]`, 9 from judges sampling at
  temperature <= 0.5 and 2 from the others;
- a judge request to model "oracle" scores 9 only a response that is the passage's own text,
  whole sentences (as the good control pairs of sftpipe.distill.controls are), else 2;
- a pairwise judge request ("impartial judge" in the system prompt, as sftpipe.model.judge asks)
  gets `[[A]]`/`[[B]]` for the answer holding `[good]`, `[[C]]` (tie) otherwise, and always
  `[[A]]` when the question holds `[first]`.

`behaviour(body, n)` (n = how many times this exact request was seen before) injects HTTP faults:
return "ok", ("status", code[, retry_after[, message]]), ("sleep", seconds), "malformed" (invalid JSON body),
"empty" (a well-formed answer with empty content). A request with `logprobs: true` gets
token log-probabilities (`token_logprobs`).
"truncated" (valid JSON cut in half), "short" (Content-Length larger than the body, then close).

In a thread: `with FakeOpenAI(behaviour) as srv: srv.url ...`. As a process that a test can
SIGKILL: `python -m tests.fake_openai --port P --log requests.jsonl [--delay S]`; the log gets one
line per request received and per response completed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Action = Any  # "ok" | "malformed" | "truncated" | "short" | ("status", code[, after]) | ("sleep", s)


def body_key(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _passage(text: str) -> str:
    m = re.search(r"Passage:\n(.*?)(?:\n\n(?:Write|Instruction:)|\Z)", text, re.S)
    return (m.group(1) if m else text).strip()


def answer(body: dict) -> tuple[str, str]:
    """The (content, finish_reason) a well-behaved model would give to `body`."""
    system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
    user = body["messages"][-1]["content"]
    passage = _passage(user)
    if "impartial judge" in system:
        return _pairwise(user), "stop"
    if "reviewer" in system:
        response = user.rsplit("Response:\n", 1)[-1]
        if "[judgefail]" in response:
            return "I cannot score this.", "stop"
        score = 2 if "[bad]" in response else 9
        if body.get("model") == "oracle":
            text, source = " ".join(response.split()), " ".join(passage.split())
            score = 9 if text in source and text.endswith((".", "!", "?")) else 2
        if "[split]" in response:  # judges disagree: the one sampling hotter scores low
            score = 9 if body.get("temperature", 0) <= 0.5 else 2
        dims = ["accuracy", "completeness", "logicality", "helpfulness", "safety"]
        dims += re.findall(r"^- (\w+): ", system, re.M)  # custom dimensions from a rubric
        scores = dict.fromkeys(dims, score)
        return json.dumps({"rationale": f"scored {score}", **scores}), "stop"
    if "[nojson]" in passage:
        return "Here is a question: what is this about? And an answer: it is about data.", "stop"
    words = passage.split()
    pair = {
        "instruction": f"What does the guide say about {' '.join(words[:4])}?",
        "input": "",
        "response": f"{passage} (sample seed {body.get('seed')})",
    }
    if "[invalid]" in passage:
        pair.pop("response")
    text = json.dumps(pair)
    if "[truncated]" in passage:
        return text[: len(text) // 2], "length"
    return text, "stop"


# A judge unsure of its digits: a sampled 9 had 8 and 2 as alternatives, a sampled 2 had 3 and 9.
_ALTERNATIVES = {"9": {"9": 0.6, "8": 0.3, "2": 0.1}, "2": {"2": 0.7, "3": 0.2, "9": 0.1}}


def token_logprobs(content: str) -> list[dict]:
    """OpenAI-style `logprobs.content` for `content`, one token per digit and per run of other
    characters; digits get the alternatives of `_ALTERNATIVES` (expected 9 -> 8.0, 2 -> 2.9)."""
    out = []
    for token in re.findall(r"\d|\D+", content):
        top = _ALTERNATIVES.get(token, {token: 1.0})
        alts = [{"token": t, "logprob": math.log(p)} for t, p in top.items()]
        out.append({"token": token, "logprob": alts[0]["logprob"], "top_logprobs": alts})
    return out


def _pairwise(user: str) -> str:
    """A pairwise judge's verdict: the answer holding `[good]` wins, `[[C]]` (a tie) when both or
    neither do; a question holding `[first]` always gets `[[A]]` (a judge biased to position)."""
    if "[first]" in user.split("[The Start of", 1)[0]:
        return "The first one. [[A]]"
    a = re.search(r"Assistant A's Answer\]\n(.*?)\n\[The End of Assistant A", user, re.S)
    b = re.search(r"Assistant B's Answer\]\n(.*?)\n\[The End of Assistant B", user, re.S)
    good_a, good_b = ("[good]" in m.group(1) if m else False for m in (a, b))
    verdict = "A" if good_a and not good_b else "B" if good_b and not good_a else "C"
    return f"Compared both. [[{verdict}]]"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self._send(200, json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode())

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        key = body_key(body)
        with srv.lock:
            n = srv.seen[key]
            srv.seen[key] += 1
            srv.inflight += 1
            srv.max_inflight = max(srv.max_inflight, srv.inflight)
            srv.record({"event": "request", "key": key, "n": n, "t": time.monotonic()})
            srv.auth.append(self.headers.get("Authorization"))
        self._in_flight = True
        try:
            self._respond(body, key, srv.behaviour(body, n) if srv.behaviour else "ok")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) or went away
        finally:
            self._landed()

    def _landed(self) -> None:
        """The request stops counting as in flight once its reply is released: counted after the
        write, a busy machine let the client's next request arrive first (max_inflight one too high)."""
        if getattr(self, "_in_flight", False):
            self._in_flight = False
            with self.server.lock:
                self.server.inflight -= 1

    def _respond(self, body: dict, key: str, action: Action) -> None:
        srv = self.server
        if srv.delay:
            time.sleep(srv.delay)
        if isinstance(action, tuple) and action[0] == "sleep":
            time.sleep(action[1])
            action = "ok"
        if isinstance(action, tuple) and action[0] == "status":
            headers = {"Retry-After": str(action[2])} if len(action) > 2 and action[2] is not None else {}
            text = action[3] if len(action) > 3 else f"fake {action[1]}"
            error = {"error": {"message": text, "type": "fake", "code": action[1]}}
            return self._send(action[1], json.dumps(error).encode(), headers)
        content, finish = ("", "stop") if action == "empty" else answer(body)
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": token_logprobs(content)}
        payload = json.dumps(
            {
                "id": f"chatcmpl-{key}",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", "fake"),
                "choices": [choice],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        ).encode()
        if action == "malformed":
            return self._send(200, b'{"id": "x", "choices": [ {"message": oops')
        if action == "truncated":
            return self._send(200, payload[: len(payload) // 2])
        if action == "short":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload) + 100))
            self.end_headers()
            self.wfile.write(payload[:20])
            self.wfile.flush()
            self.close_connection = True
            return None
        self._send(200, payload)
        with srv.lock:
            srv.completed[key] += 1
            srv.record({"event": "completed", "key": key})
        return None

    def _send(self, code: int, data: bytes, headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self._landed()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, behaviour, delay: float, log_path: str | None):
        super().__init__(("127.0.0.1", port), _Handler)
        self.behaviour, self.delay, self.lock = behaviour, delay, threading.Lock()
        self.seen: Counter[str] = Counter()
        self.completed: Counter[str] = Counter()
        self.events: list[dict] = []
        self.auth: list[str | None] = []
        self.inflight = self.max_inflight = 0
        self._log = open(log_path, "a", buffering=1) if log_path else None  # noqa: SIM115 - lives with the server

    def record(self, event: dict) -> None:
        self.events.append(event)
        if self._log:
            self._log.write(json.dumps(event) + "\n")


class FakeOpenAI:
    """The fake server in a background thread; `url` is its OpenAI base URL (…/v1)."""

    def __init__(
        self, behaviour: Callable[[dict, int], Action] | None = None, delay: float = 0.0, port: int = 0
    ):
        self._srv = _Server(port, behaviour, delay, None)
        self.port = self._srv.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True)
        self._thread.start()

    def __getattr__(self, name: str):
        return getattr(self._srv, name)

    def requests_for(self, key: str) -> list[dict]:
        return [e for e in self._srv.events if e["event"] == "request" and e["key"] == key]

    @property
    def n_requests(self) -> int:
        return sum(self._srv.seen.values())

    def stop(self) -> None:
        self._srv.shutdown()
        self._srv.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description="fake OpenAI chat-completions server (tests only)")
    ap.add_argument("--port", type=int, required=True, help="loopback port to listen on")
    ap.add_argument("--log", required=True, help="JSONL file: one line per request and per completion")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds before every answer")
    args = ap.parse_args()
    srv = _Server(args.port, None, args.delay, args.log)
    srv.serve_forever()


if __name__ == "__main__":
    main()
