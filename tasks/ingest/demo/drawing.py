"""The demo's scenes as pictures: two actors posed by the action, its marks (arrows, sight lines, a ball), and
the finished image (downsampled, noisy, colour cast) in `render`."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from tasks.ingest.demo.glyphs import GLYPHS, INK, SUPERSAMPLE, WHITE, Pen, Pose
from tasks.ingest.demo.scenes import COLOURS, SIZE_SCALES, Actor, Scene


class _Sketch:
    """One scene being drawn: actors by pose, plus the action marks, in scene units."""

    def __init__(self, draw: ImageDraw.ImageDraw, unit: float, ground: float, rng: np.random.Generator):
        self.draw, self.unit, self.ground, self.rng = draw, unit, ground, rng

    def actor(self, actor: Actor, pose: Pose) -> None:
        GLYPHS[actor.noun].draw(Pen(self.draw, self.unit, pose, COLOURS[actor.colour]))

    @staticmethod
    def anchor(actor: Actor, pose: Pose, name: str) -> tuple[float, float]:
        return pose.point(*getattr(GLYPHS[actor.noun], name))

    @staticmethod
    def height(actor: Actor, scale: float) -> float:
        return (32 - GLYPHS[actor.noun].top) * scale

    @staticmethod
    def extent(actor: Actor, facing: int, side: int) -> float:
        """Distance from the glyph's bottom centre to its edge on `side` (+1 right, -1 left)."""
        glyph = GLYPHS[actor.noun]
        forward = (glyph.x_max - 16) * SIZE_SCALES[actor.size]
        backward = (16 - glyph.x_min) * SIZE_SCALES[actor.size]
        return forward if side == facing else backward

    def side_by_side(self, agent: Actor, patient: Actor, direction: int, agent_facing: int, patient_facing: int,
                     gap: float, patient_lean: float = 0.0) -> tuple[Pose, Pose]:
        """Poses with `gap` between the glyphs, the agent left of the patient when direction is +1, centred
        with jitter."""
        left, right = ((agent, agent_facing), (patient, patient_facing))[::direction]
        span = sum(self.extent(a, f, -1) + self.extent(a, f, 1) for a, f in (left, right)) + gap
        left_edge = float(np.clip((64 - span) / 2 + self.rng.uniform(-4, 4), 1, max(1.0, 63 - span)))
        left_x = left_edge + self.extent(*left, -1)
        right_x = left_x + self.extent(*left, 1) + gap + self.extent(*right, -1)
        agent_x, patient_x = (left_x, right_x)[::direction]
        return (Pose(agent_x, self.ground, SIZE_SCALES[agent.size], agent_facing),
                Pose(patient_x, self.ground, SIZE_SCALES[patient.size], patient_facing, patient_lean))

    def _px(self, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(x * self.unit, y * self.unit) for x, y in points]

    def bar(self, start: tuple[float, float], end: tuple[float, float], width: float,
            colour: tuple[int, int, int] = INK) -> None:
        self.draw.line(self._px([start, end]), fill=colour, width=max(1, round(width * self.unit)))

    def dots(self, points: list[tuple[float, float]], radius: float = 0.8) -> None:
        r = radius * self.unit
        for x, y in self._px(points):
            self.draw.ellipse([x - r, y - r, x + r, y + r], fill=INK)

    def arrowhead(self, tip: tuple[float, float], tail: tuple[float, float], length: float = 3.5) -> None:
        """A filled arrowhead at `tip`, pointing away from `tail`."""
        dx, dy = tip[0] - tail[0], tip[1] - tail[1]
        norm = math.hypot(dx, dy) or 1.0
        ux, uy = dx / norm, dy / norm
        base = (tip[0] - ux * length, tip[1] - uy * length)
        wing = (-uy * length * 0.55, ux * length * 0.55)
        self.draw.polygon(self._px([tip, (base[0] + wing[0], base[1] + wing[1]),
                                    (base[0] - wing[0], base[1] - wing[1])]), fill=INK)

    def burst(self, centre: tuple[float, float], radius: float = 3.5) -> None:
        points = [(centre[0] + (radius if i % 2 == 0 else radius * 0.45) * math.cos(i * math.pi / 8),
                   centre[1] + (radius if i % 2 == 0 else radius * 0.45) * math.sin(i * math.pi / 8))
                  for i in range(16)]
        self.draw.polygon(self._px(points), fill=WHITE, outline=INK, width=max(1, round(self.unit * 0.8)))

    def speed_lines(self, actor: Actor, pose: Pose) -> None:
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
                    fill=WHITE, outline=INK, width=max(1, round(sk.unit * 0.8)))


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
    sk.draw.ellipse([ex - r, ey - r * 0.75, ex + r, ey + r * 0.75], fill=WHITE, outline=INK,
                    width=max(1, round(sk.unit * 0.8)))
    px, pr = ex + d * 1.4 * sk.unit, 1.5 * sk.unit  # pupil turned towards the patient
    sk.draw.ellipse([px - pr, ey - pr, px + pr, ey + pr], fill=INK)


def _draw_jump_over(sk: _Sketch, agent: Actor, patient: Actor, d: int) -> None:
    patient_scale, agent_scale = SIZE_SCALES[patient.size], SIZE_SCALES[agent.size]
    patient_x = 32 + sk.rng.uniform(-5, 5)
    patient_pose = Pose(patient_x, sk.ground, patient_scale, int(sk.rng.choice([-1, 1])))
    airborne = sk.ground - sk.height(patient, patient_scale) - 4
    agent_pose = Pose(patient_x + sk.rng.uniform(-2, 2), airborne, agent_scale, d)
    half_span = max(sk.extent(patient, 1, 1), sk.extent(patient, 1, -1)) + 6
    takeoff, landing = (patient_x - d * half_span, sk.ground - 1), (patient_x + d * half_span, sk.ground - 1)
    control = (patient_x, 2 * (airborne + 1) - sk.ground)
    sk.dots(_quadratic(takeoff, control, landing, np.linspace(0, 0.92, 13)))
    before_tip = _quadratic(takeoff, control, landing, np.array([0.85]))[0]
    sk.arrowhead(landing, before_tip)
    sk.actor(patient, patient_pose)
    sk.actor(agent, agent_pose)


def _draw_ride(sk: _Sketch, agent: Actor, patient: Actor, d: int) -> None:
    patient_pose = Pose(32 + sk.rng.uniform(-5, 5), sk.ground, SIZE_SCALES[patient.size], d)
    seat_x, seat_y = sk.anchor(patient, patient_pose, "seat")
    agent_scale = SIZE_SCALES[agent.size]
    agent_pose = Pose(seat_x, seat_y + 0.15 * sk.height(agent, agent_scale), agent_scale, d)  # legs astride
    sk.actor(patient, patient_pose)
    sk.actor(agent, agent_pose)


def _draw_hold(sk: _Sketch, agent: Actor, patient: Actor, d: int) -> None:
    agent_pose = Pose(32 - d * 6 + sk.rng.uniform(-4, 4), sk.ground, SIZE_SCALES[agent.size], d)
    held_scale = SIZE_SCALES[patient.size] * 0.6
    hand = sk.anchor(agent, agent_pose, "front")
    held_x = hand[0] + d * sk.extent(patient, d, -d) * 0.6
    patient_pose = Pose(held_x, hand[1] + sk.height(patient, held_scale) / 2, held_scale, d)
    sk.actor(agent, agent_pose)
    sk.actor(patient, patient_pose)
    sk.bar(sk.anchor(agent, agent_pose, "body"), sk.anchor(patient, patient_pose, "body"), 1.4)  # the carrying arm


_ACTION_PICTOGRAMS: dict[str, Callable[[_Sketch, Actor, Actor, int], None]] = {
    "chase": _draw_chase, "push": _draw_push, "jump over": _draw_jump_over, "hold": _draw_hold,
    "kick": _draw_kick, "ride": _draw_ride, "throw to": _draw_throw, "look at": _draw_look,
}


def render(scene: Scene, image_size: int, rng: np.random.Generator, gains: np.ndarray) -> Image.Image:
    """The scene on a sky and soil of its own, at image_size px with pixel noise, each channel times its gain."""
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
