"""Stage `validate`: raw LLM answers -> knowledge.parquet (one row per caption), rejects.parquet, report.

The rules are tasks/knowledge/rules.py's, the same the knowledge stage used to decide on re-asks. Invariants: every
caption_id of captions.parquet is in knowledge.parquet exactly once (status `empty` when nothing valid came
back), and every discarded answer or item is in rejects.parquet with its reason.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tasks import paths, schemas
from tasks.config import InputDataError
from tasks.ingest.demo import true_state
from tasks.knowledge import rules
from tasks.knowledge.config import LLMConfig
from tasks.knowledge.prompts import Prompts, caption_key, same_text, triplet_key
from tasks.knowledge.store import RawStore

TRUTH = "truth"  # the model and prompt version of knowledge taken from the demo generator
NO_ANSWER = "no answer in the knowledge cache (beyond llm.limit, or the knowledge stage failed for it)"


@dataclass
class CaptionKnowledge:
    """The verdict for one caption text, shared by every caption_id with that text."""

    triplets: list[rules.Triplet] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    status: str = "empty"
    attempts: int = 0
    rejects: list[tuple[int, str, str]] = field(default_factory=list)  # (attempt, reason, raw output)
    tokens: tuple[int, int] = (0, 0)


def judge(caption: str, records: dict[str, dict[str, Any]], model: str, prompts: Prompts,
          max_triplets: int) -> CaptionKnowledge:
    result = CaptionKnowledge()
    record = records.get(caption_key(model, prompts, caption))
    if record is None:
        result.rejects.append((0, NO_ANSWER, ""))
        return result
    result.tokens = (record["prompt_tokens"], record["completion_tokens"])
    accepted: rules.Verdict | None = None
    for attempt, text in enumerate(record["outputs"], start=1):
        verdict = rules.check_triplets(text, caption, max_triplets)
        result.rejects += [(attempt, reason, raw) for reason, raw in verdict.rejects]
        result.attempts = attempt
        if verdict.triplets:
            accepted = verdict
            break
    if accepted is None:
        return result
    for triplet in accepted.triplets:
        state = _state(triplet, records, model, prompts, result)
        if state is not None:
            result.triplets.append(triplet)
            result.states.append(state)
    complete = not accepted.rejects and len(result.triplets) == len(accepted.triplets)
    result.status = "empty" if not result.triplets else "ok" if complete else "partial"
    return result


def _state(triplet: rules.Triplet, records: dict[str, dict[str, Any]], model: str, prompts: Prompts,
           result: CaptionKnowledge) -> str | None:
    """The first valid state answer for `triplet`; discarded answers go to the caption's rejects."""
    label = f"state of <{', '.join(triplet)}>"
    record = records.get(triplet_key(model, prompts, triplet))
    if record is None:
        result.rejects.append((0, f"{label}: {NO_ANSWER}", ""))
        return None
    for attempt, text in enumerate(record["outputs"], start=1):
        verdict = rules.check_state(text)
        if verdict.state is not None:
            return verdict.state
        result.rejects += [(attempt, f"{label}: {reason}", raw) for reason, raw in verdict.rejects]
    return None


def reason_kind(reason: str) -> str:
    """A reject reason without its particulars, for counting ("subject: 'x' is not in ..." -> "subject: is not in")."""
    general = re.sub(r"<[^>]*>|'[^']*'|\([^)]*\)|\d+", "", reason)
    return " ".join(general.split())


def build(captions: pd.DataFrame, records: dict[str, dict[str, Any]], config: LLMConfig, prompts: Prompts
          ) -> tuple[pd.DataFrame, pd.DataFrame, list[CaptionKnowledge]]:
    verdicts: dict[str, CaptionKnowledge] = {}
    rows, rejects, per_caption = [], [], []
    for caption_id, caption in zip(captions["caption_id"], captions["caption"], strict=True):
        text_key = same_text(caption)
        if text_key not in verdicts:
            verdicts[text_key] = judge(caption, records, config.model, prompts, config.max_triplets)
        verdict = verdicts[text_key]
        per_caption.append(verdict)
        rows.append({"caption_id": caption_id, "caption": caption,
                     "triplets": [dict(zip(("subject", "action", "object"), t, strict=True)) for t in verdict.triplets],
                     "states": verdict.states, "status": verdict.status, "model": config.model,
                     "prompt_version": prompts.version_id, "attempts": verdict.attempts})
        rejects += [{"caption_id": caption_id, "attempt": attempt, "reason": reason, "raw_output": raw}
                    for attempt, reason, raw in verdict.rejects]
    knowledge = pd.DataFrame(rows, columns=schemas.KNOWLEDGE.names)
    rejected = pd.DataFrame(rejects, columns=schemas.REJECTS.names)
    return knowledge, rejected, per_caption


def from_truth(captions: pd.DataFrame, truth: pd.DataFrame, max_triplets: int, truth_path: Path
               ) -> tuple[pd.DataFrame, pd.DataFrame, list[CaptionKnowledge]]:
    """Knowledge as an ideal LLM would give it: each caption's true triplets (the action first, at most
    max_triplets) with the states their pictures show. Only the demo generator knows them."""
    true_by_id = dict(zip(truth["caption_id"], truth["triplets"], strict=True))
    missing = [caption_id for caption_id in captions["caption_id"] if caption_id not in true_by_id]
    if missing:
        raise InputDataError(f"{truth_path}: no true triplets for {len(missing)} of {len(captions)} captions "
                             f"(first: {missing[0]}); knowledge.source: truth works on the demo data only "
                             "(data.source: demo)")
    rows, per_caption = [], []
    for caption_id, caption in zip(captions["caption_id"], captions["caption"], strict=True):
        triplets = [dict(t) for t in true_by_id[caption_id][:max_triplets]]
        rows.append({"caption_id": caption_id, "caption": caption, "triplets": triplets,
                     "states": [true_state(t) for t in triplets], "status": "ok", "model": TRUTH,
                     "prompt_version": TRUTH, "attempts": 0})
        per_caption.append(CaptionKnowledge(status="ok"))
    return (pd.DataFrame(rows, columns=schemas.KNOWLEDGE.names), pd.DataFrame(columns=schemas.REJECTS.names),
            per_caption)


def _head(slot: str) -> str:
    return rules.stem(slot.split()[-1])


def _verb(action: str) -> str:
    """The action's main verb, crudely lemmatised ("is chasing" -> "chas", "chased" -> "chas", "chase" -> "chas")."""
    words = [w for w in action.split() if w not in {"is", "are", "be", "being"}] or ["is"]
    word = words[0]
    for suffix in ("ing", "ed", "es", "s", "e"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word[:-1] if len(word) > 3 and word[-1] == word[-2] else word  # "running" -> "run"


def canonical(triplet: rules.Triplet | dict[str, str]) -> tuple[str, str, str]:
    subject, action, obj = triplet.values() if isinstance(triplet, dict) else triplet
    return _head(subject), _verb(action), _head(obj)


def triplet_scores(knowledge: pd.DataFrame, truth: pd.DataFrame) -> dict[str, Any]:
    """Precision and recall of the kept triplets against the demo's true triplets (matched on head nouns and verb)."""
    true_by_id = dict(zip(truth["caption_id"], truth["triplets"], strict=True))
    matched = predicted = expected = main_found = 0
    for caption_id, triplets in zip(knowledge["caption_id"], knowledge["triplets"], strict=True):
        truths = [canonical(t) for t in true_by_id.get(caption_id, [])]
        found = Counter(canonical(t) for t in triplets)
        matched += sum((found & Counter(truths)).values())
        predicted += sum(found.values())
        expected += len(truths)
        main_found += bool(truths) and truths[0] in found
    return {"captions": len(true_by_id), "precision": round(matched / predicted, 4) if predicted else None,
            "recall": round(matched / expected, 4) if expected else None,
            "main_action_recall": round(main_found / len(true_by_id), 4) if true_by_id else None}


def report(knowledge: pd.DataFrame, rejected: pd.DataFrame, per_caption: list[CaptionKnowledge],
           truth: pd.DataFrame | None, run_report: dict[str, Any] | None) -> dict[str, Any]:
    unique = {id(v): v for v in per_caption}.values()
    return {
        "model": knowledge["model"].iloc[0] if len(knowledge) else None,
        "prompt_version": knowledge["prompt_version"].iloc[0] if len(knowledge) else None,
        "captions": len(knowledge),
        "status": {s: int((knowledge["status"] == s).sum()) for s in ("ok", "partial", "empty")},
        "triplets_per_caption": {str(k): v for k, v in sorted(Counter(knowledge["triplets"].map(len)).items())},
        "attempts": {str(k): v for k, v in sorted(Counter(knowledge["attempts"]).items())},
        "rejects": len(rejected),
        "reject_reasons": dict(Counter(rejected["reason"].map(reason_kind)).most_common()),
        "tokens": {"prompt": sum(v.tokens[0] for v in unique), "completion": sum(v.tokens[1] for v in unique)},
        "generation": run_report,
        "demo_triplets": triplet_scores(knowledge, truth) if truth is not None and len(truth) else None,
    }


def run(config: LLMConfig, source: str = "llm", captions_path: Path = paths.CAPTIONS,
        raw_dir: Path = paths.KNOWLEDGE_RAW, truth_path: Path = paths.TRUE_TRIPLETS,
        run_report_path: Path = paths.KNOWLEDGE_RUN_REPORT, knowledge_path: Path = paths.KNOWLEDGE,
        rejects_path: Path = paths.REJECTS, report_path: Path = paths.KNOWLEDGE_REPORT) -> dict[str, Any]:
    """The whole stage without Prefect; `source` is knowledge.source (llm | truth)."""
    captions = schemas.read(captions_path, schemas.CAPTIONS)
    truth = schemas.read(truth_path, schemas.TRUE_TRIPLETS) if truth_path.exists() else None
    if source == TRUTH:
        knowledge, rejected, per_caption = from_truth(
            captions, truth if truth is not None else pd.DataFrame(columns=schemas.TRUE_TRIPLETS.names),
            config.max_triplets, truth_path)
        run_report = None
    else:
        knowledge, rejected, per_caption = build(captions, RawStore(raw_dir).load(), config, Prompts.load(config))
        run_report = json.loads(run_report_path.read_text()) if run_report_path.exists() else None
    if not knowledge["caption_id"].equals(captions["caption_id"]):  # the invariant the model stages rely on
        raise AssertionError("knowledge.parquet must hold every caption_id exactly once, in captions order")
    summary = report(knowledge, rejected, per_caption, truth, run_report)
    schemas.write(knowledge, schemas.KNOWLEDGE, knowledge_path)
    schemas.write(rejected, schemas.REJECTS, rejects_path)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary
