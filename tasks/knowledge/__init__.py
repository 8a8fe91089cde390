"""Stage `knowledge`: an LLM reads every distinct caption and answers with action triplets <subject, action,
object> (Q1) and, per triplet, a description of the state it shows (Q2); the validate stage (tasks/validate.py)
turns the raw answers into knowledge.parquet.

Modules:
- config: LLMConfig and ServerConfig, the `llm` section of params.yaml.
- prompts: the versioned prompt files with their in-context examples, and the cache keys of a question.
- store: RawStore, the resume cache (append-only JSONL shards of every answered attempt).
- generate: the stage itself (`run`): asks what the cache lacks, re-asking while an answer yields nothing valid.
- rules: the format check of answers, shared with the validate stage.
- openai_client: the client of OpenAI-compatible servers (vLLM) and the managed server launch.
- embedded: the in-process transformers backend (SmolLM2-135M-Instruct by default).
"""
