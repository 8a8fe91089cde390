"""A scriptable OpenAI-compatible chat-completions server for tests and benchmarks (127.0.0.1 only).

Run as a separate process (tests SIGKILL and restart it), from the repository root:

    python -m tests.llm_server --port PORT --script SCRIPT.json [--latency 0.05] [--max-concurrency 64] [--model NAME]

Endpoints: GET /health, GET /v1/models, GET /stats, POST /v1/chat/completions.

Script format (JSON, loaded at start):

    {"answers": [{"match": "<substring>", "responses": [R1, R2, ...], "by_attempt": false}, ...], "default": R,
     "faults": [{"every": N, "response": R}, {"first": N, "response": R}, ...]}

A request uses the FIRST rule whose "match" occurs in the content of its LAST user message. The k-th request
(0-based) matching a rule gets responses[min(k, len - 1)]; counters live in memory, so a restarted server starts
from zero. A rule with "by_attempt" instead answers by the request's own content: responses[n - 1], n = the user
messages containing "match" (the question, then each re-ask that repeats it), so a client that resumes a re-ask
chain after a crash gets what it would have got. Without a match the "default" response applies (none: 404 with
an OpenAI-style error body). "faults" inject transport failures by arrival: the n-th chat request (1-based) gets
the first fault whose "every" divides n or whose "first" is >= n (the first N requests), before any rule is
consulted (a faulted request counts for no rule).
A response R is an object with one of
    {"content": "text"}                    200, that assistant text
    {"status": 500} / {"status": 429, "retry_after": 1}
                                           that status, an OpenAI-style error body, Retry-After when given
    {"echo_json_schema": true}             content = json.dumps(request_body.get("response_format"))
    {"drop": true}                         abort the connection without an answer
and any R may add {"delay": seconds}: sleep that long first. Every chat request also sleeps --latency seconds,
and at most --max-concurrency requests are served at once (the rest queue).
/stats: {"requests": total, "peak_concurrency": max served at once, "by_key": {match or "<default>": requests}}.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web

DEFAULT_KEY = "<default>"
ERROR_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 429: "rate_limit_error"}
REPO_ROOT = Path(__file__).resolve().parent.parent


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> web.Response:
    error_type = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def _text(content: Any) -> str:
    """Message content as text (a string, or a list of OpenAI content parts)."""
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


class ScriptedLLM:
    """The application state: script, attempt counters, capacity limit and statistics."""

    def __init__(self, script: dict[str, Any], latency: float, max_concurrency: int, model: str) -> None:
        self.rules: list[dict[str, Any]] = script.get("answers", [])
        self.default: dict[str, Any] | None = script.get("default")
        self.faults: list[dict[str, Any]] = script.get("faults", [])
        self.latency = latency
        self.model = model
        self.capacity = asyncio.Semaphore(max_concurrency)
        self.attempts: Counter[str] = Counter()
        self.requests = self.active = self.peak = 0

    def pick(self, users: list[str]) -> tuple[str, dict[str, Any] | None]:
        """The rule key and the response for this attempt (counted at arrival, so in request order)."""
        self.requests += 1
        for fault in self.faults:
            if "first" in fault and self.requests <= fault["first"]:
                return f"<fault first {fault['first']}>", fault["response"]
            if "every" in fault and self.requests % fault["every"] == 0:
                return f"<fault every {fault['every']}>", fault["response"]
        prompt = users[-1] if users else ""
        for rule in self.rules:
            if rule["match"] in prompt:
                key, responses = rule["match"], rule["responses"]
                index = sum(rule["match"] in text for text in users) - 1 if rule.get("by_attempt") else self.attempts[key]
                response = responses[min(index, len(responses) - 1)]
                break
        else:
            key, response = DEFAULT_KEY, self.default
        self.attempts[key] += 1
        return key, response

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            messages = body["messages"]
        except (ValueError, KeyError, TypeError):
            return _error(400, "body must be JSON with 'messages'", "invalid_body")
        users = [_text(m.get("content")) for m in messages if m.get("role") == "user"]
        key, response = self.pick(users)
        async with self.capacity:
            self.active += 1
            self.peak = max(self.peak, self.active)
            try:
                await asyncio.sleep(self.latency + (response or {}).get("delay", 0.0))
                return self.answer(request, body, key, response)
            finally:
                self.active -= 1

    def answer(self, request: web.Request, body: dict[str, Any], key: str,
               response: dict[str, Any] | None) -> web.StreamResponse:
        if response is None:
            return _error(404, "no scripted answer matches this request", "no_scripted_answer")
        if response.get("drop"):
            assert request.transport is not None
            request.transport.abort()
            return web.Response()  # never sent: the transport is gone
        if "status" in response:
            retry = response.get("retry_after")
            headers = {"Retry-After": str(retry)} if retry is not None else None
            return _error(response["status"], f"scripted error for {key!r}", f"scripted_{response['status']}", headers)
        if response.get("echo_json_schema"):
            content = json.dumps(body.get("response_format"))
        else:
            content = response["content"]
        prompt_tokens = sum(len(_text(m.get("content")).split()) for m in body["messages"])
        completion_tokens = len(content.split())
        return web.json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model") or self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    async def health(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def stats(self, _: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests, "peak_concurrency": self.peak,
                                  "by_key": dict(self.attempts)})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/stats", self.stats)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app


class ScriptedServer:
    """The server as a subprocess on a fixed port: start(), kill() (SIGKILL), stop(); a context manager.

    start() (re)writes `script` to workdir/llm_script.json, so a test may change `script` before a restart.
    """

    def __init__(self, script: dict[str, Any], workdir: Path, *, latency: float = 0.0, max_concurrency: int = 64,
                 model: str = "scripted-model", port: int | None = None) -> None:
        self.script, self.workdir = script, Path(workdir)
        self.latency, self.max_concurrency, self.model = latency, max_concurrency, model
        self.port = port or _free_port()
        self.root_url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root_url}/v1"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> str:
        """Start the process, wait until /health answers and return base_url (".../v1")."""
        if self.process is not None:
            raise RuntimeError("server already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        script_path, log_path = self.workdir / "llm_script.json", self.workdir / f"llm_server_{self.port}.log"
        script_path.write_text(json.dumps(self.script))
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.llm_server", "--port", str(self.port), "--script", str(script_path),
                 "--latency", str(self.latency), "--max-concurrency", str(self.max_concurrency),
                 "--model", self.model],
                cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.root_url}/health", timeout=1.0):
                    return self.base_url
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"LLM test server did not come up on port {self.port}:\n{log_path.read_text()[-2000:]}")

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.root_url}/stats", timeout=5.0) as response:
            return json.load(response)

    def kill(self) -> None:
        """SIGKILL: in-flight requests die with the process, as in a crash."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 5 s)."""
        self._end(signal.SIGTERM)

    def _end(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> ScriptedServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--script", type=Path, required=True)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--max-concurrency", type=int, default=64)
    parser.add_argument("--model", default="scripted-model")
    args = parser.parse_args(argv)
    llm = ScriptedLLM(json.loads(args.script.read_text()), args.latency, args.max_concurrency, args.model)
    print(f"llm_server pid {os.getpid()} on 127.0.0.1:{args.port}", flush=True)
    web.run_app(llm.app(), host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=1024,
                shutdown_timeout=0.25)


if __name__ == "__main__":
    main()
