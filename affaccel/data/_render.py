"""Procedural face renderer of the synthetic Aff-Wild2 set (NumPy + OpenCV polygon drawing).

A face is drawn in *face coordinates* (u to the right, v downwards, head half-width ~1, origin
between the eyes and the mouth), projected through a small head pose (yaw, roll, scale,
translation) and filled with anti-aliased OpenCV polygons. Appearance is driven by the labels:

- valence   -> mouth-corner curvature (up for positive), slight mouth widening;
- arousal   -> eye openness, brow raise, lips apart (and head-shake speed, in the label module);
- each action unit moves the part it names (see ``_brows``, ``_eyes``, ``_mouth``, ``_cheeks``).

``render_face`` returns an RGB layer with an alpha mask (the head silhouette plus occluders), so
the same face can be composited on a crop background (the 112x112 ``cropped_aligned`` frame) or,
resized, into a larger raw-video scene. ``finish_crop`` adds the per-frame nuisances (lighting,
sensor noise, blur) that make a single frame ambiguous.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# AU order of the annotation files (affaccel.tasks.ACTION_UNITS); indices used below.
AU1, AU2, AU4, AU6, AU7, AU10, AU12, AU15, AU23, AU24, AU25, AU26 = range(12)

_SHIFT = 4                      # sub-pixel precision of cv2 polygon drawing (1/16 px)
_ONE = 1 << _SHIFT
_LINE = cv2.LINE_AA

_SKIN_LIGHT = np.array([238.0, 205.0, 180.0])
_SKIN_DARK = np.array([92.0, 60.0, 44.0])
_HAIR = np.array([[25, 20, 18], [70, 45, 30], [125, 85, 50], [200, 165, 105], [150, 70, 35],
                  [165, 160, 155]], dtype=np.float64)
_IRIS = np.array([[60, 40, 25], [40, 80, 120], [70, 100, 60], [30, 25, 20]], dtype=np.float64)


@dataclass
class Identity:
    """Appearance of one person (constant over a video). Lengths are in face units."""
    head_w: float
    head_h: float
    jaw_w: float
    skin: tuple
    hair: tuple
    hair_style: int          # 0 short cap, 1 long sides, 2 very short, 3 fringe
    brow_color: tuple
    iris: tuple
    lip: tuple
    eye_dx: float            # half distance between the eyes
    eye_w: float
    eye_h: float
    brow_gap: float          # brow height above the eye centre
    brow_thick: float
    nose_len: float
    mouth_w: float
    lip_t: float
    rest_curve: float        # resting mouth curvature: some people look a little happy/sad
    glasses: bool
    bg: tuple                # crop background colour
    bg2: tuple               # second background colour (gradient)


def _colour(c) -> tuple:
    return tuple(float(x) for x in np.clip(c, 0, 255))


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw a random person: face shape, skin tone, hair, eyes, mouth, glasses, background."""
    tone = rng.uniform(0.0, 1.0)
    skin = _SKIN_LIGHT * (1 - tone) + _SKIN_DARK * tone + rng.normal(0, 8, 3)
    hair = _HAIR[rng.integers(len(_HAIR))] + rng.normal(0, 10, 3)
    brow = np.minimum(hair, skin) * 0.6
    lip = skin * np.array([0.85, 0.55, 0.55]) + np.array([30.0, 0.0, 5.0])
    bg = rng.uniform(40, 215, 3)
    return Identity(
        head_w=rng.uniform(0.88, 1.06), head_h=rng.uniform(1.22, 1.42),
        jaw_w=rng.uniform(0.72, 0.92), skin=_colour(skin), hair=_colour(hair),
        hair_style=int(rng.integers(4)), brow_color=_colour(brow),
        iris=_colour(_IRIS[rng.integers(len(_IRIS))] + rng.normal(0, 6, 3)), lip=_colour(lip),
        eye_dx=rng.uniform(0.33, 0.41), eye_w=rng.uniform(0.15, 0.2),
        eye_h=rng.uniform(0.075, 0.095), brow_gap=rng.uniform(0.15, 0.2),
        brow_thick=rng.uniform(0.035, 0.06), nose_len=rng.uniform(0.3, 0.4),
        mouth_w=rng.uniform(0.3, 0.4), lip_t=rng.uniform(0.04, 0.065),
        rest_curve=rng.uniform(-0.05, 0.05), glasses=bool(rng.random() < 0.15),
        bg=_colour(bg), bg2=_colour(bg * rng.uniform(0.6, 1.2, 3)),
    )


@dataclass
class FaceState:
    """Everything that changes per frame. ``au`` are intensities in [0, 1] (label = > 0.5)."""
    valence: float
    arousal: float
    au: np.ndarray           # [12] float
    blink: float = 0.0       # 0 open .. 1 closed
    dx: float = 0.0          # head translation in pixels of the 112 crop
    dy: float = 0.0
    roll: float = 0.0        # radians
    yaw: float = 0.0         # radians
    scale: float = 1.0
    curve_jitter: float = 0.0   # label-independent per-frame shape noise (face units)
    brow_jitter: float = 0.0
    eye_jitter: float = 0.0     # relative
    occluder: tuple | None = None   # (kind, cx, cy, w, h, colour) in crop pixels


class _Pose:
    """Face coordinates -> fixed-point pixel coordinates of a size x size image."""

    def __init__(self, st: FaceState, size: int, yaw_depth: float = 0.55):
        self.s = size / 112.0 * 35.0 * st.scale          # pixels per face unit
        self.cx = size * 0.5 + st.dx * size / 112.0
        self.cy = size * 0.53 + st.dy * size / 112.0
        self.cr, self.sr = np.cos(st.roll), np.sin(st.roll)
        self.cy_, self.sy_ = np.cos(st.yaw), np.sin(st.yaw)
        self.depth = yaw_depth

    def px(self, pts: np.ndarray, flat=False) -> np.ndarray:
        """pts: [N, 2] face coordinates; flat: bool or bool [N] (outline points: no depth)."""
        u, v = pts[:, 0], pts[:, 1]
        # points on the front of the head move more under yaw than the outline does
        z = np.sqrt(np.maximum(1.0 - (u * (1 / 1.1)) ** 2 - (v * (1 / 1.6)) ** 2, 0.0))
        z = np.where(flat, 0.0, z)
        uu = u * self.cy_ + z * (self.depth * self.sy_)
        out = np.empty(pts.shape, np.float64)
        k = self.s * _ONE
        out[:, 0] = (self.cx * _ONE + 0.5) + k * (uu * self.cr - v * self.sr)
        out[:, 1] = (self.cy * _ONE + 0.5) + k * (uu * self.sr + v * self.cr)
        return out.astype(np.int32)


_ANG = np.linspace(0, 2 * np.pi, 24, endpoint=False)
_CS = np.stack([np.cos(_ANG), np.sin(_ANG)], 1)
_S = np.linspace(-1.0, 1.0, 11)


def _ellipse(cx, cy, rx, ry) -> np.ndarray:
    return _CS * (rx, ry) + (cx, cy)


class _DrawList:
    """Shapes of one face in face coordinates, projected in ONE batched call at the end.

    Projecting each of the ~25 shapes separately costs more NumPy call overhead than drawing.
    """

    def __init__(self):
        self.shapes = []      # (kind, n points, colour, thickness, closed, silhouette)
        self.pts = []
        self.flat = []

    def fill(self, pts, colour, flat=False, silhouette=False):
        self.shapes.append(("fill", len(pts), colour, 0, False, silhouette))
        self.pts.append(pts)
        self.flat.append(flat)

    def line(self, pts, colour, thick, closed=False):
        self.shapes.append(("line", len(pts), colour, max(1, int(round(thick))), closed, False))
        self.pts.append(pts)
        self.flat.append(False)

    def draw(self, img, alpha, pose: "_Pose") -> None:
        lengths = [s[1] for s in self.shapes]
        flat = np.repeat(np.array(self.flat), lengths)
        px = pose.px(np.concatenate(self.pts), flat=flat)
        start = 0
        for (kind, n, colour, thick, closed, sil), in zip(self.shapes):
            p = px[start:start + n]
            start += n
            if kind == "fill":
                _fill(img, p, colour)
                if sil and alpha is not None:
                    _fill(alpha, p, 255)
            else:
                cv2.polylines(img, [p], closed, colour, thick, _LINE, _SHIFT)


def _fill(img, pts, colour):
    cv2.fillPoly(img, [pts], colour, _LINE, _SHIFT)


def _line(img, pts, colour, thick):
    cv2.polylines(img, [pts], False, colour, max(1, int(round(thick))), _LINE, _SHIFT)


def _head_outline(idt: Identity, jaw_drop: float) -> np.ndarray:
    """Skull ellipse on top, narrowing to the jaw; the chin moves down with AU26."""
    top = _CS_TOP * (idt.head_w, idt.head_h * 0.85) + (0.0, 0.05)      # upper half (v < 0)
    low_h = idt.head_h + 0.16 * jaw_drop
    w = idt.head_w * (idt.jaw_w + (1 - idt.jaw_w) * _JAW_SHAPE)
    bottom = np.stack([w * _CS_BOT[:, 0], low_h * _CS_BOT[:, 1] * 0.92 + 0.05], 1)
    return np.concatenate([top, bottom])


_T_TOP = np.linspace(np.pi, 2 * np.pi, 16)
_CS_TOP = np.stack([np.cos(_T_TOP), np.sin(_T_TOP)], 1)
_T_BOT = np.linspace(0, np.pi, 16)
_CS_BOT = np.stack([np.cos(_T_BOT), np.sin(_T_BOT)], 1)
_JAW_SHAPE = np.abs(np.cos(_T_BOT)) ** 0.7


def _hair(idt: Identity) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(behind-the-head polygon, on-top polygon) of the hair style (cached on the identity)."""
    cached = idt.__dict__.get("_hair_cache")
    if cached is None:
        cached = idt.__dict__["_hair_cache"] = _hair_polygons(idt)
    return cached


def _hair_polygons(idt: Identity) -> tuple[np.ndarray | None, np.ndarray]:
    w, h = idt.head_w, idt.head_h
    t = np.linspace(np.pi, 2 * np.pi, 18)
    back = None
    if idt.hair_style == 1:      # long hair falling behind the head to the shoulders
        back = np.array([[-w * 1.12, -0.2], [-w * 1.18, h * 1.05], [w * 1.18, h * 1.05],
                         [w * 1.12, -0.2]])
        back = np.concatenate([np.stack([w * 1.12 * np.cos(t), h * 0.95 * np.sin(t) - 0.2], 1),
                               back[[2, 1]]])
    thick = {0: 0.22, 1: 0.25, 2: 0.1, 3: 0.3}[idt.hair_style]
    outer = np.stack([w * 1.06 * np.cos(t), (h * 0.85 + thick) * np.sin(t) + 0.05], 1)
    line = -0.55 if idt.hair_style != 3 else -0.42       # hairline (fringe lower)
    inner_t = np.linspace(2 * np.pi, np.pi, 18)
    inner = np.stack([w * 0.98 * np.cos(inner_t),
                      np.minimum((h * 0.85 - 0.02) * np.sin(inner_t) + 0.05, line)], 1)
    inner[:, 1] = np.minimum(inner[:, 1], line + 0.25 * np.abs(np.cos(inner_t)))
    return back, np.concatenate([outer, inner])


def _eyes(d, pose, idt: Identity, st: FaceState, skin_dark):
    a = st.au
    arousal01 = 0.5 * (st.arousal + 1.0)
    # arousal widens the eyes; AU7 tightens the lids; AU6 pushes the lower lid up; blinks close.
    opening = idt.eye_h * (0.45 + 1.1 * arousal01) * (1 + st.eye_jitter)
    opening *= (1 - 0.5 * a[AU7]) * (1 - 0.3 * a[AU6]) * (1 - st.blink)
    ey = -0.05
    for side in (-1, 1):
        ex = side * idt.eye_dx
        lower_lift = 0.03 * a[AU6]
        if opening < 0.012:
            pts = np.stack([ex + _S * idt.eye_w, ey + 0.01 * (1 - _S ** 2)], 1)
            d.line(pts, (30, 25, 25), pose.s * 0.03)
            continue
        d.fill(_ellipse(ex, ey - lower_lift * 0.5, idt.eye_w, opening), (238, 236, 230))
        r = min(0.062, opening * 0.95)
        d.fill(_ellipse(ex, ey - lower_lift * 0.5, r, r), idt.iris)
        d.fill(_ellipse(ex, ey - lower_lift * 0.5, r * 0.45, r * 0.45), (15, 12, 12))
        # upper lid line; AU7 makes it heavier (tight lids)
        lid = np.stack([ex + _S * idt.eye_w * 1.05,
                        ey - lower_lift * 0.5 - opening * np.sqrt(1 - _S ** 2) * 1.02], 1)
        d.line(lid, (35, 28, 28), pose.s * (0.025 + 0.03 * a[AU7]))
        if a[AU7] > 0.05:   # tight lower lid line
            low = np.stack([ex + _S * idt.eye_w,
                            ey + opening * np.sqrt(1 - _S ** 2) * 0.9 - lower_lift], 1)
            d.line(low, skin_dark, pose.s * 0.03 * a[AU7] + 1)
        if idt.glasses:
            d.line(_ellipse(ex, ey, idt.eye_w * 1.35, 0.16), (30, 30, 35), pose.s * 0.035,
                   closed=True)


def _brows(d, pose, idt: Identity, st: FaceState, skin_dark):
    a = st.au
    base = -0.05 - idt.brow_gap - 0.12 * st.arousal + st.brow_jitter
    for side in (-1, 1):
        # AU1 raises the inner end, AU2 the outer end, AU4 lowers and pulls the inner end in.
        inner_y = base - 0.18 * a[AU1] + 0.14 * a[AU4]
        outer_y = base - 0.18 * a[AU2] + 0.05 * a[AU4]
        inner_x = side * (idt.eye_dx - idt.eye_w * 0.95 - 0.06 * a[AU4])
        outer_x = side * (idt.eye_dx + idt.eye_w * 1.15)
        s = (_S + 1) * 0.5
        x = inner_x + (outer_x - inner_x) * s
        y = inner_y + (outer_y - inner_y) * s - 0.05 * np.sin(np.pi * s)
        t = idt.brow_thick * (1.0 - 0.4 * s)
        pts = np.concatenate([np.stack([x, y - t / 2], 1), np.stack([x, y + t / 2], 1)[::-1]])
        d.fill(pts, idt.brow_color)
    if a[AU4] > 0.1:   # glabella furrows between lowered brows
        for side in (-1, 1):
            pts = np.array([[side * 0.06, -0.32], [side * 0.045, -0.18]])
            d.line(pts, skin_dark, pose.s * 0.025 * a[AU4] + 0.5)


def _cheeks(d, pose, idt: Identity, st: FaceState, cheek_col):
    # AU6 (cheek raiser): round cheeks rise and bulge.
    a6 = st.au[AU6]
    if a6 < 0.05:
        return
    for side in (-1, 1):
        e = _ellipse(side * 0.52, 0.28 - 0.1 * a6, 0.17 + 0.05 * a6, 0.1 + 0.04 * a6)
        d.fill(e, cheek_col)


def _nose(d, pose, idt: Identity, st: FaceState, skin_dark):
    n = idt.nose_len
    d.line(np.array([[0.02, 0.0], [0.05, 0.1 + n * 0.6], [0.0, 0.13 + n * 0.75]]),
          skin_dark, pose.s * 0.03)
    for side in (-1, 1):
        d.fill(_ellipse(side * 0.07, 0.1 + n * 0.78, 0.035, 0.02), skin_dark)
    # nasolabial folds deepen with AU10 (upper lip raiser), a little with AU12 and AU6
    depth = st.au[AU10] + 0.4 * st.au[AU12]
    if depth > 0.1:
        for side in (-1, 1):
            pts = np.array([[side * 0.14, 0.1 + n * 0.7], [side * 0.27, 0.32 + n * 0.3],
                            [side * 0.3, 0.52 + n * 0.2]])
            d.line(pts, skin_dark, pose.s * 0.022 * depth + 0.5)


def _mouth(d, pose, idt: Identity, st: FaceState):
    a = st.au
    v = st.valence
    arousal_pos = max(st.arousal, 0.0)
    # corners: valence and AU12 pull up, AU15 pulls down (v axis points down)
    curve = -(0.28 * v + 0.15 * a[AU12] - 0.15 * a[AU15] + idt.rest_curve + st.curve_jitter)
    half_w = idt.mouth_w * (1 + 0.2 * a[AU12] - 0.25 * a[AU23] - 0.1 * a[AU24] + 0.04 * v)
    lip = idt.lip_t * (1 - 0.6 * a[AU24] - 0.45 * a[AU23])
    gap = 0.05 * a[AU25] + 0.12 * a[AU26] * (0.3 + 0.7 * a[AU25]) + 0.02 * arousal_pos
    lift = 0.06 * a[AU10]
    yc = 0.02 + idt.nose_len + 0.17 + 0.5 * gap + 0.06 * a[AU26]
    s2 = _S ** 2
    bulge = np.sqrt(1 - s2)
    x = _S * half_w
    mid = yc + curve * s2
    up_in = mid - 0.5 * gap * bulge
    lo_in = mid + 0.5 * gap * bulge
    up_out = up_in - (lip + lift) * bulge ** 0.7 + 0.012 * np.cos(np.pi * _S * 2) * bulge
    lo_out = lo_in + lip * 1.25 * bulge ** 0.7
    outer = np.concatenate([np.stack([x, up_out], 1), np.stack([x, lo_out], 1)[::-1]])
    d.fill(outer, idt.lip)
    if gap > 0.008:
        inner = np.concatenate([np.stack([x * 0.95, up_in], 1), np.stack([x * 0.95, lo_in], 1)[::-1]])
        d.fill(inner, (55, 18, 22))
        if gap > 0.03:   # upper teeth
            teeth = np.concatenate([np.stack([x * 0.7, up_in + 0.004], 1),
                                    np.stack([x * 0.7, up_in + 0.35 * gap * bulge], 1)[::-1]])
            d.fill(teeth, (235, 232, 220))
    else:
        line_col = tuple(c * 0.55 for c in idt.lip)
        d.line(np.stack([x, mid], 1), line_col, pose.s * (0.02 + 0.02 * a[AU24]))


def render_face(idt: Identity, st: FaceState, size: int = 112,
                canvas: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Draw one face.

    Without ``canvas``: returns ``rgb: [size, size, 3] uint8`` and ``alpha: [size, size] uint8``
    (pixels outside the silhouette -- hair, head, neck, occluder -- have alpha 0), for compositing
    into a larger scene. With ``canvas`` (uint8 [size, size, 3], e.g. the crop background) the
    face is drawn onto it in place and ``(canvas, None)`` is returned: no alpha work, the fast path
    of the 112x112 crops.
    """
    img = np.zeros((size, size, 3), np.uint8) if canvas is None else canvas
    alpha = np.zeros((size, size), np.uint8) if canvas is None else None
    pose = _Pose(st, size)
    d = _DrawList()
    skin = idt.skin
    skin_dark = tuple(c * 0.72 for c in skin)
    cheek = (min(255.0, skin[0] * 1.02 + 12), skin[1] * 0.9, skin[2] * 0.88)

    back, top = _hair(idt)
    if back is not None:
        d.fill(back, idt.hair, flat=True, silhouette=True)
    d.fill(_NECK, skin_dark, flat=True, silhouette=True)
    d.fill(_head_outline(idt, st.au[AU26]), skin, flat=True, silhouette=True)
    for side in (-1, 1):   # ears
        d.fill(_ellipse(side * idt.head_w * 0.98, 0.02, 0.09, 0.17), skin_dark, flat=True,
               silhouette=True)
    d.fill(top, idt.hair, flat=True, silhouette=True)

    _cheeks(d, pose, idt, st, cheek)
    _eyes(d, pose, idt, st, skin_dark)
    _brows(d, pose, idt, st, skin_dark)
    _nose(d, pose, idt, st, skin_dark)
    _mouth(d, pose, idt, st)
    d.draw(img, alpha, pose)
    if st.occluder is not None:
        draw_occluder(img, alpha, st.occluder, size)
    return img, alpha


_NECK = np.array([[-0.42, 0.9], [0.42, 0.9], [0.5, 2.4], [-0.5, 2.4]])


def draw_occluder(img, alpha, occ, size: int) -> None:
    """Hand (skin ellipse with fingers) or bar (rectangle), given in 112-crop pixels."""
    kind, cx, cy, w, h, col = occ
    k = size / 112.0
    cx, cy, w, h = cx * k, cy * k, w * k, h * k
    if kind == "bar":
        pts = np.array([[cx - w / 2, cy - h / 2], [cx + w / 2, cy - h / 2],
                        [cx + w / 2, cy + h / 2], [cx - w / 2, cy + h / 2]])
        polys = [pts]
    else:
        palm = _ellipse(cx, cy, w / 2, h / 2)
        polys = [palm] + [np.array([[cx - w / 2 + (i + 0.15) * w / 4, cy - h * 0.3],
                                    [cx - w / 2 + (i + 0.85) * w / 4, cy - h * 0.3],
                                    [cx - w / 2 + (i + 0.8) * w / 4, cy - h * 0.95],
                                    [cx - w / 2 + (i + 0.2) * w / 4, cy - h * 0.95]])
                          for i in range(4)]
    for poly in polys:
        p = np.round(poly * _ONE).astype(np.int32)
        _fill(img, p, col)
        if alpha is not None:
            _fill(alpha, p, 255)


def background(idt: Identity, size: int) -> np.ndarray:
    """Crop background: a vertical gradient between the identity's two colours, uint8 [S,S,3]."""
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    g = (np.asarray(idt.bg, np.float32) * (1 - t) + np.asarray(idt.bg2, np.float32) * t
         ) * np.ones((1, size, 1), np.float32)
    return np.clip(g + 0.5, 0, 255).astype(np.uint8)


def light_map(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
    """Directional lighting gain [S, S, 3] float32: 1 +/- strength across the image."""
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) - 0.5
    g = 1.0 + strength * 2 * (np.cos(ang) * xx + np.sin(ang) * yy)
    return np.repeat(g[..., None], 3, axis=2).astype(np.float32)


def composite_u8(rgb: np.ndarray, alpha: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Alpha-blend an RGB layer [H,W,3] uint8 (alpha [H,W] uint8) over ``base`` -> new uint8."""
    a = alpha.astype(np.float32)[..., None] * np.float32(1.0 / 255.0)
    b = base.astype(np.float32)
    return (b + a * (rgb.astype(np.float32) - b) + 0.5).astype(np.uint8)


class NoiseBank:
    """Unit-variance Gaussian noise fields [K, S, S, 3] float32, drawn once per video.

    Drawing 37k normals costs ~1 ms, longer than rendering a frame, so each frame takes a field
    of the bank at random (with a random flip): 4K variants, reused rarely enough to stay noise.
    """

    def __init__(self, rng: np.random.Generator, size: int, k: int = 16):
        self.fields = rng.standard_normal((k, size, size, 3), dtype=np.float32)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        i, flip = int(rng.integers(len(self.fields))), int(rng.integers(4))
        f = self.fields[i]
        return f[::-1 if flip & 1 else 1, ::-1 if flip & 2 else 1]


def finish_crop(img: np.ndarray, light: np.ndarray, noise_sigma: float, blur_sigma: float,
                rng: np.random.Generator, bank: NoiseBank) -> np.ndarray:
    """Lighting gain map (float32 [S,S,3]) + optional Gaussian blur + sensor noise.

    img: uint8 [S, S, 3] (face drawn on its background) -> uint8 [S, S, 3].
    """
    f = cv2.multiply(img, light, dtype=cv2.CV_32F)
    if blur_sigma > 0:
        f = cv2.GaussianBlur(f, (0, 0), blur_sigma)
    if noise_sigma > 0:
        f = cv2.scaleAdd(np.ascontiguousarray(bank.draw(rng)), float(noise_sigma), f)
    np.clip(f, 0, 255, out=f)
    return f.astype(np.uint8)
