"""The embedded backend (SmolLM2-135M-Instruct, in-process, CPU) on the real Flickr30K test captions.

    python bench/knowledge_embedded.py [--captions tests/data/flickr30k_test_captions_sample.tsv] [--limit N]

Prints captions/s of the knowledge stage and the share of captions with valid knowledge after validation.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from tasks import schemas, validate  # noqa: E402
from tasks.config import from_params, load_params  # noqa: E402
from tasks.knowledge import generate  # noqa: E402
from tasks.knowledge.config import LLMConfig  # noqa: E402

SAMPLE = REPO_ROOT / "tests" / "data" / "flickr30k_test_captions_sample.tsv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=Path, default=SAMPLE, help="a TSV with image and caption columns")
    parser.add_argument("--limit", type=int, default=None, help="distinct captions to ask for")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    table = pd.read_csv(args.captions, sep="\t", quoting=3, dtype=str)
    captions = pd.DataFrame({"image_id": table["image"], "image_path": table["image"],
                             "caption_id": [str(i) for i in range(len(table))], "caption": table["caption"],
                             "split": "test"})
    # max_attempts and max_new_tokens: what this bench has always measured (the LLMConfig defaults of old).
    llm = load_params(REPO_ROOT / "params.yaml")["llm"] | {"examples": "flickr30k", "limit": args.limit,
                                                          "batch_size": args.batch_size, "max_attempts": 3,
                                                          "max_new_tokens": 96}
    config = from_params(LLMConfig, {"llm": llm})
    with tempfile.TemporaryDirectory(prefix="knowledge-embedded-") as tmp:
        root = Path(tmp)
        schemas.write(captions, schemas.CAPTIONS, root / "captions.parquet")
        run = generate.run(config, captions["caption"].tolist(), raw_dir=root / "raw", report_path=root / "run.json",
                           progress=True)
        summary = validate.run(config, captions_path=root / "captions.parquet", raw_dir=root / "raw",
                               truth_path=root / "none", run_report_path=root / "run.json",
                               knowledge_path=root / "knowledge.parquet", rejects_path=root / "rejects.parquet",
                               report_path=root / "knowledge.json")
    asked = run["asked_captions"]
    valid = summary["status"]["ok"] + summary["status"]["partial"]
    print(f"model {run['model']} ({run['prompt_version']}), batch {args.batch_size}")
    print(f"asked {asked} captions + {run['asked_triplets']} triplets in {run['seconds']:.0f} s: "
          f"{run['captions_per_s']:.2f} captions/s, {run['requests_per_s']:.2f} requests/s")
    print(f"valid knowledge: {valid} of {summary['captions']} captions ({valid / summary['captions']:.0%}); "
          f"status {summary['status']}")
    print(f"attempts {summary['attempts']}; top reject reasons:")
    for reason, count in list(summary["reject_reasons"].items())[:8]:
        print(f"  {count:5d}  {reason}")


if __name__ == "__main__":
    main()
