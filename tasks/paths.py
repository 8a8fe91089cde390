"""Where each stage's artifacts live, relative to the repository root (dvc.yaml uses the same paths)."""
from pathlib import Path

CAPTIONS = Path("data/interim/captions.parquet")
TRUE_TRIPLETS = Path("data/interim/true_triplets.parquet")
DEMO_IMAGES = Path("data/interim/demo_images")
INGEST_REPORT = Path("reports/ingest.json")
