"""The format check of LLM answers (docs/knowledge.md), shared by the knowledge stage (to decide on a re-ask) and the
validate stage (to build knowledge.parquet and rejects.parquet): one set of rules, applied the same way.

A Q1 answer yields triplets `(subject, action, object)`; a Q2 answer yields one state description. Every
item that is discarded comes back with a reason.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

Triplet = tuple[str, str, str]

SLOT_WORDS = (1, 6)
STATE_WORDS = (3, 60)
PLACEHOLDERS = {"subject", "action", "object", "verb", "n/a", "na", "none", "null", "unknown", "something",
                "someone", "...", "xxx", "state", "description", "caption", "triplet"}
REFUSAL = re.compile(r"\b(i'?m sorry|i am sorry|i apologi[sz]e|i can(?:not|'t)|as an ai\b|i am unable|i'm unable|"
                     r"i won'?t|cannot assist|can't assist)", re.IGNORECASE)
JSON_FRAGMENT = re.compile(r"[{}\[\]\"]|\\n|\b(?:triplets|subject|object)\s*:")
ANGLE_TRIPLET = re.compile(r"[<(]\s*([^<>()\n,]+),\s*([^<>()\n,]+),\s*([^<>()\n,]+?)\s*[>)]")
WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")
# Words that may stand in a slot without being in the caption ("the dog" for "a dog").
FUNCTION_WORDS = {"a", "an", "the", "his", "her", "their", "its", "of", "some", "one"}
IRREGULAR_PLURALS = {"men": "man", "women": "woman", "children": "child", "people": "person", "feet": "foot",
                     "teeth": "tooth", "mice": "mouse", "geese": "goose", "persons": "person"}


def triplets_schema(max_triplets: int) -> dict:
    """JSON schema of a Q1 answer, for servers with structured outputs."""
    slot = {"type": "string", "minLength": 1, "maxLength": 60}
    return {"title": "action_triplets", "type": "object", "additionalProperties": False, "required": ["triplets"],
            "properties": {"triplets": {"type": "array", "maxItems": max_triplets,
                                        "items": {"type": "array", "minItems": 3, "maxItems": 3, "items": slot}}}}


STATE_SCHEMA = {"title": "action_state", "type": "object", "additionalProperties": False, "required": ["state"],
                "properties": {"state": {"type": "string", "minLength": 1, "maxLength": 400}}}


@dataclass
class Verdict:
    """What one answer yielded: the accepted values, and (reason, raw item) for everything discarded."""

    triplets: list[Triplet] = field(default_factory=list)
    state: str | None = None
    rejects: list[tuple[str, str]] = field(default_factory=list)

    @property
    def reason(self) -> str:
        """One line for the correction message of a re-ask."""
        return "; ".join(dict.fromkeys(reason for reason, _ in self.rejects)) or "no answer"


def normalise(text: str) -> str:
    """Lower case, single spaces, no surrounding punctuation or quotes."""
    return " ".join(text.lower().split()).strip(" .,;:!?'\"`*-")


def stem(word: str) -> str:
    """Plural -> singular, crude but symmetric: caption and slot words go through the same function."""
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def caption_words(caption: str) -> set[str]:
    return {stem(word) for word in WORD.findall(caption.lower())}


def extract_json(text: str) -> object | None:
    """The first JSON object or array in `text`, tolerating chatter around it."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[{\[]", text):
        try:
            return decoder.raw_decode(text, match.start())[0]
        except ValueError:
            continue
    return None


def _unparsed_reason(text: str, parsed: object) -> str:
    """Why an answer without the expected JSON is rejected."""
    if parsed is not None:
        return "JSON without the expected fields"
    return "refusal" if REFUSAL.search(text) else "not JSON"


def _slot_problem(raw: object, grounding: set[str] | None) -> str | None:
    if not isinstance(raw, str):
        return f"field is {type(raw).__name__}, not text"
    if "\n" in raw.strip():
        return "newline inside a field"
    value = normalise(raw)
    words = value.split()
    if not SLOT_WORDS[0] <= len(words) <= SLOT_WORDS[1]:
        return f"field has {len(words)} words (allowed {SLOT_WORDS[0]}-{SLOT_WORDS[1]})"
    if value in PLACEHOLDERS:
        return f"placeholder '{value}'"
    if JSON_FRAGMENT.search(value):
        return "JSON fragment inside a field"
    if REFUSAL.search(value):
        return "refusal inside a field"
    if grounding is not None:
        invented = [w for w in WORD.findall(value) if w not in FUNCTION_WORDS and stem(w) not in grounding]
        if invented:
            return f"'{value}' is not in the caption (invented: {', '.join(invented)})"
    return None


def _items(parsed: object) -> list | None:
    if isinstance(parsed, dict):
        parsed = parsed.get("triplets")
    return parsed if isinstance(parsed, list) else None


def _as_slots(item: object) -> list | None:
    if isinstance(item, dict):
        return [item.get("subject"), item.get("action"), item.get("object")] if len(item) == 3 else None
    return item if isinstance(item, list) else None


def check_triplets(text: str, caption: str, max_triplets: int) -> Verdict:
    """Q1: the valid, grounded, distinct triplets of an answer (JSON, or the paper's `<s, a, o>` lines)."""
    verdict = Verdict()
    if not text.strip():
        verdict.rejects.append(("empty answer", text))
        return verdict
    parsed = extract_json(text)
    items = _items(parsed)
    if items is None:
        angle = ANGLE_TRIPLET.findall(text)
        if not angle:
            verdict.rejects.append((_unparsed_reason(text, parsed), text))
            return verdict
        items = [list(found) for found in angle]
    grounding = caption_words(caption)
    for item in items:
        raw_item = json.dumps(item, ensure_ascii=False)
        slots = _as_slots(item)
        if slots is None or len(slots) != 3:
            arity = len(slots) if slots is not None else len(item) if isinstance(item, dict) else 1
            verdict.rejects.append((f"wrong arity ({arity} fields, expected 3)", raw_item))
            continue
        problems = [_slot_problem(slot, grounding if role != "action" else None)
                    for role, slot in zip(("subject", "action", "object"), slots, strict=True)]
        named = [f"{role}: {p}" for role, p in zip(("subject", "action", "object"), problems, strict=True) if p]
        if named:
            verdict.rejects.append(("; ".join(named), raw_item))
            continue
        triplet = tuple(normalise(slot) for slot in slots)
        if triplet in verdict.triplets:
            verdict.rejects.append(("duplicate triplet", raw_item))
        elif len(verdict.triplets) >= max_triplets:
            verdict.rejects.append((f"more than llm.max_triplets={max_triplets}", raw_item))
        else:
            verdict.triplets.append(triplet)
    if not items:
        verdict.rejects.append(("no triplets in answer", text))
    return verdict


def check_state(text: str) -> Verdict:
    """Q2: one state description, as JSON `{"state": ...}`; bare text is refused (it may be anything)."""
    verdict = Verdict()
    if not text.strip():
        verdict.rejects.append(("empty answer", text))
        return verdict
    parsed = extract_json(text)
    raw = parsed.get("state") if isinstance(parsed, dict) else None
    if not isinstance(raw, str):
        verdict.rejects.append((_unparsed_reason(text, parsed), text))
        return verdict
    if "\n" in raw.strip():
        verdict.rejects.append(("newline inside the state", text))
        return verdict
    state = normalise(raw)
    words = len(state.split())
    if not STATE_WORDS[0] <= words <= STATE_WORDS[1]:
        verdict.rejects.append((f"state has {words} words (allowed {STATE_WORDS[0]}-{STATE_WORDS[1]})", text))
    elif state in PLACEHOLDERS or JSON_FRAGMENT.search(state) or REFUSAL.search(state):
        verdict.rejects.append(("placeholder, JSON fragment or refusal inside the state", text))
    else:
        verdict.state = state
    return verdict
