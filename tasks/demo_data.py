"""The demo: a deterministic synthetic image-caption dataset that needs action understanding.

Each scene shows two actors (a noun drawn as a simple glyph, with a colour and a size) and one
action from a fixed vocabulary, drawn as a bold pictogram that shows who does what to whom.
Images come in groups of four twins sharing the same two actors: the base scene (A acts on B),
its role swap (B acts on A), an action swap (A does another action to B) and the action swap's
role swap. Twins share their caption plan (templates, synonyms, mentioned attributes), so role
swaps' captions are word permutations of each other and action swaps' differ only in the verb
phrase: a bag-of-words model cannot tell the twins apart. Passive captions ("a cat is chased by a
dog") are optional: they name the patient first, which a small LLM turns into swapped roles.
An optional colour cast (per-channel gains, e.g. warm indoor light) sets a data set's photos apart from the
backbone's corpus, which is drawn without one: the domain gap between CLIP's web images and a target data set
that prompt tuning closes in the paper. Everything is a pure function of the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

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

# name -> (format, whether "the" may replace "a")
_TEMPLATES: dict[str, tuple[str, bool]] = {
    "active": ("{agent} {present} {patient}", True),
    "progressive": ("{agent} is {gerund} {patient}", True),
    "passive": ("{patient} is {participle} by {agent}", True),
    "passive_progressive": ("{patient} is being {participle} by {agent}", True),
    "there_is": ("there is {agent} {gerund} {patient}", False),
    "photo": ("a photo of {agent} {gerund} {patient}", False),
    "place_end": ("{agent} {present} {patient} {place}", True),
    "place_front": ("{place}, {agent} is {gerund} {patient}", True),
}
_PASSIVE_TEMPLATES = ("passive", "passive_progressive")
_PLACES = ("in the park", "on the grass", "outside", "in a field")
_ATTRIBUTE_MODES = ("none", "colour", "size", "both")
_ATTRIBUTE_MODE_WEIGHTS = (0.2, 0.35, 0.15, 0.3)
_GROUP_STREAM, _SPLIT_STREAM, _IMAGE_STREAM = 0, 1, 2  # independent seeded random streams


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
class _CaptionPlan:
    template: str
    synonym: int  # taken modulo the action's synonym count, so twins with another action can share it
    attributes: str
    determiner: str
    place: str


def generate_demo(image_dir: Path, n_images: int, image_size: int, seed: int,
                  split_fractions: Mapping[str, float],
                  passive_voice: bool = True,
                  colour_cast: Sequence[float] = NO_CAST) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Draw the demo scenes into image_dir (PNG files, created if missing) and return
    (captions, true_triplets); passive_voice=False leaves out the passive caption templates;
    colour_cast multiplies the finished image's red, green and blue values."""
    fractions = _validated_fractions(split_fractions)
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < GROUP_SIZE:
        raise ValueError(f"n_images must be an integer >= {GROUP_SIZE}, got {n_images!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 32 <= image_size <= 256:
        raise ValueError(f"image_size must be an integer between 32 and 256, got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(passive_voice, bool):
        raise ValueError(f"passive_voice must be true or false, got {passive_voice!r}")
    gains = _validated_cast(colour_cast)

    templates = [name for name in _TEMPLATES if passive_voice or name not in _PASSIVE_TEMPLATES]
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    n_groups = math.ceil(n_images / GROUP_SIZE)
    group_splits = _allocate_group_splits(n_groups, fractions, np.random.default_rng([seed, _SPLIT_STREAM]))
    caption_rows: list[dict[str, str]] = []
    triplet_rows: list[dict[str, object]] = []
    for group in range(n_groups):
        # Per-group streams: the first groups do not change when n_images grows.
        rng = np.random.default_rng([seed, _GROUP_STREAM, group])
        members = min(GROUP_SIZE, n_images - group * GROUP_SIZE)
        scenes = _twin_scenes(rng)[:members]
        plans = _plan_captions(rng, templates, same_noun=scenes[0].agent.noun == scenes[0].patient.noun)
        for member, scene in enumerate(scenes):
            image_id = f"demo_{group * GROUP_SIZE + member:05d}"
            image_path = image_dir / f"{image_id}.png"
            image = _render(scene, image_size, np.random.default_rng([seed, _IMAGE_STREAM, group, member]), gains)
            image.save(image_path, format="PNG", optimize=False)
            for index, plan in enumerate(plans):
                caption, triplets = _caption(scene, plan)
                caption_id = f"{image_id}#{index}"
                caption_rows.append({"image_id": image_id, "image_path": str(image_path), "caption_id": caption_id,
                                     "caption": caption, "split": group_splits[group]})
                triplet_rows.append({"caption_id": caption_id, "triplets": triplets})
    return pd.DataFrame(caption_rows), pd.DataFrame(triplet_rows)


def twin_group_index(image_id: str) -> int:
    """Index of the twin group (base, role swap, action swaps) an image id belongs to."""
    return int(image_id.removeprefix("demo_")) // GROUP_SIZE


def _validated_cast(colour_cast: Sequence[float]) -> np.ndarray:
    gains = list(colour_cast) if isinstance(colour_cast, (list, tuple)) else None
    if (gains is None or len(gains) != 3 or any(isinstance(g, bool) or not isinstance(g, (int, float)) for g in gains)
            or not all(0 <= g <= MAX_CAST_GAIN for g in gains)):
        raise ValueError(f"colour_cast must be three gains (red, green, blue) between 0 and {MAX_CAST_GAIN}, "
                         f"got {colour_cast!r}")
    return np.array(gains, dtype=np.float64)


def _validated_fractions(split_fractions: Mapping[str, float]) -> dict[str, float]:
    if set(split_fractions) != set(SPLITS):
        raise ValueError(f"split fractions need exactly the keys {list(SPLITS)}, got {sorted(split_fractions)}")
    fractions = {name: float(split_fractions[name]) for name in SPLITS}
    if any(not math.isfinite(value) or value < 0 for value in fractions.values()):
        raise ValueError(f"split fractions must be finite and non-negative, got {fractions}")
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions} (sum {sum(fractions.values())})")
    return fractions


def _allocate_group_splits(n_groups: int, fractions: dict[str, float], rng: np.random.Generator) -> list[str]:
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


def _twin_scenes(rng: np.random.Generator) -> list[Scene]:
    """Base scene, its role swap, an action swap and its role swap, all with the same two actors."""
    first = Actor(str(rng.choice(NOUNS)), str(rng.choice(list(COLOURS))), str(rng.choice(list(SIZE_SCALES))))
    # Same noun only with another colour, so captions can always tell the two actors apart.
    noun = str(rng.choice(NOUNS)) if rng.random() < 0.2 else str(rng.choice([n for n in NOUNS if n != first.noun]))
    colours = [c for c in COLOURS if c != first.colour or noun != first.noun]
    second = Actor(noun, str(rng.choice(colours)), str(rng.choice(list(SIZE_SCALES))))
    action, other_action = (str(a) for a in rng.choice(list(ACTIONS), size=2, replace=False))
    return [Scene(first, action, second), Scene(second, action, first),
            Scene(first, other_action, second), Scene(second, other_action, first)]


def _plan_captions(rng: np.random.Generator, templates: list[str], same_noun: bool) -> list[_CaptionPlan]:
    plans = []
    for template in rng.choice(templates, size=CAPTIONS_PER_IMAGE, replace=False):
        # Two actors with one noun can only be told apart by colour.
        weights = np.array(_ATTRIBUTE_MODE_WEIGHTS) * [not same_noun, 1, not same_noun, 1]
        attributes = str(rng.choice(_ATTRIBUTE_MODES, p=weights / weights.sum()))
        determiner = "the" if _TEMPLATES[str(template)][1] and rng.random() < 0.3 else "a"
        synonym = int(rng.integers(6))  # 6 is a multiple of every synonym count: each synonym equally likely
        plans.append(_CaptionPlan(str(template), synonym, attributes, determiner,
                                  str(rng.choice(_PLACES))))
    return plans


def _noun_phrase(actor: Actor, determiner: str, attributes: str) -> str:
    words = [actor.size] if attributes in ("size", "both") else []
    words += [actor.colour] if attributes in ("colour", "both") else []
    words.append(actor.noun)
    if determiner == "a" and words[0][0] in "aeiou":
        determiner = "an"
    return " ".join([determiner, *words])


def _caption(scene: Scene, plan: _CaptionPlan) -> tuple[str, list[dict[str, str]]]:
    synonyms = ACTIONS[scene.action]
    verb = synonyms[plan.synonym % len(synonyms)]
    template = _TEMPLATES[plan.template][0]
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


# ---------------------------------------------------------------- drawing
# Scenes are laid out in scene units (64 = image width) and drawn at SUPERSAMPLE x the requested size,
# then downsampled, so thin strokes stay legible at 64 px. Glyphs are drawn facing right in a 32x32
# glyph box whose bottom centre (16, 32) sits on the ground; a _Pose mirrors, tilts and scales them.
SUPERSAMPLE = 2
_INK = (45, 45, 45)
_HAIR = (80, 55, 40)
_WHITE = (250, 250, 250)


@dataclass(frozen=True)
class _Pose:
    x: float  # scene position of the glyph's bottom centre
    ground: float
    scale: float
    facing: int  # +1 right, -1 left
    lean: float = 0.0  # radians; positive tilts the top forward

    def point(self, gx: float, gy: float) -> tuple[float, float]:
        lx, ly = gx - 16.0, gy - 32.0
        rx = lx * math.cos(self.lean) - ly * math.sin(self.lean)
        ry = lx * math.sin(self.lean) + ly * math.cos(self.lean)
        return self.x + rx * self.scale * self.facing, self.ground + ry * self.scale


class _Pen:
    """Draws glyph primitives, given in glyph units, through a pose in one colour with an ink outline."""

    def __init__(self, draw: ImageDraw.ImageDraw, unit: float, pose: _Pose, colour: tuple[int, int, int]):
        self.draw, self.unit, self.pose, self.colour = draw, unit, pose, colour
        self.outline = max(1, round(unit * 0.8))

    def _px(self, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(x * self.unit, y * self.unit) for x, y in (self.pose.point(*p) for p in points)]

    def polygon(self, points: list[tuple[float, float]], fill: tuple[int, int, int] | None = None) -> None:
        self.draw.polygon(self._px(points), fill=fill or self.colour, outline=_INK, width=self.outline)

    def ellipse(self, x0: float, y0: float, x1: float, y1: float, fill: tuple[int, int, int] | None = None) -> None:
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        angles = np.linspace(0, 2 * math.pi, 24, endpoint=False)
        self.polygon([(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles], fill)

    def limb(self, points: list[tuple[float, float]], width: float) -> None:
        px, width_px = self._px(points), width * self.pose.scale * self.unit
        self.draw.line(px, fill=_INK, width=round(width_px + 2 * self.outline), joint="curve")
        self.draw.line(px, fill=self.colour, width=max(1, round(width_px)), joint="curve")


def _draw_man(pen: _Pen) -> None:
    pen.limb([(14, 21), (13, 31.5)], 2.6)
    pen.limb([(18, 21), (19, 31.5)], 2.6)
    pen.polygon([(12, 11), (20, 11), (20, 22), (12, 22)])
    pen.ellipse(12, 2.5, 20, 10.5)
    pen.polygon([(19.5, 5), (23.5, 7), (19.5, 8.5)], _INK)  # nose: the facing cue


def _draw_woman(pen: _Pen) -> None:
    pen.limb([(14, 25), (14, 31.5)], 2.4)
    pen.limb([(18, 25), (18, 31.5)], 2.4)
    pen.polygon([(11.5, 4), (16, 2), (15, 7), (14, 14), (10.5, 14)], _HAIR)
    pen.polygon([(13.5, 11), (18.5, 11), (22.5, 26), (9.5, 26)])
    pen.ellipse(12, 2.5, 20, 10.5)
    pen.polygon([(19.5, 5), (23.5, 7), (19.5, 8.5)], _INK)


def _draw_child(pen: _Pen) -> None:
    pen.limb([(14.5, 25), (14.5, 31.5)], 2.4)
    pen.limb([(17.5, 25), (17.5, 31.5)], 2.4)
    pen.polygon([(12.5, 18), (19.5, 18), (19.5, 25.5), (12.5, 25.5)])
    pen.ellipse(11, 8, 21, 18)
    pen.polygon([(20.5, 11.5), (24, 13), (20.5, 14.5)], _INK)


def _draw_dog(pen: _Pen) -> None:
    for x in (9, 12, 19, 22):
        pen.limb([(x, 22), (x, 31.5)], 2.2)
    pen.limb([(8, 18), (4, 12)], 1.8)
    pen.ellipse(6, 15, 24, 24)
    pen.polygon([(27, 11), (31.5, 12), (31.5, 16), (27, 16.5)])  # snout: the facing cue
    pen.ellipse(21, 9, 29, 17)
    pen.polygon([(22.5, 9.5), (25.5, 9.5), (23.5, 16.5)], _INK)  # floppy ear


def _draw_cat(pen: _Pen) -> None:
    for x in (10, 13, 18, 21):
        pen.limb([(x, 23), (x, 31.5)], 1.8)
    pen.limb([(8, 21), (4, 19), (3, 12), (5, 9)], 1.8)
    pen.ellipse(7, 18, 23, 25.5)
    pen.polygon([(21, 14), (21.5, 8.5), (24.5, 12.5)])
    pen.polygon([(24.5, 12.3), (27.5, 8.5), (28, 14)])
    pen.ellipse(20.5, 12, 28.5, 20)
    pen.polygon([(28, 15), (30.5, 16.2), (28, 17.4)], _INK)


def _draw_horse(pen: _Pen) -> None:
    for x in (7, 10, 20, 23):
        pen.limb([(x, 19), (x, 31.5)], 2.4)
    pen.limb([(5, 14), (2, 18), (2, 25)], 2.2)
    pen.ellipse(4, 11, 26, 21)
    pen.polygon([(19.5, 14), (25, 13), (28, 5.5), (24, 3.5)])
    pen.polygon([(23.5, 2), (27, 1.5), (31.5, 5), (31, 8), (28, 7.5), (25.5, 6.5)])
    pen.polygon([(23.5, 3), (19.5, 12), (21.5, 12.5), (25, 4.5)], _INK)  # mane


@dataclass(frozen=True)
class _Glyph:
    draw: Callable[[_Pen], None]
    top: float  # glyph-unit y of the highest point
    x_min: float
    x_max: float
    seat: tuple[float, float]  # where a rider sits: an animal's back, behind a person's head (piggyback)
    head: tuple[float, float]
    body: tuple[float, float]
    front: tuple[float, float]  # where pushing arms and held things attach


_GLYPHS: dict[str, _Glyph] = {
    "man": _Glyph(_draw_man, 2.5, 11, 23.5, (10, 8), (16, 6.5), (16, 16), (20, 15)),
    "woman": _Glyph(_draw_woman, 2, 9.5, 23.5, (10, 8), (16, 6.5), (16, 17), (19.5, 16)),
    "child": _Glyph(_draw_child, 8, 11, 24, (10, 13), (16, 13), (16, 21), (19.5, 21)),
    "dog": _Glyph(_draw_dog, 9, 3.5, 31.5, (14, 15), (25, 13), (15, 19.5), (31, 15)),
    "cat": _Glyph(_draw_cat, 8.5, 2.5, 30.5, (14, 18), (24.5, 16), (15, 21.5), (29, 17)),
    "horse": _Glyph(_draw_horse, 1.5, 1, 31.5, (14, 11), (27, 4.5), (15, 16), (31, 7)),
}


class _Sketch:
    """One scene being drawn: actors by pose, plus the action marks, in scene units."""

    def __init__(self, draw: ImageDraw.ImageDraw, unit: float, ground: float, rng: np.random.Generator):
        self.draw, self.unit, self.ground, self.rng = draw, unit, ground, rng

    def actor(self, actor: Actor, pose: _Pose) -> None:
        _GLYPHS[actor.noun].draw(_Pen(self.draw, self.unit, pose, COLOURS[actor.colour]))

    @staticmethod
    def anchor(actor: Actor, pose: _Pose, name: str) -> tuple[float, float]:
        return pose.point(*getattr(_GLYPHS[actor.noun], name))

    @staticmethod
    def height(actor: Actor, scale: float) -> float:
        return (32 - _GLYPHS[actor.noun].top) * scale

    @staticmethod
    def extent(actor: Actor, facing: int, side: int) -> float:
        """Distance from the glyph's bottom centre to its edge on `side` (+1 right, -1 left)."""
        glyph = _GLYPHS[actor.noun]
        forward = (glyph.x_max - 16) * SIZE_SCALES[actor.size]
        backward = (16 - glyph.x_min) * SIZE_SCALES[actor.size]
        return forward if side == facing else backward

    def side_by_side(self, agent: Actor, patient: Actor, direction: int, agent_facing: int, patient_facing: int,
                     gap: float, patient_lean: float = 0.0) -> tuple[_Pose, _Pose]:
        """Poses with `gap` between the glyphs, the agent left of the patient when direction is +1, centred
        with jitter."""
        left, right = ((agent, agent_facing), (patient, patient_facing))[::direction]
        span = sum(self.extent(a, f, -1) + self.extent(a, f, 1) for a, f in (left, right)) + gap
        left_edge = float(np.clip((64 - span) / 2 + self.rng.uniform(-4, 4), 1, max(1.0, 63 - span)))
        left_x = left_edge + self.extent(*left, -1)
        right_x = left_x + self.extent(*left, 1) + gap + self.extent(*right, -1)
        agent_x, patient_x = (left_x, right_x)[::direction]
        return (_Pose(agent_x, self.ground, SIZE_SCALES[agent.size], agent_facing),
                _Pose(patient_x, self.ground, SIZE_SCALES[patient.size], patient_facing, patient_lean))

    def _px(self, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(x * self.unit, y * self.unit) for x, y in points]

    def bar(self, start: tuple[float, float], end: tuple[float, float], width: float,
            colour: tuple[int, int, int] = _INK) -> None:
        self.draw.line(self._px([start, end]), fill=colour, width=max(1, round(width * self.unit)))

    def dots(self, points: list[tuple[float, float]], radius: float = 0.8) -> None:
        r = radius * self.unit
        for x, y in self._px(points):
            self.draw.ellipse([x - r, y - r, x + r, y + r], fill=_INK)

    def arrowhead(self, tip: tuple[float, float], tail: tuple[float, float], length: float = 3.5) -> None:
        """A filled arrowhead at `tip`, pointing away from `tail`."""
        dx, dy = tip[0] - tail[0], tip[1] - tail[1]
        norm = math.hypot(dx, dy) or 1.0
        ux, uy = dx / norm, dy / norm
        base = (tip[0] - ux * length, tip[1] - uy * length)
        wing = (-uy * length * 0.55, ux * length * 0.55)
        self.draw.polygon(self._px([tip, (base[0] + wing[0], base[1] + wing[1]),
                                    (base[0] - wing[0], base[1] - wing[1])]), fill=_INK)

    def burst(self, centre: tuple[float, float], radius: float = 3.5) -> None:
        points = [(centre[0] + (radius if i % 2 == 0 else radius * 0.45) * math.cos(i * math.pi / 8),
                   centre[1] + (radius if i % 2 == 0 else radius * 0.45) * math.sin(i * math.pi / 8))
                  for i in range(16)]
        self.draw.polygon(self._px(points), fill=_WHITE, outline=_INK, width=max(1, round(self.unit * 0.8)))

    def speed_lines(self, actor: Actor, pose: _Pose) -> None:
        back_edge = pose.x + self.extent(actor, pose.facing, -pose.facing) * -pose.facing
        top = self.ground - self.height(actor, pose.scale)
        for fraction, length in ((0.3, 5.0), (0.55, 7.0), (0.8, 5.0)):
            y = top + fraction * (self.ground - top)
            start = back_edge - pose.facing * 1.0
            self.bar((start, y), (start - pose.facing * length, y), 0.9)


def _quadratic(p0: tuple[float, float], control: tuple[float, float], p2: tuple[float, float],
               ts: np.ndarray) -> list[tuple[float, float]]:
    return [((1 - t) ** 2 * p0[0] + 2 * (1 - t) * t * control[0] + t ** 2 * p2[0],
             (1 - t) ** 2 * p0[1] + 2 * (1 - t) * t * control[1] + t ** 2 * p2[1]) for t in ts]


def _draw_chase(sk: _Sketch, agent: Actor, patient: Actor, d: int) -> None:
    # Both run the same way; the chaser is behind, facing the other's back.
    agent_pose, patient_pose = sk.side_by_side(agent, patient, d, d, d, gap=7)
    for actor, pose in ((agent, agent_pose), (patient, patient_pose)):
        sk.speed_lines(actor, pose)
        sk.actor(actor, pose)


def _draw_push(sk: _Sketch, agent: Actor, patient: Actor, d: int) -> None:
    agent_pose, patient_pose = sk.side_by_side(agent, patient, d, d, d, gap=2.5, patient_lean=0.3)
    sk.actor(patient, patient_pose)
    sk.actor(agent, agent_pose)
    hands = sk.anchor(agent, agent_pose, "front")
    target_x = patient_pose.x - d * sk.extent(patient, d, -d) * 0.6
    sk.bar(hands, (target_x, hands[1]), 1.6)
    sk.bar((target_x, hands[1] - 2.5), (target_x, hands[1] + 2.5), 1.6)  # the palm


def _draw_kick(sk: _Sketch, agent: Actor, patient: Actor, d: int) -> None:
    agent_pose, patient_pose = sk.side_by_side(agent, patient, d, d, -d, gap=6, patient_lean=-0.25)
    sk.actor(patient, patient_pose)
    hip = sk.anchor(agent, agent_pose, "body")
    # The leg goes down and forward into the patient's lower body: unlike push's level arms.
    contact = (patient_pose.x - d * sk.extent(patient, -d, -d) * 0.5,
               sk.ground - 0.3 * sk.height(patient, patient_pose.scale))
    sk.bar(hip, contact, 3.4)
    sk.bar(hip, contact, 2.0, COLOURS[agent.colour])
    sk.actor(agent, agent_pose)
    sk.burst(contact, 4.5)


def _draw_throw(sk: _Sketch, agent: Actor, patient: Actor, d: int) -> None:
    agent_pose, patient_pose = sk.side_by_side(agent, patient, d, d, -d, gap=12)
    sk.actor(patient, patient_pose)
    sk.actor(agent, agent_pose)
    start, end = sk.anchor(agent, agent_pose, "front"), sk.anchor(patient, patient_pose, "head")
    peak = min(start[1], end[1]) - 12
    control = ((start[0] + end[0]) / 2, max(2.0, 2 * peak - (start[1] + end[1]) / 2))
    sk.dots(_quadratic(start, control, end, np.linspace(0.05, 0.6, 7)))
    ball = _quadratic(start, control, end, np.array([0.8]))[0]
    r = 1.9 * sk.unit
    sk.draw.ellipse([ball[0] * sk.unit - r, ball[1] * sk.unit - r, ball[0] * sk.unit + r, ball[1] * sk.unit + r],
                    fill=_WHITE, outline=_INK, width=max(1, round(sk.unit * 0.8)))


def _draw_look(sk: _Sketch, agent: Actor, patient: Actor, d: int) -> None:
    # The looked-at actor faces away, so only the agent's big eye and sight line point at someone.
    agent_pose, patient_pose = sk.side_by_side(agent, patient, d, d, d, gap=11)
    sk.actor(patient, patient_pose)
    sk.actor(agent, agent_pose)
    eye = sk.anchor(agent, agent_pose, "head")
    target = sk.anchor(patient, patient_pose, "body")
    line = np.linspace(0, 1, 12)[2:-1]
    sk.dots([(eye[0] + (target[0] - eye[0]) * t, eye[1] + (target[1] - eye[1]) * t) for t in line], 0.6)
    tip = (eye[0] + (target[0] - eye[0]) * 0.95, eye[1] + (target[1] - eye[1]) * 0.95)
    sk.arrowhead(tip, eye)
    ex, ey, r = eye[0] * sk.unit, eye[1] * sk.unit, 3.4 * sk.unit
    sk.draw.ellipse([ex - r, ey - r * 0.75, ex + r, ey + r * 0.75], fill=_WHITE, outline=_INK,
                    width=max(1, round(sk.unit * 0.8)))
    px, pr = ex + d * 1.4 * sk.unit, 1.5 * sk.unit  # pupil turned towards the patient
    sk.draw.ellipse([px - pr, ey - pr, px + pr, ey + pr], fill=_INK)


def _draw_jump_over(sk: _Sketch, agent: Actor, patient: Actor, d: int) -> None:
    patient_scale, agent_scale = SIZE_SCALES[patient.size], SIZE_SCALES[agent.size]
    patient_x = 32 + sk.rng.uniform(-5, 5)
    patient_pose = _Pose(patient_x, sk.ground, patient_scale, int(sk.rng.choice([-1, 1])))
    airborne = sk.ground - sk.height(patient, patient_scale) - 4
    agent_pose = _Pose(patient_x + sk.rng.uniform(-2, 2), airborne, agent_scale, d)
    half_span = max(sk.extent(patient, 1, 1), sk.extent(patient, 1, -1)) + 6
    takeoff, landing = (patient_x - d * half_span, sk.ground - 1), (patient_x + d * half_span, sk.ground - 1)
    control = (patient_x, 2 * (airborne + 1) - sk.ground)
    sk.dots(_quadratic(takeoff, control, landing, np.linspace(0, 0.92, 13)))
    before_tip = _quadratic(takeoff, control, landing, np.array([0.85]))[0]
    sk.arrowhead(landing, before_tip)
    sk.actor(patient, patient_pose)
    sk.actor(agent, agent_pose)


def _draw_ride(sk: _Sketch, agent: Actor, patient: Actor, d: int) -> None:
    patient_pose = _Pose(32 + sk.rng.uniform(-5, 5), sk.ground, SIZE_SCALES[patient.size], d)
    seat_x, seat_y = sk.anchor(patient, patient_pose, "seat")
    agent_scale = SIZE_SCALES[agent.size]
    agent_pose = _Pose(seat_x, seat_y + 0.15 * sk.height(agent, agent_scale), agent_scale, d)  # legs astride
    sk.actor(patient, patient_pose)
    sk.actor(agent, agent_pose)


def _draw_hold(sk: _Sketch, agent: Actor, patient: Actor, d: int) -> None:
    agent_pose = _Pose(32 - d * 6 + sk.rng.uniform(-4, 4), sk.ground, SIZE_SCALES[agent.size], d)
    held_scale = SIZE_SCALES[patient.size] * 0.6
    hand = sk.anchor(agent, agent_pose, "front")
    held_x = hand[0] + d * sk.extent(patient, d, -d) * 0.6
    patient_pose = _Pose(held_x, hand[1] + sk.height(patient, held_scale) / 2, held_scale, d)
    sk.actor(agent, agent_pose)
    sk.actor(patient, patient_pose)
    sk.bar(sk.anchor(agent, agent_pose, "body"), sk.anchor(patient, patient_pose, "body"), 1.4)  # the carrying arm


_ACTION_PICTOGRAMS: dict[str, Callable[[_Sketch, Actor, Actor, int], None]] = {
    "chase": _draw_chase, "push": _draw_push, "jump over": _draw_jump_over, "hold": _draw_hold,
    "kick": _draw_kick, "ride": _draw_ride, "throw to": _draw_throw, "look at": _draw_look,
}


def _render(scene: Scene, image_size: int, rng: np.random.Generator, gains: np.ndarray) -> Image.Image:
    canvas = image_size * SUPERSAMPLE
    unit = canvas / 64
    sky = tuple(int(v) for v in rng.integers(228, 252, size=3))
    soil = (int(rng.integers(208, 226)), int(rng.integers(204, 220)), int(rng.integers(184, 200)))
    ground = 55 + rng.uniform(-2, 2)
    image = Image.new("RGB", (canvas, canvas), sky)
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, ground * unit, canvas, canvas], fill=soil)
    direction = 1 if rng.random() < 0.5 else -1  # +1: the agent acts towards the right
    _ACTION_PICTOGRAMS[scene.action](_Sketch(draw, unit, ground, rng), scene.agent, scene.patient, direction)
    small = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
    noisy = np.asarray(small, dtype=np.int16) + rng.integers(-6, 7, size=(image_size, image_size, 3))
    cast = np.rint(np.clip(noisy, 0, 255) * gains)
    return Image.fromarray(np.clip(cast, 0, 255).astype(np.uint8))
