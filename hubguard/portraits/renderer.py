"""Fingerprint vector -> dog portrait, drawn procedurally with Pillow.

HuRef draws its fingerprint vector with StyleGAN2-AFHQ-dog; those weights cannot be had here, and critics
found unrelated models whose GAN dogs looked alike. This renderer is procedural and deterministic: each
trait (head shape, ears, snout, eyes, nose, coat colours, markings, tongue, collar, background) is the
normal CDF of one fixed projection of the vector, Φ(wₖ·v), with the wₖ orthonormal. For v ~ N(0, I) every
trait is then uniform on [0, 1] and independent of the others, so independent fingerprints give clearly
different dogs, while a small change of v moves every trait a little (all drawing is continuous in the
traits: colours are interpolated along palettes, markings fade in through smoothsteps, ears bend
continuously from pricked to hanging), so nearby vectors give the same dog with small changes.

`FingerprintRenderer` is the interface a learned generator can implement later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from hubguard.errors import FingerprintError

if TYPE_CHECKING:
    import numpy
    from PIL import Image

VECTOR_DIM = 512
RENDERER_VERSION = "dog-procedural-v1"
_PROJECTION_SEED = 0x0D06  # fixed forever for this renderer version (legacy RandomState: a frozen stream)

TRAITS: tuple[str, ...] = (
    "head_width", "head_height", "head_square", "jowl", "ear_length", "ear_width", "ear_droop", "ear_set",
    "ear_round", "ear_dark", "snout_length", "snout_width", "muzzle_light", "nose_size", "nose_colour",
    "eye_size", "eye_spacing", "eye_colour", "eye_height", "brows", "fur", "fur_shade", "secondary",
    "blaze", "blaze_width", "mask", "patch_left", "patch_right", "spots", "spot_a", "spot_b", "spot_c",
    "chest", "tongue", "tongue_length", "collar_hue", "collar_on", "background", "background_light",
    "cheek_fluff", "head_tilt", "inner_ear",
)  # fmt: skip

# Natural coat colours along a loop: neighbours are similar, so a small step is a small colour change.
_FUR = [
    (246, 238, 222), (238, 214, 168), (222, 176, 108), (196, 126, 64), (160, 88, 48), (112, 72, 50),
    (62, 50, 46), (34, 32, 34), (96, 100, 110), (158, 160, 166), (214, 212, 208),
]  # fmt: skip
_EYES = [(60, 36, 20), (96, 58, 28), (140, 88, 36), (176, 124, 46), (122, 110, 60), (92, 132, 170)]
_NOSES = [(28, 26, 28), (52, 40, 38), (96, 58, 48), (146, 92, 84), (196, 130, 130)]


@runtime_checkable
class FingerprintRenderer(Protocol):
    """Draws a fingerprint vector as a picture; a learned generator can implement this too."""

    def render(self, *, vector: "numpy.ndarray", size: int = 512) -> "Image.Image": ...


@lru_cache(maxsize=1)
def _projection() -> "numpy.ndarray":
    import numpy as np

    rng = np.random.RandomState(_PROJECTION_SEED)
    q, r = np.linalg.qr(rng.standard_normal((VECTOR_DIM, len(TRAITS))))
    return (q * np.sign(np.diag(r))).T.astype(np.float64)  # [n_traits, VECTOR_DIM], orthonormal rows


def _check_vector(vector: object) -> "numpy.ndarray":
    import numpy as np

    try:
        v = np.asarray(vector, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FingerprintError(f"A dog needs a numeric fingerprint vector; got {type(vector).__name__}.") from exc
    if v.shape != (VECTOR_DIM,):
        raise FingerprintError(
            f"A dog needs a fingerprint vector of shape ({VECTOR_DIM},); got {v.shape}. "
            "Use hubguard.portraits.encoder.encode_terms to make one."
        )
    if not np.isfinite(v).all():
        raise FingerprintError("The fingerprint vector holds NaN or Inf, so no dog can be drawn. Recompute it.")
    return v


def dog_traits(*, vector: "numpy.ndarray") -> dict[str, float]:
    """The renderer's traits in [0, 1]: Φ of fixed orthonormal projections of the vector."""
    v = _check_vector(vector)
    z = _projection() @ v
    return {name: 0.5 * (1.0 + math.erf(float(x) / math.sqrt(2.0))) for name, x in zip(TRAITS, z, strict=True)}


# --- small continuous helpers ----------------------------------------------------------------------


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _smooth(edge0: float, edge1: float, x: float) -> float:
    t = min(1.0, max(0.0, (x - edge0) / (edge1 - edge0)))
    return t * t * (3 - 2 * t)


def _mix(c1: tuple, c2: tuple, t: float) -> tuple[int, int, int]:
    return tuple(int(round(_lerp(a, b, t))) for a, b in zip(c1[:3], c2[:3], strict=True))


def _palette(colours: list, t: float, *, loop: bool = False) -> tuple[int, int, int]:
    count = len(colours) if loop else len(colours) - 1
    pos = (t % 1.0 if loop else min(max(t, 0.0), 1.0)) * count
    i = min(int(pos), count - 1) if not loop else int(pos) % len(colours)
    return _mix(colours[i], colours[(i + 1) % len(colours)], pos - int(pos) if loop else pos - i)


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def _shade(c: tuple, f: float) -> tuple[int, int, int]:
    """f < 0 darkens towards black, f > 0 lightens towards white."""
    return _mix(c, (0, 0, 0), -f) if f < 0 else _mix(c, (255, 255, 255), f)


def _rgba(c: tuple, alpha: float) -> tuple[int, int, int, int]:
    return (*c[:3], int(round(255 * min(max(alpha, 0.0), 1.0))))


def _head_outline(cx, cy, hw, hh, square, jowl, cheek, steps=160):
    pts = []
    e = 2.0 / _lerp(2.0, 3.4, square)
    for i in range(steps):
        a = 2 * math.pi * i / steps
        c, s = math.cos(a), math.sin(a)
        y = math.copysign(abs(s) ** e, s)
        x = math.copysign(abs(c) ** e, c)
        widen = 1.0 + jowl * max(0.0, y) + cheek * math.exp(-((y - 0.35) ** 2) / 0.04) * 0.5
        pts.append((cx + hw * x * widen, cy + hh * y))
    return pts


def _ear(root, angle, length, width, roundness, bend, steps=40):
    """Teardrop ear: centreline from root along `angle` (radians, 0 = up, clockwise), bending by `bend`."""
    x, y = root
    centre, normals = [], []
    for i in range(steps + 1):
        t = i / steps
        a = angle + bend * t
        centre.append((x, y))
        normals.append((math.cos(a), math.sin(a)))
        x += math.sin(a) * length / steps
        y -= math.cos(a) * length / steps
    left, right = [], []
    for i, ((px, py), (nx, ny)) in enumerate(zip(centre, normals, strict=True)):
        t = i / steps
        half = 0.5 * width * math.sin(math.pi * (0.18 + 0.82 * t)) ** roundness
        left.append((px - nx * half, py - ny * half))
        right.append((px + nx * half, py + ny * half))
    return left + right[::-1]


def _mask_of(size: int, draw_fn) -> "Image.Image":
    from PIL import Image, ImageDraw

    mask = Image.new("L", (size, size), 0)
    draw_fn(ImageDraw.Draw(mask))
    return mask


@dataclass(frozen=True)
class _Colours:
    fur: tuple[int, int, int]
    second: tuple[int, int, int]  # markings
    light: tuple[int, int, int]  # muzzle, chest, blaze
    line: tuple[int, int, int]  # outlines
    ear: tuple[int, int, int]
    bg_top: tuple[int, int, int]
    bg_bottom: tuple[int, int, int]


def _colours(t: dict[str, float]) -> _Colours:
    fur = _shade(_palette(_FUR, t["fur"], loop=True), _lerp(-0.12, 0.12, t["fur_shade"]))
    second = _palette(_FUR, t["fur"] + 0.25 + 0.5 * t["secondary"], loop=True)
    return _Colours(
        fur=fur, second=second, light=_mix(fur, (250, 244, 232), _lerp(0.15, 0.85, t["muzzle_light"])),
        line=_shade(fur, -0.55), ear=_mix(fur, second, 0.8 * _smooth(0.35, 0.85, t["ear_dark"])),
        bg_top=_hsv(t["background"], 0.22, _lerp(0.86, 0.98, t["background_light"])),
        bg_bottom=_hsv(t["background"] + 0.05, 0.34, _lerp(0.74, 0.88, t["background_light"])),
    )


@dataclass(frozen=True)
class _Layout:
    """Where things sit on an s x s canvas (pixels)."""

    lw: int  # line width
    cx: float  # head centre
    cy: float
    hw: float  # head half width, half height
    hh: float
    head: list[tuple[float, float]]  # head outline
    eye_y: float
    eye_dx: float  # eye offset from the centre line
    eye_r: float
    snout_h: float
    snout_w: float
    my: float  # muzzle centre height


def _layout(t: dict[str, float], s: int) -> _Layout:
    cx, cy = 0.5 * s + _lerp(-0.02, 0.02, t["head_tilt"]) * s, 0.47 * s
    hw, hh = _lerp(0.22, 0.29, t["head_width"]) * s, _lerp(0.20, 0.26, t["head_height"]) * s
    jowl, cheek = _lerp(-0.14, 0.16, t["jowl"]), _lerp(0.0, 0.22, t["cheek_fluff"])
    return _Layout(
        lw=max(2, s // 200), cx=cx, cy=cy, hw=hw, hh=hh, head=_head_outline(cx, cy, hw, hh, t["head_square"], jowl, cheek),
        eye_y=cy - _lerp(0.02, 0.09, t["eye_height"]) * s, eye_dx=_lerp(0.075, 0.125, t["eye_spacing"]) * s,
        eye_r=_lerp(0.026, 0.046, t["eye_size"]) * s, snout_h=_lerp(0.10, 0.17, t["snout_length"]) * s,
        snout_w=_lerp(0.10, 0.16, t["snout_width"]) * s, my=cy + hh * 0.42,
    )


def _background(s: int, c: _Colours) -> "Image.Image":
    """Vertical gradient and a soft halo behind the head."""
    from PIL import Image, ImageFilter

    img = Image.linear_gradient("L").resize((s, s))
    img = Image.composite(Image.new("RGB", (s, s), c.bg_bottom), Image.new("RGB", (s, s), c.bg_top), img)
    halo = _mask_of(s, lambda d: d.ellipse((0.14 * s, 0.08 * s, 0.86 * s, 0.80 * s), fill=90))
    return Image.composite(Image.new("RGB", (s, s), _shade(c.bg_top, 0.45)), img,
                           halo.filter(ImageFilter.GaussianBlur(s / 20)))


def _draw_body(draw, t: dict[str, float], s: int, c: _Colours, g: _Layout) -> None:  # noqa: ANN001 - ImageDraw
    """Body, chest and collar (under the head)."""
    cy, hh, lw = g.cy, g.hh, g.lw
    bw = _lerp(0.30, 0.40, t["head_width"]) * s
    draw.ellipse((0.5 * s - bw, cy + hh * 0.9, 0.5 * s + bw, cy + hh * 0.9 + 2.2 * bw), fill=c.fur, outline=c.line, width=lw)
    draw.rectangle((g.cx - g.hw * 0.62, cy, g.cx + g.hw * 0.62, cy + hh * 1.3), fill=c.fur)
    chest_a = _smooth(0.3, 0.7, t["chest"])
    if chest_a > 0:
        cw = _lerp(0.08, 0.16, t["chest"]) * s
        draw.ellipse((0.5 * s - cw, cy + hh * 1.2, 0.5 * s + cw, 1.15 * s), fill=_rgba(c.light, chest_a))
    collar_a = _smooth(0.25, 0.45, t["collar_on"])
    if collar_a > 0:
        collar = _hsv(t["collar_hue"], 0.75, 0.8)
        cy2 = cy + hh * 0.98
        draw.rounded_rectangle((0.5 * s - 0.2 * s, cy2, 0.5 * s + 0.2 * s, cy2 + 0.05 * s), radius=0.02 * s,
                               fill=_rgba(collar, collar_a), outline=_rgba(_shade(collar, -0.4), collar_a), width=lw)
        tag = (0.5 * s, cy2 + 0.075 * s)
        draw.ellipse((tag[0] - 0.03 * s, tag[1] - 0.03 * s, tag[0] + 0.03 * s, tag[1] + 0.03 * s),
                     fill=_rgba((232, 190, 72), collar_a), outline=_rgba((150, 110, 30), collar_a), width=lw)


def _draw_back_ears(draw, t: dict[str, float], s: int, c: _Colours, g: _Layout) -> list:  # noqa: ANN001
    """Both ears behind the head; returns their (outer, inner) outlines for the hanging ears drawn in front."""
    droop = t["ear_droop"]
    ear_len = _lerp(0.17, 0.32, t["ear_length"]) * s * _lerp(0.85, 1.25, droop)
    ear_w = _lerp(0.11, 0.19, t["ear_width"]) * s
    set_angle = _lerp(0.45, 0.95, t["ear_set"])  # where on the head outline the ear sits
    tilt = _lerp(0.15, 2.85, droop)  # 0 = straight up, pi = straight down
    bend = _lerp(0.1, 0.5, droop * (1 - droop) * 2.5) * _lerp(0.4, 1.1, t["ear_round"])
    roundness = _lerp(1.4, 0.45, 0.6 * droop + 0.4 * t["ear_round"])
    inner = _mix(c.ear, (236, 170, 168), _lerp(0.35, 0.75, t["inner_ear"]))
    ears = []
    for side in (-1, 1):
        root = (g.cx + side * g.hw * (math.sin(set_angle) * 0.9 + 0.3 * droop**2), g.cy - g.hh * math.cos(set_angle) * 0.95)
        outer = _ear(root, side * tilt, ear_len, ear_w, roundness, side * bend)
        inner_pts = _ear(root, side * tilt, ear_len * 0.78, ear_w * 0.55, roundness, side * bend)
        ears.append((outer, inner_pts))
    upright = 1.0 - _smooth(0.35, 0.65, droop)
    for outer, inner_pts in ears:
        draw.polygon(outer, fill=c.ear, outline=c.line, width=g.lw)
        if upright > 0:
            draw.polygon(inner_pts, fill=_rgba(inner, upright))
    return ears


def _draw_markings(img: "Image.Image", t: dict[str, float], s: int, c: _Colours, g: _Layout) -> "Image.Image":
    """Mask, eye patches, spots and blaze, clipped to the head; then the head's outline."""
    from PIL import Image, ImageDraw

    cx, cy, hw, hh, eye_y, eye_r = g.cx, g.cy, g.hw, g.hh, g.eye_y, g.eye_r
    head_mask = _mask_of(s, lambda d: d.polygon(g.head, fill=255))
    marks = img.copy()
    md = ImageDraw.Draw(marks, "RGBA")
    mask_a = 0.75 * _smooth(0.6, 0.85, t["mask"])
    if mask_a > 0:
        md.ellipse((cx - hw * 0.75, eye_y - eye_r * 2.2, cx + hw * 0.75, cy + hh * 1.1), fill=_rgba(c.second, mask_a))
    for side, key in ((-1, "patch_left"), (1, "patch_right")):
        a = _smooth(0.62, 0.8, t[key])
        if a > 0:
            r = eye_r * _lerp(2.0, 3.2, t[key])
            ex = cx + side * g.eye_dx
            md.ellipse((ex - r, eye_y - r * 1.1, ex + r * 1.1, eye_y + r), fill=_rgba(c.second, a))
    spot_a = _smooth(0.55, 0.8, t["spots"])
    if spot_a > 0:
        for key, (ox, oy) in (("spot_a", (-0.55, -0.55)), ("spot_b", (0.6, -0.2)), ("spot_c", (-0.3, 0.1))):
            r = _lerp(0.25, 0.5, t[key]) * hw
            px, py = cx + (ox + 0.3 * (t[key] - 0.5)) * hw, cy + (oy - 0.3 * (t[key] - 0.5)) * hh
            md.ellipse((px - r, py - r, px + r, py + r * 0.9), fill=_rgba(c.second, spot_a))
    blaze_a = _smooth(0.5, 0.75, t["blaze"])
    if blaze_a > 0:
        bw = _lerp(0.025, 0.07, t["blaze_width"]) * s
        md.polygon([(cx - bw * 0.6, cy - hh * 1.05), (cx + bw * 0.6, cy - hh * 1.05), (cx + bw * 1.4, cy + hh * 0.2),
                    (cx - bw * 1.4, cy + hh * 0.2)], fill=_rgba(c.light, blaze_a))  # fmt: skip
    img = Image.composite(marks, img, head_mask)
    ImageDraw.Draw(img, "RGBA").polygon(g.head, outline=c.line, width=g.lw)
    return img


def _draw_front_ears(img: "Image.Image", t: dict[str, float], s: int, c: _Colours, g: _Layout,
                     ears: list) -> "Image.Image":
    """Hanging ears again, in front of the head, faded in as they droop."""
    from PIL import Image, ImageDraw

    front = _smooth(0.4, 0.7, t["ear_droop"])
    if front <= 0:
        return img
    layer = img.copy()
    ld = ImageDraw.Draw(layer, "RGBA")
    for outer, _ in ears:
        ld.polygon(outer, fill=c.ear, outline=c.line, width=g.lw)
    ear_mask = _mask_of(s, lambda d: [d.polygon(o, fill=int(255 * front)) for o, _ in ears])
    return Image.composite(layer, img, ear_mask)


def _draw_eyes(draw, t: dict[str, float], c: _Colours, g: _Layout) -> None:  # noqa: ANN001 - ImageDraw
    """Muzzle, brows and eyes."""
    cx, eye_y, eye_r = g.cx, g.eye_y, g.eye_r
    draw.ellipse((cx - g.snout_w, g.my - g.snout_h * 0.55, cx + g.snout_w, g.my + g.snout_h), fill=c.light)
    brow_a = _smooth(0.6, 0.8, t["brows"])
    for side in (-1, 1):
        ex = cx + side * g.eye_dx
        if brow_a > 0:
            bx, by, br = ex + side * eye_r * 0.3, eye_y - eye_r * 1.9, eye_r * 0.55
            draw.ellipse((bx - br * 1.3, by - br, bx + br * 1.3, by + br), fill=_rgba(_mix(c.second, c.light, 0.4), brow_a))
        iris = _palette(_EYES, t["eye_colour"] ** 1.6)
        draw.ellipse((ex - eye_r * 1.15, eye_y - eye_r * 1.1, ex + eye_r * 1.15, eye_y + eye_r * 1.1), fill=(28, 22, 22))
        draw.ellipse((ex - eye_r, eye_y - eye_r, ex + eye_r, eye_y + eye_r), fill=iris)
        pr = eye_r * 0.55
        draw.ellipse((ex - pr, eye_y - pr, ex + pr, eye_y + pr), fill=(14, 12, 12))
        hr = eye_r * 0.32
        hx, hy = ex - eye_r * 0.35, eye_y - eye_r * 0.4
        draw.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=(255, 255, 255, 235))


def _draw_nose_and_mouth(draw, t: dict[str, float], s: int, c: _Colours, g: _Layout) -> None:  # noqa: ANN001
    """Nose, tongue and mouth."""
    cx, lw = g.cx, g.lw
    nose_col = _palette(_NOSES, t["nose_colour"] ** 1.5)
    nw = _lerp(0.045, 0.075, t["nose_size"]) * s
    ny = g.my - g.snout_h * 0.05
    nose = [(cx - nw, ny - nw * 0.35), (cx + nw, ny - nw * 0.35), (cx + nw * 0.55, ny + nw * 0.45),
            (cx, ny + nw * 0.7), (cx - nw * 0.55, ny + nw * 0.45)]  # fmt: skip
    draw.polygon(nose, fill=nose_col)
    draw.rounded_rectangle((cx - nw, ny - nw * 0.45, cx + nw, ny + nw * 0.3), radius=nw * 0.35, fill=nose_col)
    draw.ellipse((cx - nw * 0.55, ny - nw * 0.32, cx - nw * 0.1, ny - nw * 0.05), fill=(255, 255, 255, 110))
    mouth_y = ny + nw * 0.7 + g.snout_h * 0.28
    mouth_w = g.snout_w * 0.55
    tongue_a = _smooth(0.45, 0.7, t["tongue"])
    if tongue_a > 0:
        tl = _lerp(0.025, 0.065, t["tongue_length"]) * s
        tw = mouth_w * 0.42
        tongue_col = (226, 106, 120)
        tongue = [(cx - tw, mouth_y - tw * 0.3), (cx + tw, mouth_y - tw * 0.3)]
        tongue += [(cx + tw * math.cos(a * math.pi / 24), mouth_y + tl + tw * math.sin(a * math.pi / 24)) for a in range(25)]
        draw.polygon(tongue, fill=_rgba(tongue_col, tongue_a), outline=_rgba(_shade(tongue_col, -0.35), tongue_a), width=lw)
        draw.line((cx, mouth_y, cx, mouth_y + tl * 0.6), fill=_rgba(_shade(tongue_col, -0.3), tongue_a), width=lw)
    mw = max(3, int(lw * 1.5))
    draw.line((cx, ny + nw * 0.65, cx, mouth_y), fill=c.line, width=mw)
    for side in (-1, 1):
        box = (cx + min(0, side) * mouth_w, mouth_y - mouth_w * 0.5, cx + max(0, side) * mouth_w, mouth_y + mouth_w * 0.35)
        draw.arc(box, 20, 160, fill=c.line, width=mw)


class DogRenderer:
    """The default renderer: a procedural dog portrait, deterministic and smooth in the vector."""

    version = RENDERER_VERSION

    def traits(self, *, vector: "numpy.ndarray") -> dict[str, float]:
        return dog_traits(vector=vector)

    def render(self, *, vector: "numpy.ndarray", size: int = 512) -> "Image.Image":
        from PIL import Image

        if not isinstance(size, int) or isinstance(size, bool) or not 64 <= size <= 4096:
            raise FingerprintError(f"A dog picture's size must be an integer from 64 to 4096 pixels; got {size!r}.")
        t = dog_traits(vector=vector)
        canvas = self._draw(t, 2 * size)
        return canvas.resize((size, size), Image.Resampling.LANCZOS)

    def _draw(self, t: dict[str, float], s: int) -> "Image.Image":
        """The portrait at s x s pixels, back to front: background, body, ears, head, markings, face."""
        from PIL import ImageDraw

        c, g = _colours(t), _layout(t, s)
        img = _background(s, c)
        draw = ImageDraw.Draw(img, "RGBA")
        _draw_body(draw, t, s, c, g)
        ears = _draw_back_ears(draw, t, s, c, g)
        draw.polygon(g.head, fill=c.fur)
        img = _draw_markings(img, t, s, c, g)
        img = _draw_front_ears(img, t, s, c, g, ears)
        draw = ImageDraw.Draw(img, "RGBA")
        _draw_eyes(draw, t, c, g)
        _draw_nose_and_mouth(draw, t, s, c, g)
        return img


def render_dog(*, vector: "numpy.ndarray", size: int = 512) -> "Image.Image":
    """Draw the default dog for a fingerprint vector: a size x size RGB image."""
    return DogRenderer().render(vector=vector, size=size)


def image_distance(*, a: "Image.Image", b: "Image.Image") -> float:
    """Perceptual-ish distance between two dog pictures, in [0, 1].

    Both are blurred and downsampled to 64x64 (what a moderator takes in at a glance: coat colours, markings,
    ear silhouette, not anti-aliasing pixels), then compared as root-mean-square RGB difference.
    """
    import numpy as np
    from PIL import Image, ImageFilter

    def small(img: "Image.Image") -> "numpy.ndarray":
        img = img.convert("RGB").resize((128, 128), Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(1.5))
        return np.asarray(img.resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0

    return float(np.sqrt(np.mean((small(a) - small(b)) ** 2)))


def trait_distance(*, a: "numpy.ndarray", b: "numpy.ndarray") -> float:
    """Euclidean distance between the renderer's trait vectors (each trait in [0, 1]) of two fingerprint vectors.

    This is the distance between what the renderer draws, before pixels: it does not saturate as early as
    `image_distance` (where background and layout are shared by all dogs), so it ranks related dogs better.
    Independent N(0, I) vectors give about sqrt(n_traits / 6) ≈ 2.6.
    """
    ta, tb = dog_traits(vector=a), dog_traits(vector=b)
    return math.sqrt(sum((ta[k] - tb[k]) ** 2 for k in ta))
