"""Settings of the knowledge and validate stages: the `llm` section of params.yaml (which holds their values)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from tasks.config import ParamError, checked

BACKENDS = ("transformers", "openai")
SOURCES = ("llm", "truth")


@dataclass(frozen=True)
class ServerConfig:
    """`llm.server`: a server the stage starts before asking and stops afterwards (backend openai)."""

    command: str | None  # e.g. .venv-vllm/bin/vllm serve lmsys/vicuna-7b-v1.5 ... (README); null: not ours
    startup_timeout_s: float


@dataclass(frozen=True)
class LLMConfig:
    SECTION: ClassVar[str] = "llm"

    backend: str = checked(choices=BACKENDS)
    model: str
    base_urls: tuple[str, ...]
    api_key_env: str  # the variable's name; the key itself never enters params or logs
    concurrency: int = checked(least=1)
    timeout_s: float
    max_retries: int
    retry_backoff_s: float  # first wait before a transport retry; doubles each time (with jitter)
    max_attempts: int = checked(least=1)
    max_triplets: int = checked(least=1)
    max_new_tokens: int = checked(least=1)
    temperature: float
    structured_outputs: bool
    prompt_version: str
    examples: str
    batch_size: int = checked(least=1)
    limit: int | None = checked(least=1)  # ask for the first N distinct captions only (the rest stay `empty`)
    seed: int
    server: ServerConfig

    def resolve(self, params: dict[str, Any]) -> LLMConfig:
        """Rules across fields (from_params calls it)."""
        if self.backend == "openai" and not self.base_urls:
            raise ParamError("base_urls", "at least one server URL is needed for backend openai")
        return self



@dataclass(frozen=True)
class KnowledgeConfig:
    """`knowledge`: where the validate stage takes the knowledge from."""

    SECTION: ClassVar[str] = "knowledge"

    source: str = checked(choices=SOURCES)  # llm: the LLM's answers | truth: the demo generator's (an upper bound)
