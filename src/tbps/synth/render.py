"""Drawing one pedestrian crop with PIL, in resolution-independent body coordinates.

Body coordinates: ``y`` runs from 0 (top of the head) to 1 (soles), ``x`` is measured in the same
unit (person height) from the body's vertical axis. Front and back views put ``+x`` on the image
right; side views are drawn facing ``+x`` and mirrored when the person faces left. Everything is
drawn at twice the output size and box-downsampled, which gives cheap anti-aliasing.

The module also decides, for each image, what is *visible* (``image_visibility``): the caption
grammar only talks about what this function says can be seen, so the two must stay in sync with
the drawing code below.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .attributes import ATTRIBUTE_SLOTS, COLOUR_RGB, COLOURS, HAIR_RGB, SKIN_RGB, sample_identity
from .presets import Difficulty

RGB = tuple[int, int, int]
_SS = 2  # supersampling factor

VIEWS = ("front", "back", "side")


# -------------------------------------------------------------------------------------- helpers
def _clip(c: Any) -> RGB:
    return tuple(int(min(255, max(0, round(v)))) for v in c)  # type: ignore[return-value]


def _mix(c: RGB, k: float) -> RGB:
    """Darken (k<1) or lighten (k>1) a colour, the cheap way to fake shading."""
    if k <= 1.0:
        return _clip(v * k for v in c)
    t = k - 1.0
    return _clip(v + (255 - v) * t for v in c)


def _colour(name: str | None, shade: list[int] | None, table: dict[str, RGB] = COLOUR_RGB) -> RGB:
    base = table[name or "grey"]
    s = shade or [0, 0, 0]
    return _clip(b + d for b, d in zip(base, s))


def other_side(side: str) -> str:
    return "left" if side == "right" else "right"


# ------------------------------------------------------------------------- per-image parameters
def sample_image_params(ident: dict[str, Any], view: str, rng: np.random.Generator,
                        diff: Difficulty) -> dict[str, Any]:
    """Viewpoint, pose, placement, nuisances and the resulting visibility of every attribute."""
    facing = None
    if view == "side":
        facing = "right" if rng.random() < 0.5 else "left"
    r = rng.random()
    occlusion = "none"
    if r < diff.occlusion_prob:
        occlusion = "lower" if rng.random() < 0.65 else "feet"
    lo, hi = diff.brightness
    p: dict[str, Any] = {
        "view": view,
        "facing": facing,  # side views: the direction the person walks in the image
        # The side of the person's body turned to the camera in a side view (own left when
        # walking to the image right, own right when walking left).
        "near_side": None if facing is None else ("left" if facing == "right" else "right"),
        "occlusion": occlusion,
        "occluder_top": round(float(rng.uniform(0.47, 0.53) if occlusion == "lower" else
                                    rng.uniform(0.83, 0.88)), 4) if occlusion != "none" else None,
        "pole": bool(rng.random() < diff.pole_prob),
        "straps_visible": bool(view == "front" and rng.random() < 0.6),
        "scale": round(float(rng.uniform(*diff.scale_range)), 4),
        "shift_x": round(float(np.clip(rng.normal(0.0, diff.jitter), -2.5 * diff.jitter, 2.5 * diff.jitter)), 4),
        "shift_y": round(float(rng.random()), 4),
        "swing": round(float(rng.uniform(-1, 1)), 4),
        "stride": round(float(rng.uniform(0.15, 1.0)), 4),
        "stance": round(float(rng.uniform(0.0, 1.0)), 4),
        "brightness": round(float(rng.uniform(lo, hi)), 4),
        "cast": [round(float(v), 4) for v in rng.uniform(-diff.colour_cast, diff.colour_cast, size=3)],
        "blur": round(float(rng.uniform(0, diff.blur_max)) if rng.random() < 0.6 else 0.0, 4),
        "distractor": bool(rng.random() < diff.distractor_prob),
    }
    p["visible"] = image_visibility(ident, p)
    return p


def image_visibility(ident: dict[str, Any], p: dict[str, Any]) -> dict[str, bool]:
    """Which attribute slots can be read off this image (False for absent items, e.g. no bag).

    Conservative on purpose: an item counts as visible only when the part that identifies it is
    drawn unoccluded (backpack straps from the front, the bag body of a shoulder bag), so a
    caption that follows this never names something the picture does not show.
    """
    a, app = ident["attributes"], ident["appearance"]
    view, near, occ = p["view"], p["near_side"], p["occlusion"]
    vis = {s: a.get(s) not in (None, "none") for s in ATTRIBUTE_SLOTS}
    if occ == "lower":
        vis["lower_type"] = vis["lower_colour"] = False
    if occ in ("lower", "feet"):
        vis["shoe_colour"] = False
    bag = a["bag"]
    bag_seen = bag != "none"
    if bag == "backpack" and view == "front":
        bag_seen = p["straps_visible"]
    elif bag == "handbag":
        bag_seen = (view != "side" or app["bag_side"] == near) and occ != "lower"
    elif bag == "shoulder bag":
        bag_seen = view != "side" or app["bag_side"] == near
    vis["bag"] = vis["bag_colour"] = bag_seen
    carried = a["carried"]
    if carried != "none":
        seen = view != "side" or app["carry_side"] == near
        if carried == "phone":
            seen = seen and view != "back"
        elif occ == "lower":  # umbrella, bottle and cup hang below the hand: behind the occluder
            seen = False
        vis["carried"] = seen
    return vis


# ---------------------------------------------------------------------------------- the figure
class _Fig:
    """Maps body coordinates to pixels (with mirroring for left-facing side views)."""

    def __init__(self, img: Image.Image, cx: float, top: float, ph: float, mirror: bool) -> None:
        self.img = img
        self.draw = ImageDraw.Draw(img)
        self.cx, self.top, self.ph = cx, top, ph
        self.m = -1.0 if mirror else 1.0

    def P(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + self.m * x * self.ph, self.top + y * self.ph)

    def poly(self, pts: list[tuple[float, float]], fill: Any, draw: ImageDraw.ImageDraw | None = None) -> None:
        (draw or self.draw).polygon([self.P(x, y) for x, y in pts], fill=fill)

    def ellipse(self, x: float, y: float, rx: float, ry: float, fill: Any,
                draw: ImageDraw.ImageDraw | None = None) -> None:
        (cx, cy) = self.P(x, y)
        w, h = rx * self.ph, ry * self.ph
        (draw or self.draw).ellipse([cx - w, cy - h, cx + w, cy + h], fill=fill)

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: Any,
             draw: ImageDraw.ImageDraw | None = None, radius: float = 0.0) -> None:
        (a, b), (c, d) = self.P(x0, y0), self.P(x1, y1)
        box = [min(a, c), min(b, d), max(a, c), max(b, d)]
        if radius > 0:
            (draw or self.draw).rounded_rectangle(box, radius=radius * self.ph, fill=fill)
        else:
            (draw or self.draw).rectangle(box, fill=fill)

    def line(self, pts: list[tuple[float, float]], fill: Any, width: float,
             draw: ImageDraw.ImageDraw | None = None) -> None:
        (draw or self.draw).line([self.P(x, y) for x, y in pts], fill=fill,
                                 width=max(1, int(round(width * self.ph))), joint="curve")

    def limb(self, p0: tuple[float, float], p1: tuple[float, float], w0: float, w1: float, fill: Any,
             draw: ImageDraw.ImageDraw | None = None, caps: bool = True) -> None:
        """A tapered segment with round ends (arms, legs)."""
        (x0, y0), (x1, y1) = p0, p1
        dx, dy = x1 - x0, y1 - y0
        n = math.hypot(dx, dy) or 1.0
        nx, ny = -dy / n, dx / n
        self.poly([(x0 + nx * w0 / 2, y0 + ny * w0 / 2), (x1 + nx * w1 / 2, y1 + ny * w1 / 2),
                   (x1 - nx * w1 / 2, y1 - ny * w1 / 2), (x0 - nx * w0 / 2, y0 - ny * w0 / 2)], fill, draw)
        if caps:
            self.ellipse(x0, y0, w0 / 2, w0 / 2, fill, draw)
            self.ellipse(x1, y1, w1 / 2, w1 / 2, fill, draw)

    def paint(self, shape: Callable[[ImageDraw.ImageDraw, Any], None], paint: Any) -> None:
        """Fill a shape with a colour or with a fabric image (patterned garments)."""
        if isinstance(paint, Image.Image):
            mask = Image.new("L", self.img.size, 0)
            shape(ImageDraw.Draw(mask), 255)
            self.img.paste(paint, (0, 0), mask)
        else:
            shape(self.draw, paint)


def _fabric(size: tuple[int, int], base: RGB, pattern: str, second: RGB, ph: float,
            rng: np.random.Generator) -> Image.Image | RGB:
    """A canvas-sized swatch of cloth: plain colour, stripes, checks or dots (scaled to the body)."""
    if pattern == "plain":
        return base
    img = Image.new("RGB", size, base)
    d = ImageDraw.Draw(img)
    w, h = size
    off = float(rng.uniform(0, 1))
    if pattern == "striped":
        period = 0.05 * ph
        th = max(1.0, 0.42 * period)
        y = -period + off * period
        while y < h:
            d.rectangle([0, y, w, y + th], fill=second)
            y += period
    elif pattern == "checked":
        period = 0.065 * ph
        th = max(1.0, 0.28 * period)
        y = off * period - period
        while y < h:
            d.rectangle([0, y, w, y + th], fill=second)
            y += period
        x = off * period - period
        while x < w:
            d.rectangle([x, 0, x + th, h], fill=second)
            x += period
    elif pattern == "dotted":
        period = 0.05 * ph
        r = max(1.0, 0.16 * period)
        row = 0
        y = off * period - period
        while y < h + period:
            x = (period / 2 if row % 2 else 0.0) - period
            while x < w + period:
                d.ellipse([x - r, y - r, x + r, y + r], fill=second)
                x += period
            y += period
            row += 1
    return img


# ----------------------------------------------------------------------------- the body parts
@dataclass
class _Person:
    """One person being drawn: the figure, attributes and view, the colours and body measures that
    `_draw_person` works out once, and the hand positions the arms leave for what is carried."""

    fig: _Fig
    a: dict[str, Any]
    app: dict[str, Any]
    p: dict[str, Any]
    ph: float
    full_detail: bool
    view: str
    side: bool
    col: Callable[[RGB], RGB]
    sgn: Callable[[str], float]
    skin: RGB
    hair: RGB
    up: RGB
    upper_paint: Any
    is_dress: bool
    low: RGB
    shoe: RGB
    bag_c: RGB | None
    hw_c: RGB | None
    sw: float
    hip: float
    depth: float
    arm_w: float
    leg_w: float
    waist_y: float
    hem_y: float
    ankle_y: float
    shoulder_y: float
    swing: float
    stride: float
    hem_low: float
    long_sleeve: bool
    carry: str
    hands: dict[str, tuple[float, float]]
    long_hair: bool
    bag: str


# ---------------------------------------------------------------- legs and lower garment
def _legs(b: _Person) -> None:
    a, ankle_y, depth, fig, full_detail, hip, leg_w = b.a, b.ankle_y, b.depth, b.fig, b.full_detail, b.hip, b.leg_w
    low, p, shoe, side, skin, stride, swing, waist_y = b.low, b.p, b.shoe, b.side, b.skin, b.stride, b.swing, b.waist_y
    lift = 0.0
    if side:
        dx = 0.16 * stride
        feet = [(-dx, 0.75), (dx, 1.0)]  # (ankle x, shade): far leg back, near leg forward
        if swing < 0:
            feet = [(dx, 0.75), (-dx, 1.0)]
        hips = [(0.0, waist_y)] * 2
    else:
        gap = 0.012 + 0.03 * p["stance"]
        lift = 0.02 * stride
        feet = [(-(gap + 0.045), 1.0), (gap + 0.045, 1.0)]
        hips = [(-0.045, waist_y), (0.045, waist_y)]
    for (hx, hy), (fx, shade) in zip(hips, feet):
        ay = ankle_y - (lift if (not side and fx * swing > 0) else 0.0)
        knee_y = hy + 0.5 * (ay - hy)
        knee = (hx + 0.5 * (fx - hx), knee_y)
        ank = (fx, ay)
        lc = _mix(low, 0.82 * shade) if shade < 1 else low
        sk = _mix(skin, 0.85 * shade) if shade < 1 else skin
        sc = _mix(shoe, 0.85 * shade) if shade < 1 else shoe
        lt = a["lower_type"]
        # bare leg first, garment over it
        fig.limb((hx, hy), knee, leg_w, leg_w * 0.85, sk)
        fig.limb(knee, ank, leg_w * 0.85, leg_w * 0.65, sk)
        if lt in ("trousers", "jeans"):
            fig.limb((hx, hy), knee, leg_w * 1.05, leg_w * 0.92, lc)
            fig.limb(knee, ank, leg_w * 0.92, leg_w * 0.8, lc)
            if lt == "jeans" and full_detail:  # seam and a slightly faded knee: reads as denim
                fig.line([(hx, hy + 0.02), knee, ank], _mix(lc, 1.25), 0.006)
        elif lt == "shorts":
            mid = (hx + 0.36 * (fx - hx), hy + 0.36 * (ay - hy))
            fig.limb((hx, hy), mid, leg_w * 1.15, leg_w * 1.1, lc)
        # shoes
        if side:
            fig.ellipse(fx + 0.022, ay + 0.03, 0.045, 0.022, sc)
        else:
            fig.ellipse(fx, ay + 0.03, 0.03, 0.022, sc)
    if a["lower_type"] in ("trousers", "jeans", "shorts"):  # hip block joins the legs
        if side:
            fig.rect(-depth * 0.9, waist_y - 0.03, depth * 0.9, waist_y + 0.05, low)
        else:
            fig.poly([(-hip, waist_y - 0.03), (hip, waist_y - 0.03), (hip * 0.95, waist_y + 0.06),
                      (-hip * 0.95, waist_y + 0.06)], low)
    if a["lower_type"] == "skirt":
        flare = 1.55
        if side:
            fig.poly([(-depth, waist_y - 0.03), (depth, waist_y - 0.03), (depth * flare + 0.02, 0.69),
                      (-depth * flare - 0.02, 0.69)], low)
        else:
            fig.poly([(-hip, waist_y - 0.03), (hip, waist_y - 0.03), (hip * flare, 0.69),
                      (-hip * flare, 0.69)], low)


# --------------------------------------------------------------------------------- torso
def _torso_shape(b: _Person, d: ImageDraw.ImageDraw, fill: Any) -> None:
    depth, fig, hem_low, hem_y, hip, is_dress = b.depth, b.fig, b.hem_low, b.hem_y, b.hip, b.is_dress
    shoulder_y, side, sw, waist_y = b.shoulder_y, b.side, b.sw, b.waist_y
    if side:
        pts = [(-depth, shoulder_y), (depth * 0.9, shoulder_y), (depth * 1.05, 0.33), (depth * 0.95, hem_y),
               (-depth, hem_y)]
        if hem_low > hem_y:
            pts = pts[:-2] + [(depth * 1.25, hem_low), (-depth * 1.2, hem_low)]
        fig.poly(pts, fill, d)
        fig.ellipse(0.0, shoulder_y + 0.02, depth, 0.03, fill, d)
    else:
        pts = [(-sw, shoulder_y + 0.01), (sw, shoulder_y + 0.01), (hip * 1.02, hem_y), (-hip * 1.02, hem_y)]
        if hem_low > hem_y:
            flare = 1.45 if is_dress else 1.2
            pts = pts[:2] + [(hip * 1.05, waist_y), (hip * flare, hem_low), (-hip * flare, hem_low),
                             (-hip * 1.05, waist_y)]
        fig.poly(pts, fill, d)
        fig.ellipse(-sw + 0.03, shoulder_y + 0.03, 0.035, 0.03, fill, d)
        fig.ellipse(sw - 0.03, shoulder_y + 0.03, 0.035, 0.03, fill, d)


def _torso_details(b: _Person) -> None:
    a, depth, fig, full_detail, hem_low, hem_y, hip = b.a, b.depth, b.fig, b.full_detail, b.hem_low, b.hem_y, b.hip
    shoulder_y, skin, sw, up, view, waist_y = b.shoulder_y, b.skin, b.sw, b.up, b.view, b.waist_y
    if not full_detail:
        return
    dark = _mix(up, 0.7)
    t = a["upper_type"]
    if view == "front":
        if t in ("t-shirt", "sweater", "dress"):  # round neckline
            fig.ellipse(0.0, shoulder_y + 0.004, 0.028, 0.018, skin)
        if t == "shirt":  # collar and buttons
            light = _mix(up, 1.35)
            fig.poly([(-0.032, shoulder_y - 0.005), (0.0, shoulder_y + 0.035), (-0.005, shoulder_y + 0.005)], light)
            fig.poly([(0.032, shoulder_y - 0.005), (0.0, shoulder_y + 0.035), (0.005, shoulder_y + 0.005)], light)
            for y in (0.23, 0.3, 0.37, 0.44):
                fig.ellipse(0.0, y, 0.006, 0.006, dark)
        if t in ("jacket", "coat"):  # opening / zip and lapels
            fig.line([(0.0, shoulder_y + 0.01), (0.0, hem_low)], dark, 0.008)
            fig.poly([(-0.035, shoulder_y), (0.0, shoulder_y + 0.06), (-0.01, shoulder_y)], dark)
            fig.poly([(0.035, shoulder_y), (0.0, shoulder_y + 0.06), (0.01, shoulder_y)], dark)
            if t == "coat":
                for y in (0.26, 0.35, 0.44, 0.53):
                    fig.ellipse(0.015, y, 0.006, 0.006, dark)
        if t == "sweater":  # ribbed hem
            fig.rect(-hip * 1.02, hem_y - 0.022, hip * 1.02, hem_y, dark)
        if t == "dress":  # waist seam
            fig.line([(-hip * 1.05, waist_y - 0.02), (hip * 1.05, waist_y - 0.02)], dark, 0.006)
    elif view == "back":
        if t == "sweater":
            fig.rect(-hip * 1.02, hem_y - 0.022, hip * 1.02, hem_y, dark)
        if t in ("jacket", "coat", "shirt"):  # yoke seam
            fig.line([(-sw * 0.8, 0.22), (sw * 0.8, 0.22)], dark, 0.005)
    else:
        if t in ("jacket", "coat"):
            fig.line([(depth * 1.0, shoulder_y + 0.03), (depth * 1.05, hem_low)], dark, 0.006)
        if t == "sweater":
            fig.rect(-depth, hem_y - 0.022, depth * 0.95, hem_y, dark)


def _arm_points(b: _Person, body_side: str, phase: float) -> tuple[tuple[float, float], ...]:
    """(shoulder, elbow, hand) for one arm; `phase` is the swing (-1 back .. 1 forward)."""
    app, carry, sgn, shoulder_y, side, sw = b.app, b.carry, b.sgn, b.shoulder_y, b.side, b.sw
    bent = carry == "phone" and body_side == app["carry_side"]
    if side:
        s = (0.0, shoulder_y + 0.02)
        if bent:
            return s, (0.015, 0.31), (0.085, 0.255)
        ang = math.radians(28.0 * phase)
        e = (s[0] + 0.15 * math.sin(ang), s[1] + 0.15 * math.cos(ang))
        ang2 = ang + math.radians(12.0 + 8.0 * max(phase, 0))
        h = (e[0] + 0.14 * math.sin(ang2), e[1] + 0.14 * math.cos(ang2))
        return s, e, h
    x = sgn(body_side)
    s = (x * (sw - 0.022), shoulder_y + 0.025)
    if bent:
        return s, (x * (sw + 0.012), 0.33), (x * sw * 0.45, 0.275)
    out = 0.012 + 0.01 * abs(phase)
    e = (x * (sw + out), 0.32)
    h = (x * (sw + out + 0.004), 0.465 - 0.02 * abs(phase))
    return s, e, h


def _arm(b: _Person, body_side: str, phase: float, shade: float) -> None:
    a, arm_w, fig, full_detail, hands, long_sleeve = b.a, b.arm_w, b.fig, b.full_detail, b.hands, b.long_sleeve
    skin, up, upper_paint = b.skin, b.up, b.upper_paint
    s, e, h = _arm_points(b, body_side, phase)
    hands[body_side] = h
    sk = _mix(skin, shade) if shade < 1 else skin
    sleeve_col = upper_paint if shade >= 1 else (_mix(up, shade))
    fig.limb(s, e, arm_w, arm_w * 0.9, sk)
    fig.limb(e, h, arm_w * 0.9, arm_w * 0.75, sk)
    if long_sleeve:
        fig.paint(lambda d, f: (fig.limb(s, e, arm_w * 1.12, arm_w * 1.02, f, d),
                                fig.limb(e, h, arm_w * 1.02, arm_w * 0.9, f, d)), sleeve_col)
        if a["upper_type"] == "sweater" and full_detail:
            fig.limb((e[0] + 0.8 * (h[0] - e[0]), e[1] + 0.8 * (h[1] - e[1])), h, arm_w * 0.95, arm_w * 0.9,
                     _mix(up, 0.7 * shade), caps=False)
    else:
        mid = (s[0] + 0.55 * (e[0] - s[0]), s[1] + 0.55 * (e[1] - s[1]))
        fig.paint(lambda d, f: fig.limb(s, mid, arm_w * 1.2, arm_w * 1.15, f, d), sleeve_col)
    fig.ellipse(h[0], h[1] + 0.008, arm_w * 0.45, arm_w * 0.5, sk)


def _hair_back(b: _Person) -> None:  # long hair hanging behind the shoulders (drawn before the torso)
    fig, hair, long_hair, view = b.fig, b.hair, b.long_hair, b.view
    if long_hair and view == "front":
        fig.poly([(-0.052, 0.07), (0.052, 0.07), (0.062, 0.265), (-0.062, 0.265)], hair)


def _head(b: _Person) -> None:
    a, app, fig, full_detail, hair, long_hair, ph = b.a, b.app, b.fig, b.full_detail, b.hair, b.long_hair, b.ph
    shoulder_y, side, skin, view = b.shoulder_y, b.side, b.skin, b.view
    fig.rect(-0.02, 0.11, 0.02, shoulder_y + 0.02, skin)  # neck
    if side:
        fig.ellipse(0.0, 0.07, 0.05, 0.06, hair)
        fig.ellipse(0.016, 0.083, 0.038, 0.05, skin)
        fig.poly([(0.05, 0.075), (0.064, 0.095), (0.048, 0.1)], skin)  # nose
        if long_hair:
            fig.poly([(-0.05, 0.07), (-0.01, 0.07), (-0.018, 0.27), (-0.062, 0.26)], hair)
        elif a["headwear"] == "none" and app["hair_style"]:
            fig.ellipse(-0.02, 0.05, 0.035, 0.03, hair)
    elif view == "front":
        fig.ellipse(0.0, 0.068, 0.053, 0.062, hair)
        fig.ellipse(0.0, 0.086, 0.043, 0.05, skin)
        if full_detail and ph > 90:
            eye = _mix(skin, 0.35)
            fig.ellipse(-0.016, 0.083, 0.005, 0.004, eye)
            fig.ellipse(0.016, 0.083, 0.005, 0.004, eye)
        if app["hair_style"] and not long_hair:  # fringe
            fig.poly([(-0.045, 0.045), (0.045, 0.045), (0.03, 0.06), (-0.04, 0.062)], hair)
    else:
        fig.ellipse(0.0, 0.072, 0.052, 0.062, hair)
        if long_hair:
            fig.poly([(-0.05, 0.08), (0.05, 0.08), (0.06, 0.27), (-0.06, 0.27)], hair)


def _headwear(b: _Person) -> None:
    a, fig, hw_c, side, view = b.a, b.fig, b.hw_c, b.side, b.view
    hw = a["headwear"]
    if hw == "none" or hw_c is None:
        return
    dark = _mix(hw_c, 0.75)
    if hw == "cap":
        fig.ellipse(0.0 if not side else -0.004, 0.04, 0.054, 0.036, hw_c)
        fig.rect(-0.054, 0.04, 0.054, 0.052, hw_c)
        if side:
            fig.poly([(0.02, 0.045), (0.095, 0.05), (0.09, 0.058), (0.02, 0.056)], dark)
        elif view == "front":
            fig.ellipse(0.0, 0.055, 0.06, 0.011, dark)
    elif hw == "hat":
        fig.ellipse(0.0, 0.045, 0.09, 0.016, dark if view != "back" else hw_c)
        fig.rect(-0.045, -0.005, 0.045, 0.045, hw_c, radius=0.01)
        fig.rect(-0.045, 0.03, 0.045, 0.042, dark)
    else:  # beanie
        fig.ellipse(0.0, 0.045, 0.056, 0.05, hw_c)
        fig.rect(-0.056, 0.045, 0.056, 0.062, dark)


def _backpack_behind(b: _Person) -> None:  # side view: the pack sticks out behind the back
    bag, bag_c, depth, fig, side = b.bag, b.bag_c, b.depth, b.fig, b.side
    if bag == "backpack" and side and bag_c:
        fig.rect(-depth - 0.075, 0.2, -depth + 0.01, 0.43, bag_c, radius=0.02)
        fig.rect(-depth - 0.08, 0.33, -depth - 0.04, 0.41, _mix(bag_c, 0.75), radius=0.01)


def _bags_front(b: _Person) -> None:
    app, bag, bag_c, depth, fig, hip, p, sgn = b.app, b.bag, b.bag_c, b.depth, b.fig, b.hip, b.p, b.sgn
    shoulder_y, side, sw, view = b.shoulder_y, b.side, b.sw, b.view
    if bag == "none" or bag_c is None:
        return
    dark = _mix(bag_c, 0.7)
    if bag == "backpack":
        if view == "back":
            w = sw * 0.75
            fig.rect(-w, 0.2, w, 0.44, bag_c, radius=0.025)
            fig.rect(-w * 0.7, 0.33, w * 0.7, 0.42, dark, radius=0.015)
            fig.line([(-0.02, 0.2), (0.0, 0.18), (0.02, 0.2)], dark, 0.008)
        elif view == "front" and p["straps_visible"]:
            for x in (-1, 1):
                fig.line([(x * sw * 0.62, shoulder_y + 0.005), (x * sw * 0.66, 0.36)], bag_c, 0.022)
        elif side:
            fig.line([(-depth * 0.6, shoulder_y + 0.005), (depth * 0.8, 0.24), (depth * 0.7, 0.36)], bag_c, 0.018)
    elif bag == "shoulder bag":
        bs = app["bag_side"]
        if side:
            if bs != p["near_side"]:
                fig.line([(-depth * 0.3, shoulder_y), (0.0, 0.24)], bag_c, 0.014)
                return
            fig.line([(depth * 0.4, shoulder_y), (0.0, 0.3), (-depth * 0.5, 0.42)], bag_c, 0.014)
            fig.rect(-0.055, 0.41, 0.04, 0.5, bag_c, radius=0.012)
            fig.line([(-0.055, 0.44), (0.04, 0.44)], dark, 0.006)
        else:
            x = sgn(bs)
            fig.line([(-x * sw * 0.55, shoulder_y + 0.005), (x * (hip + 0.02), 0.43)], bag_c, 0.014)
            bx = x * (hip + 0.035)
            fig.rect(bx - 0.045, 0.42, bx + 0.045, 0.5, bag_c, radius=0.012)
            if view == "front":
                fig.line([(bx - 0.045, 0.45), (bx + 0.045, 0.45)], dark, 0.006)


def _handheld(b: _Person) -> None:
    """Handbag and carried objects, at the hand that holds them (near side only in side views)."""
    app, bag, bag_c, carry, col, fig, hands, p = b.app, b.bag, b.bag_c, b.carry, b.col, b.fig, b.hands, b.p
    side, view = b.side, b.view
    if bag == "handbag" and bag_c is not None:
        bs = app["bag_side"]
        if not side or bs == p["near_side"]:
            hx, hy = hands[bs]
            fig.line([(hx - 0.025, hy + 0.035), (hx, hy - 0.005), (hx + 0.025, hy + 0.035)], _mix(bag_c, 0.7), 0.008)
            fig.rect(hx - 0.045, hy + 0.03, hx + 0.045, hy + 0.105, bag_c, radius=0.012)
    cs = app["carry_side"]
    if carry == "none" or (side and cs != p["near_side"]):
        return
    hx, hy = hands[cs]
    if carry == "phone":
        if view == "back":
            return
        fig.rect(hx - 0.017, hy - 0.05, hx + 0.017, hy + 0.005, (25, 25, 30), radius=0.004)
        fig.rect(hx - 0.011, hy - 0.044, hx + 0.011, hy - 0.002, (150, 180, 210))
    elif carry == "umbrella":
        uc = col(COLOUR_RGB[app["umbrella_colour"]])
        fig.line([(hx, hy), (hx + 0.01, 0.9)], (60, 60, 60), 0.007)
        fig.poly([(hx - 0.03, hy + 0.05), (hx + 0.036, hy + 0.05), (hx + 0.012, 0.85)], uc)
        fig.line([(hx - 0.012, hy + 0.16), (hx + 0.03, hy + 0.16)], _mix(uc, 0.6), 0.008)  # strap
        fig.line([(hx - 0.015, hy - 0.01), (hx, hy - 0.025), (hx + 0.008, hy)], (60, 60, 60), 0.008)
    elif carry == "bottle":
        bc = col(COLOUR_RGB[app["bottle_colour"]])
        fig.rect(hx - 0.015, hy - 0.02, hx + 0.015, hy + 0.065, _mix(bc, 1.3), radius=0.006)
        fig.rect(hx - 0.009, hy - 0.032, hx + 0.009, hy - 0.018, bc)
    elif carry == "cup":
        fig.poly([(hx - 0.02, hy - 0.02), (hx + 0.02, hy - 0.02), (hx + 0.015, hy + 0.035),
                  (hx - 0.015, hy + 0.035)], (245, 242, 235))
        fig.rect(hx - 0.021, hy - 0.03, hx + 0.021, hy - 0.02, (90, 60, 40))
        fig.rect(hx - 0.019, hy + 0.0, hx + 0.019, hy + 0.015, (140, 95, 60))


def _draw_person(img: Image.Image, ident: dict[str, Any], p: dict[str, Any], cx: float, top: float,
                 ph: float, rng: np.random.Generator, dim: float = 1.0, full_detail: bool = True) -> None:
    """Draw one person into `img` (canvas pixels), following the view and pose in `p`: work out its
    colours and measures once, then draw the body parts back to front."""
    a, app = ident["attributes"], ident["appearance"]
    sh = app["shade"]
    view = p["view"]
    side = view == "side"
    fig = _Fig(img, cx, top, ph, mirror=(p.get("facing") == "left"))

    def col(c: RGB) -> RGB:
        return _mix(c, dim) if dim != 1.0 else c

    skin = col(SKIN_RGB[app["skin"]])
    hair = col(_colour(a["hair_colour"], sh["hair"], HAIR_RGB))
    up = col(_colour(a["upper_colour"], sh["upper"]))
    up_second = col(_colour(a["pattern_colour"], sh["pattern"])) if a["pattern_colour"] else up
    upper_paint = _fabric(img.size, up, a["upper_pattern"], up_second, ph, rng)
    is_dress = a["upper_type"] == "dress"
    low = col(_colour(a["lower_colour"], sh["lower"])) if a["lower_colour"] else skin
    shoe = col(_colour(a["shoe_colour"], sh["shoe"]))
    bag_c = col(_colour(a["bag_colour"], sh["bag"])) if a["bag_colour"] else None
    hw_c = col(_colour(a["headwear_colour"], sh["headwear"])) if a["headwear_colour"] else None

    build = a["build"]
    sw = {"slim": 0.105, "average": 0.12, "heavy": 0.14}[build]
    if a["gender"] == "woman":
        sw *= 0.9
    hip = sw * (0.95 if a["gender"] == "woman" else 0.82)
    depth = {"slim": 0.06, "average": 0.07, "heavy": 0.085}[build]  # torso half-depth (side view)
    arm_w = {"slim": 0.036, "average": 0.042, "heavy": 0.05}[build]
    leg_w = {"slim": 0.052, "average": 0.058, "heavy": 0.07}[build]
    waist_y, hem_y, ankle_y = 0.48, 0.5, 0.935
    shoulder_y = 0.165
    swing, stride = p["swing"], p["stride"]
    hem_low = {"coat": 0.7, "dress": 0.72}.get(a["upper_type"], hem_y)

    # Which image-side x sign does a body side have (front/back views)?
    def sgn(body_side: str) -> float:
        s = -1.0 if body_side == "right" else 1.0
        return s if view == "front" else -s

    long_sleeve = a["sleeve_length"] == "long"
    carry = a["carried"]
    hands: dict[str, tuple[float, float]] = {}  # filled by _arm, read by _handheld
    long_hair = a["hair_length"] == "long"
    bag = a["bag"]
    person = _Person(fig=fig, a=a, app=app, p=p, ph=ph, full_detail=full_detail, view=view, side=side, col=col,
                     sgn=sgn, skin=skin, hair=hair, up=up, upper_paint=upper_paint, is_dress=is_dress, low=low,
                     shoe=shoe, bag_c=bag_c, hw_c=hw_c, sw=sw, hip=hip, depth=depth, arm_w=arm_w, leg_w=leg_w,
                     waist_y=waist_y, hem_y=hem_y, ankle_y=ankle_y, shoulder_y=shoulder_y, swing=swing,
                     stride=stride, hem_low=hem_low, long_sleeve=long_sleeve, carry=carry, hands=hands,
                     long_hair=long_hair, bag=bag)

    # ------------------------------------------------------------------------ compose layers
    if side:
        far, near = other_side(p["near_side"]), p["near_side"]
        _arm(person, far, -swing, 0.78)
        _legs(person)
        _hair_back(person)
        fig.paint(lambda d, fill: _torso_shape(person, d, fill), upper_paint)
        _torso_details(person)
        _backpack_behind(person)
        _head(person)
        _headwear(person)
        _bags_front(person)
        _arm(person, near, swing, 1.0)
        _handheld(person)
    else:
        _hair_back(person)
        _legs(person)
        fig.paint(lambda d, fill: _torso_shape(person, d, fill), upper_paint)
        _torso_details(person)
        _arm(person, "left", swing, 1.0)
        _arm(person, "right", -swing, 1.0)
        _head(person)
        _headwear(person)
        _bags_front(person)
        _handheld(person)


# ---------------------------------------------------------------------------- the background
def _muted(rng: np.random.Generator) -> RGB:
    g = rng.uniform(50, 215)
    tint = rng.normal(0, 18, size=3)
    return _clip(g + tint)


def _scene_colour(rng: np.random.Generator, diff: Difficulty) -> RGB:
    if rng.random() < diff.palette_clutter:
        base = COLOUR_RGB[COLOURS[int(rng.integers(len(COLOURS)))]]
        return _clip(np.array(base) + rng.normal(0, 12, size=3))
    return _muted(rng)


def _background(w: int, h: int, rng: np.random.Generator, diff: Difficulty) -> Image.Image:
    """Wall/street gradient, ground plane and random clutter, some of it in clothing colours."""
    top, bottom = np.array(_muted(rng), float), np.array(_muted(rng), float)
    horizon = int(h * rng.uniform(0.5, 0.85))
    ground = np.array(_muted(rng), float) * rng.uniform(0.7, 1.0)
    t = np.linspace(0, 1, h)[:, None]
    col = top[None, :] * (1 - t) + bottom[None, :] * t
    gt = np.clip((np.arange(h) - horizon) / max(h - horizon, 1), 0, 1)[:, None]
    col = np.where((np.arange(h) >= horizon)[:, None], ground[None, :] * (0.85 + 0.3 * gt), col)
    arr = np.broadcast_to(col[:, None, :], (h, w, 3)).astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    d = ImageDraw.Draw(img)
    texture = rng.random()
    if texture < 0.3:  # paving lines on the ground
        step = h * rng.uniform(0.03, 0.07)
        y = horizon + step
        lc = _mix(tuple(int(v) for v in ground), 0.75)
        while y < h:
            d.line([(0, y), (w, y)], fill=lc, width=max(1, h // 128))
            step *= 1.15
            y += step
    elif texture < 0.5:  # brick/window grid on the wall
        step = h * rng.uniform(0.04, 0.1)
        lc = _mix(tuple(int(v) for v in top), rng.uniform(0.6, 0.85))
        y = rng.uniform(0, step)
        while y < horizon:
            d.line([(0, y), (w, y)], fill=lc, width=max(1, h // 160))
            y += step
        x = rng.uniform(0, step)
        while x < w:
            d.line([(x, 0), (x, horizon)], fill=lc, width=max(1, h // 160))
            x += step * rng.uniform(1.0, 2.5)
    n = int(rng.poisson(6.0 * diff.clutter))
    for _ in range(n):
        kind = rng.random()
        c = _scene_colour(rng, diff)
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.1, 0.95) * h
        bw, bh = rng.uniform(0.08, 0.6) * w, rng.uniform(0.04, 0.35) * h
        if kind < 0.45:
            d.rectangle([x0, y0, x0 + bw, y0 + bh], fill=c)
        elif kind < 0.7:
            d.ellipse([x0, y0, x0 + bw, y0 + bh], fill=c)
        elif kind < 0.85:
            d.line([(x0, y0), (x0 + rng.uniform(-1, 1) * w, y0 + rng.uniform(-0.5, 0.5) * h)], fill=c,
                   width=max(1, int(rng.uniform(0.005, 0.03) * h)))
        else:
            pts = [(x0 + rng.uniform(0, bw), y0 + rng.uniform(0, bh)) for _ in range(3)]
            d.polygon(pts, fill=c)
    return img


def _occluders(img: Image.Image, p: dict[str, Any], cx: float, top: float, ph: float,
               rng: np.random.Generator, diff: Difficulty) -> None:
    """Objects in front of the person: a low wall/car/bench (lower body or feet) and/or a pole."""
    d = ImageDraw.Draw(img)
    w, h = img.size
    if p["occlusion"] != "none":
        y0 = top + p["occluder_top"] * ph
        if rng.random() < 0.5:
            x0, x1 = -1.0, w + 1.0
        else:  # wide enough to cover both legs, bags and umbrellas on any pose
            x0 = cx - ph * rng.uniform(0.3, 0.45)
            x1 = cx + ph * rng.uniform(0.3, 0.45)
        c = _scene_colour(rng, diff)
        d.rectangle([x0, y0, x1, h + 1], fill=c)
        d.rectangle([x0, y0, x1, y0 + max(1.0, 0.012 * ph)], fill=_mix(c, 1.3))
        for _ in range(int(rng.integers(0, 4))):
            yy = rng.uniform(y0 + 0.03 * ph, h)
            d.line([(x0, yy), (x1, yy)], fill=_mix(c, 0.7), width=max(1, int(0.008 * ph)))
    if p["pole"]:
        # Either across the body's midline (narrow enough to leave every named item visible on
        # both sides of it) or beside the body.
        if rng.random() < 0.4:
            px = cx + ph * rng.uniform(-0.02, 0.02)
        else:
            px = cx + ph * (1 if rng.random() < 0.5 else -1) * rng.uniform(0.2, 0.3)
        pw = ph * rng.uniform(0.012, 0.022)
        c = _scene_colour(rng, diff)
        d.rectangle([px - pw, -1, px + pw, h + 1], fill=c)
        d.rectangle([px - pw, -1, px - pw * 0.4, h + 1], fill=_mix(c, 1.25))


# ------------------------------------------------------------------------------ entry point
def render_image(ident: dict[str, Any], p: dict[str, Any], height: int, width: int,
                 rng: np.random.Generator, diff: Difficulty) -> Image.Image:
    """Render one crop (RGB, `height` x `width`) of `ident` as described by image params `p`."""
    H, W = height * _SS, width * _SS
    img = _background(W, H, rng, diff)
    # Person height in pixels: limited by the crop height and, for narrow crops, by the width.
    ph = p["scale"] * ident["appearance"]["height"] * min(H, W * 2.1)
    free = H - 0.985 * ph
    top = 0.01 * H + p["shift_y"] * max(free - 0.02 * H, 0.0)
    cx = W * (0.5 + p["shift_x"])

    if p["distractor"]:  # another pedestrian, further away, half out of the crop, behind the target
        other = sample_identity(rng)
        q = {"view": VIEWS[int(rng.integers(3))], "facing": None, "near_side": None, "swing": float(rng.uniform(-1, 1)),
             "stride": float(rng.uniform(0.2, 1)), "stance": 0.5, "straps_visible": True}
        if q["view"] == "side":
            q["facing"] = "left" if rng.random() < 0.5 else "right"
            q["near_side"] = "left" if q["facing"] == "right" else "right"
        s = rng.uniform(0.75, 0.95)
        dx = (1 if rng.random() < 0.5 else -1) * ph * rng.uniform(0.36, 0.5)
        _draw_person(img, other, q, cx + dx, top + ph * rng.uniform(-0.03, 0.1), ph * s, rng,
                     dim=float(rng.uniform(0.75, 0.95)), full_detail=False)

    _draw_person(img, ident, p, cx, top, ph, rng)
    _occluders(img, p, cx, top, ph, rng, diff)

    img = img.resize((width, height), Image.Resampling.BOX)
    blur = p["blur"] * height / 128.0
    if blur > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(img, dtype=np.float32)
    gain = p["brightness"] * (1.0 + np.asarray(p["cast"], dtype=np.float32))
    # soft side light: one side of the crop a bit brighter than the other
    ramp = 1.0 + float(rng.uniform(-0.12, 0.12)) * np.linspace(-1, 1, width, dtype=np.float32)
    arr = arr * gain[None, None, :] * ramp[None, :, None]
    noise_std = getattr(diff, "noise_std", 0.0)
    if noise_std > 0:
        arr = arr + rng.normal(0.0, noise_std, size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
