"""Chat backends for knowledge generation: any OpenAI-compatible server (vLLM first), and its managed launch.

A backend turns OpenAI-style messages into a `Completion`. Transport problems (HTTP 429/5xx, timeouts,
dropped connections) are retried with backoff here; what the model *said* is judged by rules.py.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import shlex
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int


class LLMTransportError(RuntimeError):
    """No answer could be had from the LLM server(s), after retries."""


class ChatBackend(Protocol):
    model: str

    async def complete(self, messages: list[dict[str, str]], schema: dict | None = None) -> Completion: ...

    async def aclose(self) -> None: ...


class OpenAIBackend:
    """Async client of `/v1/chat/completions` on one or more servers, at most `concurrency` requests in flight.

    Requests rotate over `base_urls` (a retry goes to the next server, so one dead server costs a retry, not
    a failure). With `structured_outputs`, the JSON schema is sent as `response_format` (vLLM: guided
    decoding); a server that rejects it with HTTP 400 is asked again without it from then on.
    aiohttp rather than httpx: httpcore's pool costs grow with the requests in flight (5x slower at 64).
    """

    def __init__(self, model: str, base_urls: list[str], api_key: str | None = None, concurrency: int = 64,
                 timeout_s: float = 60.0, max_retries: int = 5, max_tokens: int = 256, temperature: float = 0.0,
                 structured_outputs: bool = True, backoff_s: float = 0.5):
        if not base_urls:
            raise ValueError("llm.base_urls is empty")
        self.model = model
        self.base_urls = [url.rstrip("/") for url in base_urls]
        self.max_retries = max_retries
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.structured_outputs = structured_outputs
        self.backoff_s = backoff_s
        self.retries = 0  # transport retries, for the run report
        self._servers = itertools.cycle(self.base_urls)
        self._concurrency = concurrency
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(timeout_s, 10.0))
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._semaphore: asyncio.Semaphore | None = None
        self._session: aiohttp.ClientSession | None = None

    def _body(self, messages: list[dict[str, str]], schema: dict | None) -> dict[str, Any]:
        body = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                "temperature": self.temperature}
        if schema is not None and self.structured_outputs:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": schema.get("title", "answer"), "schema": schema}}
        return body

    async def complete(self, messages: list[dict[str, str]], schema: dict | None = None) -> Completion:
        if self._session is None:  # created here: both must belong to the running event loop
            self._semaphore = asyncio.Semaphore(self._concurrency)
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self._concurrency, limit_per_host=self._concurrency))
        async with self._semaphore:
            problem = "no attempt made"
            for attempt in range(self.max_retries + 1):
                if attempt:
                    self.retries += 1
                url = f"{next(self._servers)}/chat/completions"
                body = self._body(messages, schema)
                server_wait = None
                try:
                    async with self._session.post(url, json=body) as response:
                        status, payload = response.status, await response.read()
                        server_wait = _retry_after(response.headers.get("Retry-After"))
                except asyncio.TimeoutError:
                    problem = f"{url}: timed out"
                except aiohttp.ClientError as exc:
                    problem = f"{url}: {type(exc).__name__}: {exc}"
                else:
                    if status == 200:
                        try:
                            return _parse_completion(json.loads(payload))
                        except (ValueError, KeyError, IndexError, TypeError) as exc:
                            problem = f"{url}: malformed response body ({exc})"
                    elif status == 400 and "response_format" in body:
                        self.structured_outputs = False  # this server has no structured outputs: plain JSON prompts
                        continue
                    elif status in RETRYABLE_STATUS:
                        problem = f"{url}: HTTP {status} {_error_message(payload)}"
                    else:
                        raise LLMTransportError(f"{url}: HTTP {status} {_error_message(payload)}")
                if attempt < self.max_retries:
                    await asyncio.sleep(server_wait or self._backoff(attempt))
            raise LLMTransportError(f"no answer after {self.max_retries + 1} tries; last: {problem}")

    def _backoff(self, attempt: int) -> float:
        return min(MAX_BACKOFF_S, self.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.5)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _parse_completion(payload: dict[str, Any]) -> Completion:
    usage = payload.get("usage") or {}
    return Completion(text=payload["choices"][0]["message"]["content"] or "",
                      prompt_tokens=int(usage.get("prompt_tokens") or 0),
                      completion_tokens=int(usage.get("completion_tokens") or 0))


def _error_message(payload: bytes) -> str:
    try:
        return str(json.loads(payload)["error"]["message"])[:200]
    except (ValueError, KeyError, TypeError):
        return payload[:200].decode("utf-8", "replace")


def _retry_after(header: str | None) -> float | None:
    try:
        return min(MAX_BACKOFF_S, float(header)) if header else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def health_url(base_url: str) -> str:
    """vLLM serves /health at the root, beside /v1."""
    root = base_url.rstrip("/")
    return f"{root.removesuffix('/v1')}/health"


@contextmanager
def managed_server(command: str | None, health: str, startup_timeout_s: float, log_path: Path) -> Iterator[None]:
    """Start `command` (e.g. `vllm serve ...`), wait until `health` answers 200, stop it afterwards, also on failure.

    Without a command, the server is someone else's and nothing is started.
    """
    if not command:
        yield
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        # Own process group: vLLM starts workers that must stop with it.
        server = subprocess.Popen(shlex.split(command), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if server.poll() is not None:
                raise LLMTransportError(f"LLM server command exited with code {server.returncode} before it was "
                                        f"healthy; see {log_path}")
            try:
                with urllib.request.urlopen(health, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise LLMTransportError(f"LLM server not healthy at {health} after {startup_timeout_s:.0f} s; "
                                        f"see {log_path}")
            time.sleep(1)
        yield
    finally:
        _stop_group(server)


def _stop_group(process: subprocess.Popen, grace_s: float = 30) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
