"""Versioned prompts with a data set's in-context examples, and the keys of the resume cache.

A key names a question (Q1 for a caption text, Q2 for a triplet), the model and the prompt version (which includes
a digest of the prompt and examples files): changing any of them asks again, under new keys.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks.config import InputDataError
from tasks.knowledge import rules
from tasks.knowledge.config import LLMConfig

PROMPTS_DIR = Path(__file__).resolve().parent.parent.parent / "prompts"


@dataclass(frozen=True)
class Prompts:
    """A versioned prompt file plus a data set's in-context examples; `version_id` names both and their content."""

    text: dict[str, str]
    examples: dict[str, Any]
    version_id: str
    max_triplets: int

    @classmethod
    def load(cls, config: LLMConfig, prompts_dir: Path = PROMPTS_DIR) -> Prompts:
        prompt_file = prompts_dir / f"{config.prompt_version}.yaml"
        examples_file = prompts_dir / "examples" / f"{config.examples}.yaml"
        for file, key in ((prompt_file, "prompt_version"), (examples_file, "examples")):
            if not file.is_file():
                raise InputDataError(f"params.yaml: llm.{key}: {file} not found")
        raw = prompt_file.read_bytes() + examples_file.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()[:8]
        return cls(yaml.safe_load(prompt_file.read_text()), yaml.safe_load(examples_file.read_text()),
                   f"{config.prompt_version}+{config.examples}-{digest}", config.max_triplets)

    def triplet_messages(self, caption: str) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.text["triplets_system"].format(max_triplets=self.max_triplets)}]
        for example in self.examples["triplets"]:
            messages += [{"role": "user", "content": self.text["triplets_user"].format(caption=example["caption"])},
                         {"role": "assistant", "content": json.dumps({"triplets": example["triplets"]})}]
        return messages + [{"role": "user", "content": self.text["triplets_user"].format(caption=caption)}]

    def state_messages(self, triplet: rules.Triplet) -> list[dict[str, str]]:
        def ask(t: list[str] | tuple[str, ...]) -> dict[str, str]:
            return {"role": "user", "content": self.text["states_user"].format(subject=t[0], action=t[1], object=t[2])}

        messages = [{"role": "system", "content": self.text["states_system"]}]
        for example in self.examples["states"]:
            answer = {"role": "assistant", "content": json.dumps({"state": example["state"]})}
            messages += [ask(example["triplet"]), answer]
        return messages + [ask(triplet)]

    def correction(self, reason: str, question: dict[str, str]) -> dict[str, str]:
        """The re-ask after an invalid answer; it repeats the question, which small models otherwise lose."""
        return {"role": "user", "content": self.text["correction"].format(reason=reason, question=question["content"])}


def same_text(caption: str) -> str:
    """Captions equal up to case and spacing are one text: asked once, judged once."""
    return " ".join(caption.lower().split())


def caption_key(model: str, prompts: Prompts, caption: str) -> str:
    return _key("triplets", model, prompts.version_id, same_text(caption))


def triplet_key(model: str, prompts: Prompts, triplet: rules.Triplet) -> str:
    return _key("state", model, prompts.version_id, *triplet)


def _key(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
