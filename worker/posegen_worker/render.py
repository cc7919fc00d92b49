"""Draws a COCO-17 skeleton as a PNG; the image a worker stores for each generated pose."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Protocol

from PIL import Image, ImageDraw, ImageFont

COCO_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)

# The 19 limb pairs of the COCO person skeleton, by keypoint name.
COCO_SKELETON: tuple[tuple[str, str], ...] = (
    ("left_ankle", "left_knee"),
    ("left_knee", "left_hip"),
    ("right_ankle", "right_knee"),
    ("right_knee", "right_hip"),
    ("left_hip", "right_hip"),
    ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"),
    ("left_shoulder", "right_shoulder"),
    ("left_shoulder", "left_elbow"),
    ("right_shoulder", "right_elbow"),
    ("left_elbow", "left_wrist"),
    ("right_elbow", "right_wrist"),
    ("left_eye", "right_eye"),
    ("nose", "left_eye"),
    ("nose", "right_eye"),
    ("left_eye", "left_ear"),
    ("right_eye", "right_ear"),
    ("left_ear", "left_shoulder"),
    ("right_ear", "right_shoulder"),
)

BACKGROUND = (246, 244, 239)
_LEFT_COLOUR = (33, 113, 181)
_RIGHT_COLOUR = (222, 93, 44)
_CENTRE_COLOUR = (92, 92, 110)
_JOINT_OUTLINE = (30, 30, 40)
_CAPTION_COLOUR = (60, 60, 60)
# Joints this unsure are treated as not visible, matching the usual COCO visualisation cut-off.
MIN_VISIBLE_SCORE = 0.3
MIN_SIZE = 32


class KeypointLike(Protocol):
    """What the renderer needs of a keypoint; structural so generators can pass their own dataclass."""

    @property
    def name(self) -> str: ...
    @property
    def x(self) -> float: ...
    @property
    def y(self) -> float: ...
    @property
    def score(self) -> float: ...


def _limb_colour(a: str, b: str) -> tuple[int, int, int]:
    if a.startswith("left_") and b.startswith("left_"):
        return _LEFT_COLOUR
    if a.startswith("right_") and b.startswith("right_"):
        return _RIGHT_COLOUR
    return _CENTRE_COLOUR


def _fit_caption(
    draw: ImageDraw.ImageDraw, caption: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: float
) -> str:
    if draw.textlength(caption, font=font) <= width:
        return caption
    while caption and draw.textlength(caption + "...", font=font) > width:
        caption = caption[:-1]
    return caption + "..."


def render_pose_png(keypoints: Sequence[KeypointLike], size: int, *, caption: str) -> bytes:
    """A ``size`` x ``size`` RGB PNG of the skeleton; coordinates are normalised to 0..1.

    The bytes depend only on the arguments (no timestamps or text chunks), so a retried pose
    stores exactly the same image.
    """
    if size < MIN_SIZE:
        raise ValueError(f"image size must be at least {MIN_SIZE}, got {size}")
    points: dict[str, tuple[float, float]] = {}
    for kp in keypoints:
        if kp.name not in COCO_KEYPOINT_NAMES:
            raise ValueError(f"unknown keypoint name {kp.name!r}")
        if kp.score >= MIN_VISIBLE_SCORE:
            points[kp.name] = (kp.x * (size - 1), kp.y * (size - 1))

    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    limb_width = max(2, size // 48)
    joint_radius = max(2, size // 80)

    for a, b in COCO_SKELETON:
        if a in points and b in points:
            draw.line([points[a], points[b]], fill=_limb_colour(a, b), width=limb_width)
    for name in COCO_KEYPOINT_NAMES:
        if name in points:
            x, y = points[name]
            box = (x - joint_radius, y - joint_radius, x + joint_radius, y + joint_radius)
            draw.ellipse(box, fill=_limb_colour(name, name), outline=_JOINT_OUTLINE)

    font = ImageFont.load_default()
    margin = max(2, size // 64)
    text = _fit_caption(draw, caption, font, size - 2 * margin)
    draw.text((margin, margin), text, fill=_CAPTION_COLOUR, font=font)

    out = io.BytesIO()
    # Pillow writes no tIME/tEXt chunks unless asked, so this is byte-stable.
    image.save(out, format="PNG")
    return out.getvalue()
