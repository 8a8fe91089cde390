"""The scripted OpenAI-compatible test server (tests/llm_server.py), exercised over real HTTP with httpx."""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.llm_server import ScriptedServer

SCRIPT: dict[str, Any] = {
    "answers": [
        {"match": "flaky", "responses": [{"status": 500}, {"content": "recovered now"}]},
        {"match": "limited", "responses": [{"status": 429, "retry_after": 1}, {"content": "ok"}]},
        {"match": "slow", "responses": [{"delay": 0.5, "content": "late answer"}]},
        {"match": "schema", "responses": [{"echo_json_schema": True}]},
        {"match": "drop", "responses": [{"drop": True}, {"content": "back"}]},
    ],
    "default": {"content": "default answer"},
}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "k", "schema": {"type": "object"}}}


def chat(base_url: str, prompt: str, *, timeout: float = 10.0, **body: Any) -> httpx.Response:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}]
    return httpx.post(f"{base_url}/chat/completions", json={"model": "m", "messages": messages, **body},
                      timeout=timeout)


def content(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScriptedServer]:
    with ScriptedServer(SCRIPT, tmp_path_factory.mktemp("llm")) as running:
        yield running


def test_health_models_and_completion_shape(server: ScriptedServer) -> None:
    assert httpx.get(f"{server.root_url}/health").text == "ok"
    assert httpx.get(f"{server.base_url}/models").json() == {
        "object": "list", "data": [{"id": "scripted-model", "object": "model"}]}
    body = chat(server.base_url, "tell me something").json()
    assert body["object"] == "chat.completion" and body["model"] == "m"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "default answer"},
                                "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_rule_responses_are_consumed_per_attempt(server: ScriptedServer) -> None:
    first = chat(server.base_url, "a flaky question")
    assert first.status_code == 500
    assert first.json()["error"]["type"] == "server_error"
    assert content(chat(server.base_url, "a flaky question")) == "recovered now"
    assert content(chat(server.base_url, "flaky again")) == "recovered now"  # the last response sticks
    assert server.stats()["by_key"]["flaky"] == 3


def test_only_the_last_user_message_is_matched(server: ScriptedServer) -> None:
    messages = [{"role": "user", "content": "flaky"}, {"role": "assistant", "content": "flaky"},
                {"role": "user", "content": [{"type": "text", "text": "plain"}]}]
    response = httpx.post(f"{server.base_url}/chat/completions", json={"messages": messages})
    assert content(response) == "default answer"


def test_rate_limit_with_retry_after(server: ScriptedServer) -> None:
    limited = chat(server.base_url, "limited")
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "1"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert content(chat(server.base_url, "limited")) == "ok"


def test_delay_and_client_timeout(server: ScriptedServer) -> None:
    with pytest.raises(httpx.TimeoutException):
        chat(server.base_url, "slow", timeout=0.1)
    start = time.monotonic()
    assert content(chat(server.base_url, "slow")) == "late answer"
    assert time.monotonic() - start >= 0.5


def test_echo_json_schema(server: ScriptedServer) -> None:
    assert json.loads(content(chat(server.base_url, "schema please", response_format=SCHEMA))) == SCHEMA
    assert content(chat(server.base_url, "schema please")) == "null"


def test_drop_is_a_transport_error(server: ScriptedServer) -> None:
    with pytest.raises(httpx.TransportError):
        chat(server.base_url, "drop")
    assert content(chat(server.base_url, "drop")) == "back"


def test_no_default_is_404(tmp_path: Path) -> None:
    with ScriptedServer({"answers": []}, tmp_path) as running:
        response = chat(running.base_url, "anything")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "no_scripted_answer"


def test_max_concurrency_queues_requests(tmp_path: Path) -> None:
    async def burst(base_url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as client:
            body = {"messages": [{"role": "user", "content": "hi"}]}
            return await asyncio.gather(*(client.post("/chat/completions", json=body) for _ in range(8)))

    with ScriptedServer({"default": {"content": "hi"}}, tmp_path, latency=0.2, max_concurrency=4) as running:
        start = time.monotonic()
        responses = asyncio.run(burst(running.base_url))
        elapsed = time.monotonic() - start
        stats = running.stats()
    assert [r.status_code for r in responses] == [200] * 8
    assert 0.4 <= elapsed < 0.8
    assert stats == {"requests": 8, "peak_concurrency": 4, "by_key": {"<default>": 8}}


def test_kill_and_restart_on_the_same_port(tmp_path: Path) -> None:
    script = {"answers": [{"match": "q", "responses": [{"status": 500}, {"content": "second"}]}]}
    with ScriptedServer(script, tmp_path) as running:
        assert chat(running.base_url, "q").status_code == 500
        running.kill()
        with pytest.raises(httpx.ConnectError):
            chat(running.base_url, "q")
        assert running.start() == running.base_url
        assert chat(running.base_url, "q").status_code == 500  # counters start from zero again
        assert content(chat(running.base_url, "q")) == "second"


def test_by_attempt_rules_answer_by_the_re_asks_in_the_request_and_faults_by_arrival(tmp_path: Path) -> None:
    script = {"answers": [{"match": "Caption: x", "by_attempt": True,
                           "responses": [{"content": "first"}, {"content": "second"}]}],
              "faults": [{"every": 3, "response": {"status": 503}}]}
    first = [{"role": "user", "content": "Caption: x"}]
    reask = first + [{"role": "assistant", "content": "first"}, {"role": "user", "content": "again. Caption: x"}]
    with ScriptedServer(script, tmp_path) as server:
        answers = [httpx.post(f"{server.base_url}/chat/completions", json={"messages": m}, timeout=10)
                   for m in (first, first, reask, reask)]
        assert [r.status_code for r in answers] == [200, 200, 503, 200]
        assert [content(answers[i]) for i in (0, 1, 3)] == ["first", "first", "second"]  # not by arrival order
        assert server.stats()["by_key"] == {"Caption: x": 3}
