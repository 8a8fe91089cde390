"""The evaluation history the nightly deployment keeps: one JSON line per run of metrics/eval.json."""
from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path
from typing import Any

from tasks import paths, pipeline


def _metrics_at(project_dir: Path, revision: str) -> str:
    """metrics/eval.json as committed in `revision` (an experiment's commit: DVC keeps its metrics in git)."""
    return subprocess.run(["git", "show", f"{revision}:{paths.EVAL_METRICS}"], cwd=project_dir, capture_output=True,
                          text=True, check=True).stdout


def record(project_dir: Path, run: dict[str, Any]) -> list[dict[str, Any]]:
    """Append metrics/eval.json (with time, git revision and `run`) to the history; return it all. The metrics
    are the workspace's, or those of the experiment `run` made (`run["revisions"]`)."""
    revisions = run.get("revisions") or []
    text = _metrics_at(project_dir, revisions[0]) if revisions else \
        (project_dir / paths.EVAL_METRICS).read_text(encoding="utf-8")
    metrics = json.loads(text)
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "git_revision": revisions[0] if revisions else pipeline.git_revision(project_dir), **run, "split": metrics["split"],
             "zero_shot": metrics["zero_shot"], "reranked": metrics["reranked"]}
    history_file = project_dir / paths.EVAL_HISTORY
    history_file.parent.mkdir(parents=True, exist_ok=True)
    with open(history_file, "a", encoding="utf-8") as history:
        history.write(json.dumps(entry) + "\n")
    return [json.loads(line) for line in history_file.read_text(encoding="utf-8").splitlines() if line.strip()]


def as_rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat rows (newest first) for a table: time, revision, and re-ranked vs zero-shot Rsum and R@1."""
    return [{"time": entry["time"], "git_revision": (entry["git_revision"] or "")[:10], "split": entry["split"],
             "rsum_zero_shot": entry["zero_shot"]["rsum"], "rsum_reranked": entry["reranked"]["rsum"],
             "i2t_r1": entry["reranked"]["i2t_r1"], "t2i_r1": entry["reranked"]["t2i_r1"]}
            for entry in reversed(history)]
