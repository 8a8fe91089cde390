"""The language side of the demo: vocabulary, scenes of two actors and one action, twin groups, splits, captions.

Twins share their caption plan (templates, synonyms, mentioned attributes), so role swaps' captions are word
permutations of each other and action swaps' differ only in the verb phrase.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "val", "test")
CAPTIONS_PER_IMAGE = 5
GROUP_SIZE = 4  # base scene, role swap, action swap, role swap of the action swap
NOUNS = ("man", "woman", "child", "dog", "cat", "horse")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "blue": (35, 75, 215), "green": (30, 160, 55),
    "yellow": (240, 205, 20), "purple": (140, 50, 190), "orange": (245, 130, 15),
}
SIZE_SCALES = {"small": 0.56, "big": 0.8}  # glyph units (32 per glyph box) -> scene units (64 per image)
NO_CAST = (1.0, 1.0, 1.0)  # red, green, blue gains of the colour cast
MAX_CAST_GAIN = 2.0
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 256  # pixels per side


@dataclass(frozen=True)
class VerbForms:
    present: str  # "chases"
    gerund: str  # "chasing"
    participle: str  # passive use: "a cat is chased by a dog", "a cat is thrown a ball by a dog"


ACTIONS: dict[str, tuple[VerbForms, ...]] = {
    "chase": (VerbForms("chases", "chasing", "chased"), VerbForms("runs after", "running after", "run after")),
    "push": (VerbForms("pushes", "pushing", "pushed"), VerbForms("shoves", "shoving", "shoved")),
    "jump over": (VerbForms("jumps over", "jumping over", "jumped over"),
                  VerbForms("leaps over", "leaping over", "leapt over")),
    "hold": (VerbForms("holds", "holding", "held"), VerbForms("carries", "carrying", "carried")),
    "kick": (VerbForms("kicks", "kicking", "kicked"),),
    "ride": (VerbForms("rides", "riding", "ridden"), VerbForms("sits on", "sitting on", "sat on")),
    "throw to": (VerbForms("throws a ball to", "throwing a ball to", "thrown a ball"),
                 VerbForms("tosses a ball to", "tossing a ball to", "tossed a ball")),
    "look at": (VerbForms("looks at", "looking at", "looked at"), VerbForms("watches", "watching", "watched"),
                VerbForms("stares at", "staring at", "stared at")),
}

# What the drawing shows of each action (tasks/ingest/demo/drawing.py): the demo's true action states, the
# knowledge an ideal LLM would give (knowledge.source: truth).
ACTION_STATES: dict[str, str] = {
    "chase": "the {subject} runs behind the {object} with speed lines, both facing the same way",
    "push": "the {subject} presses a straight arm against the {object}, which leans away",
    "jump over": "the {subject} is in the air above the {object}, a dotted arc from take-off to landing",
    "hold": "the {subject} stands and carries a smaller {object} at arm's length",
    "kick": "the {subject} swings a leg into the {object} with a burst where they meet",
    "ride": "the {subject} sits astride on the back of the {object}",
    "throw to": "the {subject} throws a ball along a curved path to the {object}",
    "look at": "the {subject} looks at the {object} with a big eye and a sight line",
}
ATTRIBUTE_STATE = "the {subject} is drawn {object}"

# name -> (format, whether "the" may replace "a")
TEMPLATES: dict[str, tuple[str, bool]] = {
    "active": ("{agent} {present} {patient}", True),
    "progressive": ("{agent} is {gerund} {patient}", True),
    "passive": ("{patient} is {participle} by {agent}", True),
    "passive_progressive": ("{patient} is being {participle} by {agent}", True),
    "there_is": ("there is {agent} {gerund} {patient}", False),
    "photo": ("a photo of {agent} {gerund} {patient}", False),
    "place_end": ("{agent} {present} {patient} {place}", True),
    "place_front": ("{place}, {agent} is {gerund} {patient}", True),
}
PASSIVE_TEMPLATES = ("passive", "passive_progressive")
_PLACES = ("in the park", "on the grass", "outside", "in a field")
_ATTRIBUTE_MODES = ("none", "colour", "size", "both")
_ATTRIBUTE_MODE_WEIGHTS = (0.2, 0.35, 0.15, 0.3)


@dataclass(frozen=True)
class Actor:
    noun: str
    colour: str
    size: str


@dataclass(frozen=True)
class Scene:
    agent: Actor
    action: str
    patient: Actor


@dataclass(frozen=True)
class CaptionPlan:
    template: str
    synonym: int  # taken modulo the action's synonym count, so twins with another action can share it
    attributes: str
    determiner: str
    place: str


def twin_group_index(image_id: str) -> int:
    """Index of the twin group (base, role swap, action swaps) an image id belongs to."""
    return int(image_id.removeprefix("demo_")) // GROUP_SIZE


def allocate_group_splits(n_groups: int, fractions: dict[str, float], rng: np.random.Generator) -> list[str]:
    """Split label per group: counts proportional to the fractions (largest remainder), shuffled."""
    total = sum(fractions.values())
    exact = [fractions[name] / total * n_groups for name in SPLITS]
    counts = [math.floor(value) for value in exact]
    by_remainder = sorted(range(len(SPLITS)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: n_groups - sum(counts)]:
        counts[i] += 1
    # A split asked for must not come out empty just because of rounding.
    for i, name in enumerate(SPLITS):
        donor = max(range(len(SPLITS)), key=lambda j: counts[j])
        if counts[i] == 0 and fractions[name] > 0 and counts[donor] > 1:
            counts[donor] -= 1
            counts[i] += 1
    labels = [name for name, count in zip(SPLITS, counts) for _ in range(count)]
    return [labels[i] for i in rng.permutation(n_groups)]


def twin_scenes(rng: np.random.Generator) -> list[Scene]:
    """Base scene, its role swap, an action swap and its role swap, all with the same two actors."""
    first = Actor(str(rng.choice(NOUNS)), str(rng.choice(list(COLOURS))), str(rng.choice(list(SIZE_SCALES))))
    # Same noun only with another colour, so captions can always tell the two actors apart.
    noun = str(rng.choice(NOUNS)) if rng.random() < 0.2 else str(rng.choice([n for n in NOUNS if n != first.noun]))
    colours = [c for c in COLOURS if c != first.colour or noun != first.noun]
    second = Actor(noun, str(rng.choice(colours)), str(rng.choice(list(SIZE_SCALES))))
    action, other_action = (str(a) for a in rng.choice(list(ACTIONS), size=2, replace=False))
    return [Scene(first, action, second), Scene(second, action, first),
            Scene(first, other_action, second), Scene(second, other_action, first)]


def plan_captions(rng: np.random.Generator, templates: list[str], same_noun: bool) -> list[CaptionPlan]:
    plans = []
    for template in rng.choice(templates, size=CAPTIONS_PER_IMAGE, replace=False):
        # Two actors with one noun can only be told apart by colour.
        weights = np.array(_ATTRIBUTE_MODE_WEIGHTS) * [not same_noun, 1, not same_noun, 1]
        attributes = str(rng.choice(_ATTRIBUTE_MODES, p=weights / weights.sum()))
        determiner = "the" if TEMPLATES[str(template)][1] and rng.random() < 0.3 else "a"
        synonym = int(rng.integers(6))  # 6 is a multiple of every synonym count: each synonym equally likely
        plans.append(CaptionPlan(str(template), synonym, attributes, determiner,
                                 str(rng.choice(_PLACES))))
    return plans


def _noun_phrase(actor: Actor, determiner: str, attributes: str) -> str:
    words = [actor.size] if attributes in ("size", "both") else []
    words += [actor.colour] if attributes in ("colour", "both") else []
    words.append(actor.noun)
    if determiner == "a" and words[0][0] in "aeiou":
        determiner = "an"
    return " ".join([determiner, *words])


def caption(scene: Scene, plan: CaptionPlan) -> tuple[str, list[dict[str, str]]]:
    """The caption `plan` writes of `scene`, and the triplets it states."""
    synonyms = ACTIONS[scene.action]
    verb = synonyms[plan.synonym % len(synonyms)]
    template = TEMPLATES[plan.template][0]
    text = template.format(agent=_noun_phrase(scene.agent, plan.determiner, plan.attributes),
                           patient=_noun_phrase(scene.patient, plan.determiner, plan.attributes),
                           present=verb.present, gerund=verb.gerund, participle=verb.participle, place=plan.place)
    triplets = [{"subject": scene.agent.noun, "action": scene.action, "object": scene.patient.noun}]
    for actor in (scene.agent, scene.patient):
        if plan.attributes in ("size", "both"):
            triplets.append({"subject": actor.noun, "action": "is", "object": actor.size})
        if plan.attributes in ("colour", "both"):
            triplets.append({"subject": actor.noun, "action": "is", "object": actor.colour})
    unique = list({tuple(t.values()): t for t in triplets}.values())  # "a small dog ... a small dog" twice
    return text, unique


def true_state(triplet: dict[str, str]) -> str:
    """The state description of one of `caption`'s true triplets: what its picture shows."""
    template = ATTRIBUTE_STATE if triplet["action"] == "is" else ACTION_STATES[triplet["action"]]
    return template.format(subject=triplet["subject"], object=triplet["object"])
