"""The demo's actors as glyphs: a pen that draws glyph primitives through a pose, and one drawing per noun.

Scenes are laid out in scene units (64 = image width) and drawn at SUPERSAMPLE x the requested size,
then downsampled, so thin strokes stay legible at 64 px. Glyphs are drawn facing right in a 32x32
glyph box whose bottom centre (16, 32) sits on the ground; a Pose mirrors, tilts and scales them.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import ImageDraw

SUPERSAMPLE = 2
INK = (45, 45, 45)
_HAIR = (80, 55, 40)
WHITE = (250, 250, 250)


@dataclass(frozen=True)
class Pose:
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


class Pen:
    """Draws glyph primitives, given in glyph units, through a pose in one colour with an ink outline."""

    def __init__(self, draw: ImageDraw.ImageDraw, unit: float, pose: Pose, colour: tuple[int, int, int]):
        self.draw, self.unit, self.pose, self.colour = draw, unit, pose, colour
        self.outline = max(1, round(unit * 0.8))

    def _px(self, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(x * self.unit, y * self.unit) for x, y in (self.pose.point(*p) for p in points)]

    def polygon(self, points: list[tuple[float, float]], fill: tuple[int, int, int] | None = None) -> None:
        self.draw.polygon(self._px(points), fill=fill or self.colour, outline=INK, width=self.outline)

    def ellipse(self, x0: float, y0: float, x1: float, y1: float, fill: tuple[int, int, int] | None = None) -> None:
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        angles = np.linspace(0, 2 * math.pi, 24, endpoint=False)
        self.polygon([(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles], fill)

    def limb(self, points: list[tuple[float, float]], width: float) -> None:
        px, width_px = self._px(points), width * self.pose.scale * self.unit
        self.draw.line(px, fill=INK, width=round(width_px + 2 * self.outline), joint="curve")
        self.draw.line(px, fill=self.colour, width=max(1, round(width_px)), joint="curve")


def _draw_man(pen: Pen) -> None:
    pen.limb([(14, 21), (13, 31.5)], 2.6)
    pen.limb([(18, 21), (19, 31.5)], 2.6)
    pen.polygon([(12, 11), (20, 11), (20, 22), (12, 22)])
    pen.ellipse(12, 2.5, 20, 10.5)
    pen.polygon([(19.5, 5), (23.5, 7), (19.5, 8.5)], INK)  # nose: the facing cue


def _draw_woman(pen: Pen) -> None:
    pen.limb([(14, 25), (14, 31.5)], 2.4)
    pen.limb([(18, 25), (18, 31.5)], 2.4)
    pen.polygon([(11.5, 4), (16, 2), (15, 7), (14, 14), (10.5, 14)], _HAIR)
    pen.polygon([(13.5, 11), (18.5, 11), (22.5, 26), (9.5, 26)])
    pen.ellipse(12, 2.5, 20, 10.5)
    pen.polygon([(19.5, 5), (23.5, 7), (19.5, 8.5)], INK)


def _draw_child(pen: Pen) -> None:
    pen.limb([(14.5, 25), (14.5, 31.5)], 2.4)
    pen.limb([(17.5, 25), (17.5, 31.5)], 2.4)
    pen.polygon([(12.5, 18), (19.5, 18), (19.5, 25.5), (12.5, 25.5)])
    pen.ellipse(11, 8, 21, 18)
    pen.polygon([(20.5, 11.5), (24, 13), (20.5, 14.5)], INK)


def _draw_dog(pen: Pen) -> None:
    for x in (9, 12, 19, 22):
        pen.limb([(x, 22), (x, 31.5)], 2.2)
    pen.limb([(8, 18), (4, 12)], 1.8)
    pen.ellipse(6, 15, 24, 24)
    pen.polygon([(27, 11), (31.5, 12), (31.5, 16), (27, 16.5)])  # snout: the facing cue
    pen.ellipse(21, 9, 29, 17)
    pen.polygon([(22.5, 9.5), (25.5, 9.5), (23.5, 16.5)], INK)  # floppy ear


def _draw_cat(pen: Pen) -> None:
    for x in (10, 13, 18, 21):
        pen.limb([(x, 23), (x, 31.5)], 1.8)
    pen.limb([(8, 21), (4, 19), (3, 12), (5, 9)], 1.8)
    pen.ellipse(7, 18, 23, 25.5)
    pen.polygon([(21, 14), (21.5, 8.5), (24.5, 12.5)])
    pen.polygon([(24.5, 12.3), (27.5, 8.5), (28, 14)])
    pen.ellipse(20.5, 12, 28.5, 20)
    pen.polygon([(28, 15), (30.5, 16.2), (28, 17.4)], INK)


def _draw_horse(pen: Pen) -> None:
    for x in (7, 10, 20, 23):
        pen.limb([(x, 19), (x, 31.5)], 2.4)
    pen.limb([(5, 14), (2, 18), (2, 25)], 2.2)
    pen.ellipse(4, 11, 26, 21)
    pen.polygon([(19.5, 14), (25, 13), (28, 5.5), (24, 3.5)])
    pen.polygon([(23.5, 2), (27, 1.5), (31.5, 5), (31, 8), (28, 7.5), (25.5, 6.5)])
    pen.polygon([(23.5, 3), (19.5, 12), (21.5, 12.5), (25, 4.5)], INK)  # mane


@dataclass(frozen=True)
class Glyph:
    draw: Callable[[Pen], None]
    top: float  # glyph-unit y of the highest point
    x_min: float
    x_max: float
    seat: tuple[float, float]  # where a rider sits: an animal's back, behind a person's head (piggyback)
    head: tuple[float, float]
    body: tuple[float, float]
    front: tuple[float, float]  # where pushing arms and held things attach


GLYPHS: dict[str, Glyph] = {
    "man": Glyph(_draw_man, 2.5, 11, 23.5, (10, 8), (16, 6.5), (16, 16), (20, 15)),
    "woman": Glyph(_draw_woman, 2, 9.5, 23.5, (10, 8), (16, 6.5), (16, 17), (19.5, 16)),
    "child": Glyph(_draw_child, 8, 11, 24, (10, 13), (16, 13), (16, 21), (19.5, 21)),
    "dog": Glyph(_draw_dog, 9, 3.5, 31.5, (14, 15), (25, 13), (15, 19.5), (31, 15)),
    "cat": Glyph(_draw_cat, 8.5, 2.5, 30.5, (14, 18), (24.5, 16), (15, 21.5), (29, 17)),
    "horse": Glyph(_draw_horse, 1.5, 1, 31.5, (14, 11), (27, 4.5), (15, 16), (31, 7)),
}

