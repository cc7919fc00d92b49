"""Offline pose generator: forward kinematics over a skeleton with fixed human proportions.

Each base pose is a set of joint angles; a PRNG seeded from a SHA-256 of the request jitters them
within joint limits, then the figure is rotated, scaled and moved a little. Nothing depends on
Python's randomised ``hash()``, so a retried pose on another worker is byte-identical.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from posegen_worker.generators import (
    GALLERY_REFERENCE,
    TEXT_DESCRIPTION,
    GeneratedPose,
    Keypoint,
    PermanentGenerationError,
    PoseRequest,
)
from posegen_worker.render import COCO_KEYPOINT_NAMES, MIN_SIZE, render_pose_png

MAX_PROMPT_CHARS = 2000

POSE_NAMES: tuple[str, ...] = (
    "standing",
    "sitting",
    "running",
    "walking",
    "waving",
    "jumping",
    "kneeling",
    "lying",
)
DEFAULT_POSE = "standing"

_POSE_WORDS: dict[str, tuple[str, ...]] = {
    "standing": ("stand", "stands", "standing", "stood", "upright"),
    "sitting": ("sit", "sits", "sitting", "sat", "seated"),
    "running": ("run", "runs", "running", "ran", "sprint", "sprinting", "jog", "jogging"),
    "walking": ("walk", "walks", "walking", "walked", "stroll", "strolling"),
    "waving": ("wave", "waves", "waving", "waved"),
    "jumping": ("jump", "jumps", "jumping", "jumped", "leap", "leaps", "leaping"),
    "kneeling": ("kneel", "kneels", "kneeling", "knelt"),
    "lying": ("lie", "lies", "lying", "lay", "lays", "laying", "reclining"),
}
_KEYWORDS: dict[str, str] = {word: pose for pose, words in _POSE_WORDS.items() for word in words}
_WORD = re.compile(r"[a-z]+")

# Segment lengths as fractions of body height (rounded anthropometric averages).
TORSO = 0.30  # hip centre to shoulder centre
NECK = 0.12  # shoulder centre to head centre
UPPER_ARM = 0.17
FOREARM = 0.15
THIGH = 0.245
SHIN = 0.245
_SHOULDER_HALF_WIDTH = 0.115
_HIP_HALF_WIDTH = 0.06

# Face points relative to the head centre: (forward, sideways towards the left, up).
_FACE: dict[str, tuple[float, float, float]] = {
    "nose": (0.045, 0.0, -0.005),
    "left_eye": (0.03, 0.03, 0.025),
    "right_eye": (0.03, -0.03, 0.025),
    "left_ear": (-0.02, 0.065, 0.01),
    "right_ear": (-0.02, -0.065, 0.01),
}

MAX_BEND = 150.0  # elbows and knees do not flex further
_HEAD_TILT = 10.0
_GLOBAL_ROTATION = 6.0
_BODY_SCALE = 0.78  # body height as a fraction of the image
_MARGIN = 0.04  # keeps every keypoint inside the image


@dataclass(frozen=True)
class _Limb:
    angle: float  # degrees from hanging straight down, positive outwards (frontal) or forwards (profile)
    bend: float  # elbow/knee flexion in degrees


@dataclass(frozen=True)
class _PoseSpec:
    frontal: bool  # facing the viewer, or in profile facing right
    width: float  # fraction of the shoulder/hip width the view shows
    lean: float  # torso angle from vertical in degrees, positive forwards/rightwards
    left_arm: _Limb
    right_arm: _Limb
    left_leg: _Limb
    right_leg: _Limb
    rotation: float = 0.0  # whole-body rotation in degrees, clockwise
    jitter: float = 8.0  # largest joint-angle change per variation, degrees


_STANDING_LEGS = (_Limb(4, 2), _Limb(4, 2))
_POSES: dict[str, _PoseSpec] = {
    "standing": _PoseSpec(True, 1.0, 0, _Limb(10, 10), _Limb(10, 10), *_STANDING_LEGS),
    "waving": _PoseSpec(True, 1.0, 0, _Limb(10, 10), _Limb(100, 60), *_STANDING_LEGS),
    "jumping": _PoseSpec(True, 1.0, 0, _Limb(150, 10), _Limb(150, 10), _Limb(25, 10), _Limb(25, 10)),
    "lying": _PoseSpec(True, 1.0, 0, _Limb(15, 5), _Limb(15, 5), _Limb(5, 3), _Limb(5, 3), rotation=90),
    "walking": _PoseSpec(False, 0.35, 3, _Limb(-20, 15), _Limb(20, 20), _Limb(20, 5), _Limb(-15, 10)),
    "running": _PoseSpec(False, 0.35, 12, _Limb(-45, 90), _Limb(35, 90), _Limb(50, 60), _Limb(-25, 90)),
    "sitting": _PoseSpec(False, 0.35, -5, _Limb(15, 60), _Limb(15, 60), _Limb(90, 90), _Limb(90, 90), jitter=6),
    "kneeling": _PoseSpec(False, 0.35, 0, _Limb(5, 15), _Limb(5, 15), _Limb(85, 95), _Limb(-5, 90), jitter=6),
}
# Shoulder and hip ranges differ by view: sideways (abduction) vs forwards (flexion).
_ARM_RANGE = {True: (-15.0, 180.0), False: (-60.0, 180.0)}
_LEG_RANGE = {True: (-10.0, 50.0), False: (-35.0, 120.0)}

Point = tuple[float, float]


def base_pose_for_prompt(prompt: str) -> str:
    """The pose named by the first pose word in ``prompt``; standing if there is none."""
    for word in _WORD.findall(prompt.lower()):
        if word in _KEYWORDS:
            return _KEYWORDS[word]
    return DEFAULT_POSE


def base_pose_for_reference(reference_id: str) -> str:
    """A pose word in the id wins (e.g. "sitting-012"); otherwise a stable hash of the id picks one."""
    for word in _WORD.findall(reference_id.lower()):
        if word in _KEYWORDS:
            return _KEYWORDS[word]
    digest = hashlib.sha256(reference_id.encode()).digest()
    return POSE_NAMES[int.from_bytes(digest[:4], "big") % len(POSE_NAMES)]


def _validated(request: PoseRequest) -> tuple[str, str]:
    """(base pose, variation key) for the request, or PermanentGenerationError if it is unusable."""
    prompt = request.text_prompt
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        raise PermanentGenerationError(f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    if request.index < 0:
        raise PermanentGenerationError(f"variation index must be >= 0, got {request.index}")
    if request.generation_type == TEXT_DESCRIPTION:
        if prompt is None or not prompt.strip():
            raise PermanentGenerationError("TEXT_DESCRIPTION generation needs a non-empty prompt")
        return base_pose_for_prompt(prompt), prompt.strip()
    if request.generation_type == GALLERY_REFERENCE:
        if request.reference_id is None or not request.reference_id.strip():
            raise PermanentGenerationError("GALLERY_REFERENCE generation needs a reference id")
        return base_pose_for_reference(request.reference_id), request.reference_id
    raise PermanentGenerationError(f"unknown generation type {request.generation_type!r}")


def _rng(request: PoseRequest, key: str) -> random.Random:
    material = f"{request.seed}\x1f{request.index}\x1f{key}".encode()
    return random.Random(int.from_bytes(hashlib.sha256(material).digest()[:8], "big"))


def _rotate(vx: float, vy: float, degrees: float) -> Point:
    """Clockwise rotation in y-up coordinates, so positive angles tip the top of the body rightwards."""
    a = math.radians(degrees)
    return (vx * math.cos(a) + vy * math.sin(a), -vx * math.sin(a) + vy * math.cos(a))


def _along(origin: Point, length: float, angle: float, side: float) -> Point:
    """The end of a segment hanging from ``origin`` at ``angle`` degrees from straight down."""
    a = math.radians(angle)
    return (origin[0] + side * length * math.sin(a), origin[1] - length * math.cos(a))


def _jitter_limb(limb: _Limb, rng: random.Random, spread: float, limits: tuple[float, float]) -> _Limb:
    angle = min(max(limb.angle + rng.uniform(-spread, spread), limits[0]), limits[1])
    bend = min(max(limb.bend + rng.uniform(-spread, spread), 0.0), MAX_BEND)
    return _Limb(angle, bend)


def _body_points(spec: _PoseSpec, rng: random.Random) -> dict[str, Point]:
    """Joint positions in body units (height 1, y up, hip centre at the origin)."""
    lean = spec.lean + rng.uniform(-spec.jitter / 2, spec.jitter / 2)
    head = lean + rng.uniform(-_HEAD_TILT, _HEAD_TILT)
    arms = _ARM_RANGE[spec.frontal]
    legs = _LEG_RANGE[spec.frontal]
    limbs = {
        "left_arm": _jitter_limb(spec.left_arm, rng, spec.jitter, arms),
        "right_arm": _jitter_limb(spec.right_arm, rng, spec.jitter, arms),
        "left_leg": _jitter_limb(spec.left_leg, rng, spec.jitter, legs),
        "right_leg": _jitter_limb(spec.right_leg, rng, spec.jitter, legs),
    }

    neck = _rotate(0.0, TORSO, lean)
    centre = _rotate(0.0, NECK, head)
    centre = (neck[0] + centre[0], neck[1] + centre[1])
    points: dict[str, Point] = {}
    for name, (forward, sideways, up) in _FACE.items():
        # A profile view shows the forward offset; a frontal one shows the sideways offset.
        dx, dy = _rotate(forward * (1 - spec.width) + sideways * spec.width, up, head)
        points[name] = (centre[0] + dx, centre[1] + dy)

    for side_name, side in (("left", 1.0), ("right", -1.0)):
        # Frontal limbs swing outwards (mirrored); profile limbs all swing forwards.
        swing = side if spec.frontal else 1.0
        sx, sy = _rotate(side * _SHOULDER_HALF_WIDTH * spec.width, 0.0, lean)
        hx, hy = _rotate(side * _HIP_HALF_WIDTH * spec.width, 0.0, lean)
        shoulder = (neck[0] + sx, neck[1] + sy)
        hip = (hx, hy)
        arm = limbs[f"{side_name}_arm"]
        leg = limbs[f"{side_name}_leg"]
        elbow = _along(shoulder, UPPER_ARM, arm.angle, swing)
        knee = _along(hip, THIGH, leg.angle, swing)
        points[f"{side_name}_shoulder"] = shoulder
        points[f"{side_name}_elbow"] = elbow
        points[f"{side_name}_wrist"] = _along(elbow, FOREARM, arm.angle + arm.bend, swing)
        points[f"{side_name}_hip"] = hip
        points[f"{side_name}_knee"] = knee
        # Knees flex backwards, the opposite way to elbows.
        points[f"{side_name}_ankle"] = _along(knee, SHIN, leg.angle - leg.bend, swing)
    return points


def _place(points: dict[str, Point], spec: _PoseSpec, rng: random.Random) -> dict[str, Point]:
    """Rotate, scale and move the figure into normalised image coordinates (y down), inside the margin."""
    angle = spec.rotation + rng.uniform(-_GLOBAL_ROTATION, _GLOBAL_ROTATION)
    turned = {name: _rotate(x, y, angle) for name, (x, y) in points.items()}
    flipped = {name: (x, -y) for name, (x, y) in turned.items()}
    xs = [p[0] for p in flipped.values()]
    ys = [p[1] for p in flipped.values()]
    width, height = max(xs) - min(xs), max(ys) - min(ys)
    room = 1 - 2 * _MARGIN
    scale = min(_BODY_SCALE * rng.uniform(0.92, 1.05), room / max(width, height))
    half_w, half_h = width * scale / 2, height * scale / 2
    tx = min(max(0.5 + rng.uniform(-0.05, 0.05), _MARGIN + half_w), 1 - _MARGIN - half_w)
    ty = min(max(0.5 + rng.uniform(-0.05, 0.05), _MARGIN + half_h), 1 - _MARGIN - half_h)
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    return {name: ((x - cx) * scale + tx, (y - cy) * scale + ty) for name, (x, y) in flipped.items()}


def skeleton_for(request: PoseRequest) -> tuple[str, tuple[Keypoint, ...]]:
    """(base pose, 17 COCO keypoints) for the request; the same request always gives the same answer.

    Raises PermanentGenerationError for an unusable request (empty or over-long prompt, no reference).
    """
    base_pose, key = _validated(request)
    spec = _POSES[base_pose]
    rng = _rng(request, key)
    placed = _place(_body_points(spec, rng), spec, rng)
    keypoints = []
    for name in COCO_KEYPOINT_NAMES:
        # In profile the right side is turned away from the viewer, so it is less certain.
        hidden = not spec.frontal and name.startswith("right_")
        score = rng.uniform(0.55, 0.75) if hidden else rng.uniform(0.9, 1.0)
        x, y = placed[name]
        keypoints.append(Keypoint(name=name, x=round(x, 6), y=round(y, 6), score=round(score, 4)))
    return base_pose, tuple(keypoints)


class EmbeddedGenerator:
    """Renders :func:`skeleton_for` poses, sleeping ``pose_seconds`` per pose to pace a demo."""

    def __init__(
        self,
        pose_seconds: float,
        image_size: int = 256,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if pose_seconds < 0:
            raise ValueError(f"pose_seconds must be >= 0, got {pose_seconds}")
        if image_size < MIN_SIZE:
            raise ValueError(f"image_size must be at least {MIN_SIZE}, got {image_size}")
        self._pose_seconds = pose_seconds
        self._image_size = image_size
        self._sleep = sleep

    def generate(self, request: PoseRequest) -> GeneratedPose:
        base_pose, keypoints = skeleton_for(request)
        png = render_pose_png(keypoints, self._image_size, caption=f"{base_pose} #{request.index}")
        if self._pose_seconds > 0:
            self._sleep(self._pose_seconds)
        return GeneratedPose(
            png=png,
            keypoints=keypoints,
            base_pose=base_pose,
            metadata={"generator": "embedded", "image_size": self._image_size},
        )
