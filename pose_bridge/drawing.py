"""Skeleton images as the released Animate Anyone weights saw them (DWPose's drawing).

(About 430 lines: one convention, body, hands and face, whose pixel rules are easiest to check
side by side.)

docs/skeleton.md is the specification. DWPose draws with OpenCV; this module draws
the same pixels with numpy alone, because it must also run inside Blender's Python (numpy,
no Pillow, no cv2). The OpenCV primitives DWPose uses are re-implemented with their
integer arithmetic:

- a limb is cv2.ellipse2Poly(centre, (int(length / 2), 4), int(angle), 0, 360, 1) filled
  with cv2.fillConvexPoly: 361 points from a sine table of whole degrees (stored as 7-digit
  float32 values), rounded half-to-even (cvRound), consecutive duplicates dropped; the fill
  draws the outline with 8-connected Bresenham lines and fills each scanline between the two
  edges walked in 16.16 fixed point;
- the centre is (int(mean x), int(mean y)) and the angle int(degrees(atan2(y0 - y1, x0 - x1))),
  as DWPose computes them (its code names the x coordinates Y and the y coordinates X);
- after all limbs the canvas is multiplied by 0.6 and truncated to uint8
  ((canvas * 0.6).astype(uint8), so 255 -> 153, 170 -> 102, 85 -> 51);
- joints are cv2.circle(..., radius, colour, -1) at (int(x), int(y)): the midpoint circle
  algorithm, filled row by row;
- hand edges are cv2.line(..., thickness=2): a 4-point polygon in 16.16 fixed point with a
  round cap (a radius-1 circle) at both ends; edge colours are HSV(i / 20, 1, 1) * 255
  rounded half-to-even as OpenCV converts them.

Known difference from DWPose: it stores points normalised by the canvas size and
multiplies back, which can move a coordinate by one float ulp before int(). A point is drawn when its confidence is
at least DRAW_CONFIDENCE (0.3); DWPose's body drawing uses "> 0.3", its hands ">= 0.3".
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from pose_bridge.keypoints import DRAW_CONFIDENCE, Pose, PoseSequence

# Limbs as pairs of 0-based body indices (as docs/skeleton.md lists them), in drawing order.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)

# RGB; limb i and joint i use colour i.
BODY_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)

HAND_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
    (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)
HAND_JOINT_COLOR = (0, 0, 255)
FACE_COLOR = (255, 255, 255)

# Sizes in pixels at about 512 px short side.
STICK_WIDTH = 4
BODY_JOINT_RADIUS = 4
HAND_LINE_THICKNESS = 2
HAND_JOINT_RADIUS = 4
FACE_RADIUS = 3
LIMB_DIMMING = 0.6

XY_SHIFT = 16
XY_ONE = 1 << XY_SHIFT

# OpenCV's sine table: sin of whole degrees 0..450, as 7-decimal float literals (float32).
_SIN_TABLE = np.round(np.sin(np.deg2rad(np.arange(451, dtype=np.float64))), 7).astype(np.float32).astype(np.float64)


def _hsv_color(hue: float) -> tuple[int, int, int]:
    """HSV(hue, 1, 1) * 255 as matplotlib computes it, rounded half-to-even as cv2 does."""
    h6 = hue * 6.0
    i = int(h6)
    f = h6 - i
    v, p, q, t = 1.0, 0.0, 1.0 - f, 1.0 - (1.0 - f)
    rgb = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))[i % 6]
    return tuple(int(np.rint(c * 255.0)) for c in rgb)


HAND_EDGE_COLORS = tuple(_hsv_color(i / float(len(HAND_EDGES))) for i in range(len(HAND_EDGES)))


def stroke_scale_for(width: int, height: int) -> float:
    """Stroke scale for "scale strokes with resolution": 1.0 at a 512 px short side."""
    return min(width, height) / 512.0


def _scaled(size: int, scale: float) -> int:
    return size if scale == 1.0 else max(1, int(round(size * scale)))


# --------------------------------------------------------------------------- OpenCV primitives


def _hline(canvas: np.ndarray, y: int, x1: int, x2: int, color) -> None:
    height, width = canvas.shape[:2]
    if 0 <= y < height:
        x1, x2 = max(x1, 0), min(x2, width - 1)
        if x1 <= x2:
            canvas[y, x1:x2 + 1] = color


def _put(canvas: np.ndarray, x: int, y: int, color) -> None:
    height, width = canvas.shape[:2]
    if 0 <= x < width and 0 <= y < height:
        canvas[y, x] = color


def _clip_line(width: int, height: int, x1: int, y1: int, x2: int, y2: int) -> tuple[int, int, int, int] | None:
    """cv2.clipLine: the part of a line inside [0, width) x [0, height), None if nothing is."""
    right, bottom = width - 1, height - 1
    c1 = (x1 < 0) + (x1 > right) * 2 + (y1 < 0) * 4 + (y1 > bottom) * 8
    c2 = (x2 < 0) + (x2 > right) * 2 + (y2 < 0) * 4 + (y2 > bottom) * 8
    if (c1 & c2) == 0 and (c1 | c2) != 0:
        if c1 & 12:
            a = 0 if c1 < 8 else bottom
            x1 += _cdiv((a - y1) * (x2 - x1), y2 - y1)
            y1 = a
            c1 = (x1 < 0) + (x1 > right) * 2
        if c2 & 12:
            a = 0 if c2 < 8 else bottom
            x2 += _cdiv((a - y2) * (x2 - x1), y2 - y1)
            y2 = a
            c2 = (x2 < 0) + (x2 > right) * 2
        if (c1 & c2) == 0 and (c1 | c2) != 0:
            if c1:
                a = 0 if c1 == 1 else right
                y1 += _cdiv((a - x1) * (y2 - y1), x2 - x1)
                x1 = a
                c1 = 0
            if c2:
                a = 0 if c2 == 1 else right
                y2 += _cdiv((a - x2) * (y2 - y1), x2 - x1)
                x2 = a
                c2 = 0
    return (x1, y1, x2, y2) if (c1 | c2) == 0 else None


def _line8(canvas: np.ndarray, x0: int, y0: int, x1: int, y1: int, color) -> None:
    """cv2's 8-connected line (LineIterator, left to right): Bresenham with its error term."""
    height, width = canvas.shape[:2]
    clipped = _clip_line(width, height, x0, y0, x1, y1)
    if clipped is None:
        return
    x0, y0, x1, y1 = clipped
    if x1 < x0:
        x0, y0, x1, y1 = x1, y1, x0, y0
    dx, dy = x1 - x0, y1 - y0
    step_y = 1 if dy >= 0 else -1
    dy = abs(dy)
    vertical = dy > dx
    if vertical:
        dx, dy = dy, dx
    err = dx - 2 * dy
    x, y = x0, y0
    for _ in range(dx + 1):
        _put(canvas, x, y, color)
        minor = err < 0
        err += -2 * dy + (2 * dx if minor else 0)
        if vertical:
            y += step_y
            x += 1 if minor else 0
        else:
            x += 1
            y += step_y if minor else 0


def _line_fixed(canvas: np.ndarray, x0: int, y0: int, x1: int, y1: int, color) -> None:
    """cv2's Line2: a line between 16.16 fixed-point ends (the outline of fixed-point polygons)."""
    height, width = canvas.shape[:2]
    clipped = _clip_line(width << XY_SHIFT, height << XY_SHIFT, x0, y0, x1, y1)
    if clipped is None:
        return
    x0, y0, x1, y1 = clipped
    dx, dy = x1 - x0, y1 - y0
    ax, ay = abs(dx), abs(dy)
    if ax > ay:
        if dx < 0:
            x0, y0, x1, y1 = x1, y1, x0, y0
            dy = -dy
        x_step, y_step = XY_ONE, _cdiv(dy << XY_SHIFT, ax | 1)
        count = (x1 - x0) >> XY_SHIFT
    else:
        if dy < 0:
            x0, y0, x1, y1 = x1, y1, x0, y0
            dx = -dx
        x_step, y_step = _cdiv(dx << XY_SHIFT, ay | 1), XY_ONE
        count = (y1 - y0) >> XY_SHIFT
    half = XY_ONE >> 1
    _put(canvas, (x1 + half) >> XY_SHIFT, (y1 + half) >> XY_SHIFT, color)
    x0 += half
    y0 += half
    if ax > ay:
        x0 >>= XY_SHIFT
        while count >= 0:
            _put(canvas, x0, y0 >> XY_SHIFT, color)
            x0 += 1
            y0 += y_step
            count -= 1
    else:
        y0 >>= XY_SHIFT
        while count >= 0:
            _put(canvas, x0 >> XY_SHIFT, y0, color)
            x0 += x_step
            y0 += 1
            count -= 1


def _cdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def fill_convex_poly(canvas: np.ndarray, points: list[tuple[int, int]], color, shift: int = 0) -> None:
    """cv2.fillConvexPoly (LINE_8) of integer points with `shift` fractional bits."""
    npts = len(points)
    if npts == 0:
        return
    height, width = canvas.shape[:2]
    delta = (1 << shift) >> 1
    up = XY_SHIFT - shift

    # Outline first, exactly as OpenCV draws it.
    px0, py0 = points[-1][0] << up, points[-1][1] << up
    xmin = xmax = points[0][0]
    ymin = ymax = points[0][1]
    imin = 0
    for i, (px, py) in enumerate(points):
        if py < ymin:
            ymin, imin = py, i
        ymax, xmax, xmin = max(ymax, py), max(xmax, px), min(xmin, px)
        px, py = px << up, py << up
        if shift == 0:
            _line8(canvas, px0 >> XY_SHIFT, py0 >> XY_SHIFT, px >> XY_SHIFT, py >> XY_SHIFT, color)
        else:
            _line_fixed(canvas, px0, py0, px, py, color)
        px0, py0 = px, py

    xmin, xmax = (xmin + delta) >> shift, (xmax + delta) >> shift
    ymin, ymax = (ymin + delta) >> shift, (ymax + delta) >> shift
    if npts < 3 or xmax < 0 or ymax < 0 or xmin >= width or ymin >= height:
        return
    ymax = min(ymax, height - 1)

    # Two edges walk down from the top vertex, one each way round the polygon.
    idx = [imin, imin]
    di = [1, npts - 1]
    ex = [-XY_ONE, -XY_ONE]
    edx = [0, 0]
    ye = [ymin, ymin]
    edges = npts
    y = ymin
    half = XY_ONE >> 1
    while True:
        for i in range(2):
            if y >= ye[i]:
                idx0 = idx[i]
                nxt = idx0 + di[i]
                if nxt >= npts:
                    nxt -= npts
                while True:
                    edges -= 1
                    if edges + 1 <= 0:
                        break
                    ty = (points[nxt][1] + delta) >> shift
                    if ty > y:
                        xs = points[idx0][0] << up
                        xe = points[nxt][0] << up
                        ye[i] = ty
                        edx[i] = _cdiv((xe - xs) * 2 + (ty - y), 2 * (ty - y))
                        ex[i] = xs
                        idx[i] = nxt
                        break
                    idx0 = nxt
                    nxt += di[i]
                    if nxt >= npts:
                        nxt -= npts
        if edges < 0:
            break
        if y >= 0:
            left, right = (1, 0) if ex[0] > ex[1] else (0, 1)
            _hline(canvas, y, (ex[left] + half) >> XY_SHIFT, (ex[right] + half) >> XY_SHIFT, color)
        ex[0] += edx[0]
        ex[1] += edx[1]
        y += 1
        if y > ymax:
            break


def ellipse_poly(center: tuple[int, int], axes: tuple[int, int], angle: int) -> list[tuple[int, int]]:
    """cv2.ellipse2Poly(center, axes, angle, 0, 360, 1) for integer arguments."""
    while angle < 0:
        angle += 360
    while angle > 360:
        angle -= 360
    cos_a, sin_a = _SIN_TABLE[450 - angle], _SIN_TABLE[angle]
    steps = np.arange(361)
    x = axes[0] * _SIN_TABLE[450 - steps]
    y = axes[1] * _SIN_TABLE[steps]
    px = np.rint(center[0] + x * cos_a - y * sin_a).astype(np.int64)
    py = np.rint(center[1] + x * sin_a + y * cos_a).astype(np.int64)
    points: list[tuple[int, int]] = []
    for p in zip(px.tolist(), py.tolist()):
        if not points or p != points[-1]:
            points.append(p)
    if len(points) == 1:
        points.append(points[0])
    return points


def fill_circle(canvas: np.ndarray, center: tuple[int, int], radius: int, color) -> None:
    """cv2.circle(canvas, center, radius, color, thickness=-1) with LINE_8 (midpoint circle)."""
    cx, cy = center
    err, dx, dy, plus, minus = 0, radius, 0, 1, (radius << 1) - 1
    while dx >= dy:
        _hline(canvas, cy - dy, cx - dx, cx + dx, color)
        _hline(canvas, cy + dy, cx - dx, cx + dx, color)
        _hline(canvas, cy - dx, cx - dy, cx + dy, color)
        _hline(canvas, cy + dx, cx - dy, cx + dy, color)
        dy += 1
        err += plus
        plus += 2
        if err > 0:
            err -= minus
            dx -= 1
            minus -= 2


def thick_line(canvas: np.ndarray, p0: tuple[int, int], p1: tuple[int, int], color, thickness: int) -> None:
    """cv2.line(canvas, p0, p1, color, thickness) for thickness >= 2 (LINE_8)."""
    x0, y0 = p0[0] << XY_SHIFT, p0[1] << XY_SHIFT
    x1, y1 = p1[0] << XY_SHIFT, p1[1] << XY_SHIFT
    if thickness < 2:
        _line8(canvas, p0[0], p0[1], p1[0], p1[1], color)
        return
    dx = (x0 - x1) / XY_ONE
    dy = (y1 - y0) / XY_ONE
    r2 = dx * dx + dy * dy
    odd = thickness & 1
    half_width = thickness << (XY_SHIFT - 1)
    if abs(r2) > np.finfo(np.float64).eps:
        r = (half_width + odd * XY_ONE * 0.5) / math.sqrt(r2)
        ox, oy = int(np.rint(dy * r)), int(np.rint(dx * r))
        quad = [(x0 + ox, y0 + oy), (x0 - ox, y0 - oy), (x1 - ox, y1 - oy), (x1 + ox, y1 + oy)]
        fill_convex_poly(canvas, quad, color, shift=XY_SHIFT)
    cap = (half_width + (XY_ONE >> 1)) >> XY_SHIFT
    for x, y in ((x0, y0), (x1, y1)):
        fill_circle(canvas, ((x + (XY_ONE >> 1)) >> XY_SHIFT, (y + (XY_ONE >> 1)) >> XY_SHIFT), cap, color)


# --------------------------------------------------------------------------- pose drawing


def _visible(points: np.ndarray) -> np.ndarray:
    return points[:, 2] >= DRAW_CONFIDENCE


def draw_body(canvas: np.ndarray, body: np.ndarray, stroke_scale: float = 1.0) -> np.ndarray:
    """Limbs, the 0.6 dimming, then joints; returns the new canvas (the dimming makes a copy)."""
    stick = _scaled(STICK_WIDTH, stroke_scale)
    radius = _scaled(BODY_JOINT_RADIUS, stroke_scale)
    visible = _visible(body)
    xy = body[:, :2].astype(np.float64)
    for i, (a, b) in enumerate(LIMBS):
        if not (visible[a] and visible[b]):
            continue
        (xa, ya), (xb, yb) = xy[a], xy[b]
        length = math.hypot(xa - xb, ya - yb)
        angle = math.degrees(math.atan2(ya - yb, xa - xb))
        center = (int((xa + xb) / 2.0), int((ya + yb) / 2.0))
        polygon = ellipse_poly(center, (int(length / 2), stick), int(angle))
        fill_convex_poly(canvas, polygon, BODY_COLORS[i])
    canvas = (canvas * LIMB_DIMMING).astype(np.uint8)
    for i in range(len(body)):
        if visible[i]:
            fill_circle(canvas, (int(xy[i, 0]), int(xy[i, 1])), radius, BODY_COLORS[i])
    return canvas


def draw_hand(canvas: np.ndarray, hand: np.ndarray, stroke_scale: float = 1.0) -> None:
    thickness = _scaled(HAND_LINE_THICKNESS, stroke_scale)
    radius = _scaled(HAND_JOINT_RADIUS, stroke_scale)
    visible = _visible(hand)
    pixels = [(int(x), int(y)) for x, y in hand[:, :2].astype(np.float64)]
    for i, (a, b) in enumerate(HAND_EDGES):
        if visible[a] and visible[b]:
            thick_line(canvas, pixels[a], pixels[b], HAND_EDGE_COLORS[i], thickness)
    for i, p in enumerate(pixels):
        if visible[i]:
            fill_circle(canvas, p, radius, HAND_JOINT_COLOR)


def draw_face(canvas: np.ndarray, face: np.ndarray, stroke_scale: float = 1.0) -> None:
    radius = _scaled(FACE_RADIUS, stroke_scale)
    visible = _visible(face)
    for i, (x, y) in enumerate(face[:, :2].astype(np.float64)):
        if visible[i]:
            fill_circle(canvas, (int(x), int(y)), radius, FACE_COLOR)


def draw_pose(
    pose: Pose, *, body: bool = True, hands: bool = True, face: bool = True, stroke_scale: float = 1.0
) -> np.ndarray:
    """The skeleton image of one pose: (H, W, 3) uint8 RGB at the pose's canvas size.

    Body, then hands, then face, on black (DWPose's order). stroke_scale multiplies every
    stroke size (1.0 = DWPose's pixel sizes; see stroke_scale_for).
    """
    if not (stroke_scale > 0 and math.isfinite(stroke_scale)):
        raise ValueError(f"stroke_scale must be a positive number, got {stroke_scale}")
    # A pose changed in memory since it was made may hold anything: the integer drawing
    # below needs bounded coordinates and canvas (PoseDataError otherwise).
    pose.check_extent()
    canvas = np.zeros((pose.canvas_height, pose.canvas_width, 3), dtype=np.uint8)
    if body:
        canvas = draw_body(canvas, pose.body, stroke_scale)
    if hands:
        draw_hand(canvas, pose.left_hand, stroke_scale)
        draw_hand(canvas, pose.right_hand, stroke_scale)
    if face:
        draw_face(canvas, pose.face, stroke_scale)
    return canvas


def draw_sequence(
    seq: PoseSequence, *, body: bool = True, hands: bool = True, face: bool = True, stroke_scale: float = 1.0
) -> Iterator[np.ndarray]:
    """draw_pose for every frame, one image at a time."""
    for pose in seq.frames:
        yield draw_pose(pose, body=body, hands=hands, face=face, stroke_scale=stroke_scale)
