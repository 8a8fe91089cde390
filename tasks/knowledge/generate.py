"""Stage `knowledge`: ask the LLM for action triplets (Q1) and a state description per triplet (Q2).

Answers are appended to sharded JSONL files under data/interim/knowledge_raw/, keyed by
(question, model, prompt version, caption text or triplet), one line per answered attempt. They are the
resume cache: a re-run, or a run after kill -9, asks only for what is missing, and a re-ask chain cut short
resumes at its next attempt; identical captions and triplets are asked once.
The raw answers are judged again by the validate stage, with the same rules used here to decide on a re-ask.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tasks import paths
from tasks.config import write_json
from tasks.knowledge import rules
from tasks.knowledge.config import LLMConfig
from tasks.knowledge.openai_client import ChatBackend, LLMTransportError, OpenAIBackend, health_url, managed_server
from tasks.knowledge.prompts import Prompts, caption_key, same_text, triplet_key
from tasks.knowledge.store import RawStore, finished


@dataclass
class RunStats:
    captions: int = 0
    distinct_captions: int = 0
    asked_captions: int = 0
    asked_triplets: int = 0
    cached_captions: int = 0
    not_asked: int = 0  # beyond llm.limit
    failed: list[str] = field(default_factory=list)
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def as_report(self, backend: ChatBackend | None) -> dict[str, Any]:
        report = {k: v for k, v in self.__dict__.items() if k != "failed"}
        report["failed"] = len(self.failed)
        report["transport_retries"] = getattr(backend, "retries", 0)
        asked = self.asked_captions + self.asked_triplets
        report["requests_per_s"] = round(self.requests / self.seconds, 3) if self.seconds else None
        report["captions_per_s"] = round(self.asked_captions / self.seconds, 3) if self.seconds and asked else None
        return report


class KnowledgeGenerator:
    """Runs Q1 with re-asks, then Q2 for each accepted triplet, writing every answered attempt to the store."""

    def __init__(self, backend: ChatBackend, prompts: Prompts, store: RawStore, config: LLMConfig,
                 records: dict[str, dict[str, Any]], stats: RunStats):
        self.backend, self.prompts, self.store, self.config = backend, prompts, store, config
        self.records, self.stats = records, stats
        self.on_triplets_answered: Callable[[], object] = lambda: None  # progress: Q1 answers come first
        self._states_in_flight: dict[str, asyncio.Task] = {}

    async def _ask(self, record: dict[str, Any], messages: list[dict[str, str]], schema: dict,
                   check: Callable[[str], rules.Verdict]) -> dict[str, Any]:
        """Ask, re-asking with a correction while the answer yields nothing valid, from the attempts `record`
        already holds on; each answer is stored at once, so a kill loses at most the requests in flight."""
        question = messages[-1]
        for text in record["outputs"]:  # a chain cut short by a kill: replay its turns, ask the next attempt
            messages = messages + [{"role": "assistant", "content": text},
                                   self.prompts.correction(check(text).reason, question)]
        while True:
            started = time.monotonic()
            completion = await self.backend.complete(messages, schema)
            self.stats.requests += 1
            self.stats.prompt_tokens += completion.prompt_tokens
            self.stats.completion_tokens += completion.completion_tokens
            verdict = check(completion.text)
            done = bool(verdict.triplets or verdict.state) or len(record["outputs"]) + 1 >= self.config.max_attempts
            record = {key: value for key, value in record.items() if key != "unfinished"} | {
                "outputs": record["outputs"] + [completion.text],
                "prompt_tokens": record["prompt_tokens"] + completion.prompt_tokens,
                "completion_tokens": record["completion_tokens"] + completion.completion_tokens,
                "seconds": round(record["seconds"] + time.monotonic() - started, 3)}
            if not done:
                record["unfinished"] = True
            self.store.append(record)
            self.records[record["key"]] = record
            if done:
                return record
            messages = messages + [{"role": "assistant", "content": completion.text},
                                   self.prompts.correction(verdict.reason, question)]

    def _started(self, key: str, question: str, **subject: Any) -> dict[str, Any]:
        """The record so far: an unfinished chain's, or a new one without answers."""
        return self.records.get(key) or {
            "key": key, "question": question, "model": self.backend.model, "prompt_version": self.prompts.version_id,
            **subject, "outputs": [], "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0}

    async def caption(self, caption: str) -> None:
        key = caption_key(self.backend.model, self.prompts, caption)
        record = self.records.get(key)
        if finished(record):
            self.stats.cached_captions += 1
        else:
            record = await self._ask(self._started(key, "triplets", caption=caption),
                                     self.prompts.triplet_messages(caption),
                                     rules.triplets_schema(self.config.max_triplets),
                                     lambda text: rules.check_triplets(text, caption, self.config.max_triplets))
            self.stats.asked_captions += 1
        self.on_triplets_answered()
        triplets = accepted_triplets(record["outputs"], caption, self.config.max_triplets)
        await asyncio.gather(*(self.state(triplet) for triplet in triplets))

    async def state(self, triplet: rules.Triplet) -> None:
        key = triplet_key(self.backend.model, self.prompts, triplet)
        if finished(self.records.get(key)):
            return
        if key not in self._states_in_flight:  # captions sharing a triplet wait for one request
            self._states_in_flight[key] = asyncio.ensure_future(self._ask_state(key, triplet))
        await self._states_in_flight[key]

    async def _ask_state(self, key: str, triplet: rules.Triplet) -> None:
        await self._ask(self._started(key, "state", triplet=list(triplet)), self.prompts.state_messages(triplet),
                        rules.STATE_SCHEMA, rules.check_state)
        self.stats.asked_triplets += 1


def accepted_triplets(outputs: list[str], caption: str, max_triplets: int) -> list[rules.Triplet]:
    """The triplets of the first answer that had any valid one (what the validate stage keeps, too)."""
    for text in outputs:
        verdict = rules.check_triplets(text, caption, max_triplets)
        if verdict.triplets:
            return verdict.triplets
    return []


def distinct_captions(captions: Iterable[str], limit: int | None) -> tuple[list[str], int]:
    """Captions to ask for, one per distinct text (first spelling wins), and how many were left out by `limit`."""
    seen: dict[str, str] = {}
    for caption in captions:
        seen.setdefault(same_text(caption), caption)
    distinct = list(seen.values())
    if limit is None:
        return distinct, 0
    return distinct[:limit], max(0, len(distinct) - limit)


def make_backend(config: LLMConfig) -> ChatBackend:
    if config.backend == "openai":
        return OpenAIBackend(config.model, list(config.base_urls), api_key=os.environ.get(config.api_key_env),
                             concurrency=config.concurrency, timeout_s=config.timeout_s,
                             max_retries=config.max_retries, max_tokens=config.max_new_tokens,
                             temperature=config.temperature, structured_outputs=config.structured_outputs,
                             backoff_s=config.retry_backoff_s)
    from tasks.knowledge.embedded import TransformersBackend  # torch + transformers: only when used

    return TransformersBackend(config.model, batch_size=config.batch_size, max_new_tokens=config.max_new_tokens,
                               temperature=config.temperature, seed=config.seed)


def pending_work(captions: list[str], records: dict[str, dict[str, Any]], model: str, prompts: Prompts,
                 max_triplets: int) -> bool:
    """Whether anything must be asked (cheap: decides whether to start a server or load a model at all)."""
    for caption in captions:
        record = records.get(caption_key(model, prompts, caption))
        if not finished(record):
            return True
        for triplet in accepted_triplets(record["outputs"], caption, max_triplets):
            if not finished(records.get(triplet_key(model, prompts, triplet))):
                return True
    return False


async def _generate(generator: KnowledgeGenerator, captions: list[str], progress: bool | None) -> None:
    # progress None: a bar only on a terminal. It counts Q1 answers: a backend serves them before any Q2.
    bar = tqdm(total=len(captions), desc="knowledge (triplets)", unit="caption", mininterval=2,
               disable=None if progress is None else not progress)
    generator.on_triplets_answered = bar.update

    async def one(caption: str) -> None:
        try:
            await generator.caption(caption)
        except LLMTransportError as exc:
            generator.stats.failed.append(f"{caption!r}: {exc}")

    # Bounded in the backend (semaphore / batch queue); the tasks themselves are cheap coroutines.
    await asyncio.gather(*(one(caption) for caption in captions))
    bar.close()


def run(config: LLMConfig, captions: list[str], raw_dir: Path = paths.KNOWLEDGE_RAW,
        report_path: Path = paths.KNOWLEDGE_RUN_REPORT, server_log: Path = paths.LLM_SERVER_LOG,
        progress: bool | None = None, backend: ChatBackend | None = None) -> dict[str, Any]:
    """The whole stage without Prefect. Writes and returns the run report; raises LLMTransportError when some
    captions got no answer (a re-run asks only for those)."""
    prompts = Prompts.load(config)
    store = RawStore(raw_dir)
    records = store.load()
    asked, left_out = distinct_captions(captions, config.limit)
    stats = RunStats(captions=len(captions), distinct_captions=len(asked) + left_out, not_asked=left_out)
    started = time.monotonic()
    if pending_work(asked, records, config.model, prompts, config.max_triplets):
        backend = backend or make_backend(config)
        generator = KnowledgeGenerator(backend, prompts, store, config, records, stats)
        health = health_url(config.base_urls[0]) if config.base_urls else ""
        with managed_server(config.server.command if config.backend == "openai" else None, health,
                            config.server.startup_timeout_s, server_log):
            asyncio.run(_run_and_close(generator, asked, progress))
    else:
        stats.cached_captions = len(asked)
    stats.seconds = round(time.monotonic() - started, 3)
    report = stats.as_report(backend) | {"model": config.model, "prompt_version": prompts.version_id,
                                          "backend": config.backend}
    write_json(report_path, report)
    if stats.failed:
        raise LLMTransportError(f"{len(stats.failed)} of {len(asked)} captions got no answer "
                                f"(first: {stats.failed[0]}); re-run to ask only for those")
    return report


async def _run_and_close(generator: KnowledgeGenerator, captions: list[str], progress: bool | None) -> None:
    try:
        await _generate(generator, captions, progress)
    finally:
        generator.store.close()
        await generator.backend.aclose()
