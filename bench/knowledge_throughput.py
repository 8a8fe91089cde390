"""Knowledge-stage client throughput against a local OpenAI-compatible server with fixed latency and capacity.

    python bench/knowledge_throughput.py [--captions 6000] [--latency 0.1] [--concurrency 64] [--cached 10000]

Prints, in one run: captions/s of the stage at `--concurrency` vs the ideal (capacity / latency) and vs a
sequential loop (concurrency 1), and the time of a fully cached re-run over `--cached` captions.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from tasks.config import from_params, load_params  # noqa: E402
from tasks.knowledge import generate  # noqa: E402
from tasks.knowledge.config import LLMConfig  # noqa: E402
from tests.llm_server import ScriptedServer  # noqa: E402

ANSWER = {"content": json.dumps({"triplets": [["man", "rides", "bike"]]})}
STATE = {"content": json.dumps({"state": "sitting upright on the saddle and pushing the pedals with both feet"})}


def captions(count: int, tag: str) -> list[str]:
    return [f"a man {tag} number {i} rides a bike" for i in range(count)]


def llm_config(**settings) -> LLMConfig:
    """params.yaml's llm section with `settings` replacing some."""
    return from_params(LLMConfig, {"llm": load_params(REPO_ROOT / "params.yaml")["llm"] | settings})


def timed_run(config: LLMConfig, texts: list[str], raw_dir: Path) -> float:
    started = time.perf_counter()
    report = generate.run(config, texts, raw_dir=raw_dir, report_path=raw_dir / "run.json", progress=False)
    seconds = time.perf_counter() - started
    assert report["asked_captions"] + report["cached_captions"] == len(texts), report
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=6000)
    parser.add_argument("--sequential-captions", type=int, default=40)
    parser.add_argument("--latency", type=float, default=0.1, help="server seconds per request")
    parser.add_argument("--concurrency", type=int, default=64, help="client bound = server capacity")
    parser.add_argument("--cached", type=int, default=10_000)
    args = parser.parse_args()
    script = {"answers": [{"match": "Triplet:", "responses": [STATE]}], "default": ANSWER}
    with tempfile.TemporaryDirectory(prefix="knowledge-bench-") as tmp:
        root = Path(tmp)
        with ScriptedServer(script, root / "server", latency=args.latency, max_concurrency=args.concurrency) as server:
            def config(concurrency: int) -> LLMConfig:
                return llm_config(backend="openai", model="bench", base_urls=[server.base_url],
                                  concurrency=concurrency, timeout_s=30, examples="flickr30k")

            # Each caption is one Q1 request; all share one triplet, so Q2 adds a single request.
            sequential_s = timed_run(config(1), captions(args.sequential_captions, "seq"), root / "seq")
            concurrent_s = timed_run(config(args.concurrency), captions(args.captions, "conc"), root / "conc")
            peak = server.stats()["peak_concurrency"]
        ideal = args.concurrency / args.latency
        sequential = args.sequential_captions / sequential_s
        concurrent = args.captions / concurrent_s
        print(f"server: latency {args.latency * 1000:.0f} ms, capacity {args.concurrency}; peak in flight {peak}")
        print(f"ideal (capacity / latency)       {ideal:8.1f} captions/s")
        print(f"sequential loop (concurrency 1)  {sequential:8.1f} captions/s  ({args.sequential_captions} captions)")
        print(f"stage at concurrency {args.concurrency:<3}         {concurrent:8.1f} captions/s  ({args.captions} captions)")
        print(f"stage / ideal: {concurrent / ideal:.1%}   stage / sequential: {concurrent / sequential:.1f}x")

        with ScriptedServer(script, root / "server2", latency=0, max_concurrency=args.concurrency) as server:
            cached = captions(args.cached, "cached")
            fill = llm_config(backend="openai", model="bench", concurrency=64, base_urls=[server.base_url],
                              examples="flickr30k")
            timed_run(fill, cached, root / "cached")
        rerun_s = timed_run(fill, cached, root / "cached")  # the server is gone: every answer must come from cache
        print(f"fully cached re-run of {args.cached} captions: {rerun_s:.2f} s")


if __name__ == "__main__":
    main()
