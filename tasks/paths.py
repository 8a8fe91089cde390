"""Where each stage's artifacts live, relative to the repository root (dvc.yaml uses the same paths)."""
from pathlib import Path

CAPTIONS = Path("data/interim/captions.parquet")
TRUE_TRIPLETS = Path("data/interim/true_triplets.parquet")
DEMO_IMAGES = Path("data/interim/demo_images")
INGEST_REPORT = Path("reports/ingest.json")
KNOWLEDGE_RAW = Path("data/interim/knowledge_raw")
KNOWLEDGE_RUN_REPORT = Path("reports/knowledge_run.json")
LLM_SERVER_LOG = Path("logs/llm_server.log")
KNOWLEDGE = Path("data/processed/knowledge.parquet")
REJECTS = Path("data/processed/rejects.parquet")
KNOWLEDGE_REPORT = Path("reports/knowledge.json")
BASE_CLIP = Path("models/base_clip")
BASE_CLIP_REPORT = Path("reports/base_clip.json")
FEATURES = Path("data/features")
FEATURIZE_REPORT = Path("reports/featurize.json")
EVAL_METRICS = Path("metrics/eval.json")
RECALL_PLOT = Path("plots/recall.csv")
RANK_PLOT = Path("plots/rank_shift.csv")
RETRIEVAL_REPORT = Path("reports/retrieval.html")
EVAL_HISTORY = Path("reports/eval_history.jsonl")  # appended by the nightly-evaluation deployment
PREFIX_CACHE = Path("data/cache/prefixes")
