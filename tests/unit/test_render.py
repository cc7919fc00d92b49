from __future__ import annotations

import io
import struct

import pytest
from PIL import Image

from posegen_worker.generators import Keypoint
from posegen_worker.render import BACKGROUND, COCO_KEYPOINT_NAMES, COCO_SKELETON, render_pose_png

# A simple upright figure, left side on the image's right as for a person facing the viewer.
_POSITIONS = {
    "nose": (0.5, 0.15),
    "left_eye": (0.52, 0.13),
    "right_eye": (0.48, 0.13),
    "left_ear": (0.55, 0.14),
    "right_ear": (0.45, 0.14),
    "left_shoulder": (0.6, 0.3),
    "right_shoulder": (0.4, 0.3),
    "left_elbow": (0.65, 0.45),
    "right_elbow": (0.35, 0.45),
    "left_wrist": (0.67, 0.6),
    "right_wrist": (0.33, 0.6),
    "left_hip": (0.56, 0.6),
    "right_hip": (0.44, 0.6),
    "left_knee": (0.57, 0.75),
    "right_knee": (0.43, 0.75),
    "left_ankle": (0.58, 0.92),
    "right_ankle": (0.42, 0.92),
}
FIGURE = tuple(Keypoint(name, x, y, 0.9) for name, (x, y) in _POSITIONS.items())


def _chunk_types(png: bytes) -> list[bytes]:
    types = []
    offset = 8
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        types.append(png[offset + 4 : offset + 8])
        offset += 12 + length
    return types


def _pixel(png: bytes, x: float, y: float, size: int) -> tuple[int, ...]:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    value = image.getpixel((round(x * (size - 1)), round(y * (size - 1))))
    assert isinstance(value, tuple)
    return value


def test_coco_constants_describe_the_17_keypoint_skeleton() -> None:
    assert len(COCO_KEYPOINT_NAMES) == 17
    assert len(set(COCO_KEYPOINT_NAMES)) == 17
    assert COCO_KEYPOINT_NAMES[0] == "nose"
    assert COCO_KEYPOINT_NAMES[-1] == "right_ankle"
    assert len(COCO_SKELETON) == 19
    assert len(set(COCO_SKELETON)) == 19
    for a, b in COCO_SKELETON:
        assert a in COCO_KEYPOINT_NAMES
        assert b in COCO_KEYPOINT_NAMES
        assert a != b
    # Every keypoint is connected to the figure.
    assert {n for pair in COCO_SKELETON for n in pair} == set(COCO_KEYPOINT_NAMES)


@pytest.mark.parametrize("size", [64, 256, 301])
def test_renders_a_valid_png_of_the_requested_size(size: int) -> None:
    png = render_pose_png(FIGURE, size, caption="standing #0")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.size == (size, size)
    assert image.mode == "RGB"


def test_output_is_byte_identical_and_carries_no_metadata_chunks() -> None:
    first = render_pose_png(FIGURE, 128, caption="same")
    assert render_pose_png(FIGURE, 128, caption="same") == first
    assert set(_chunk_types(first)) <= {b"IHDR", b"IDAT", b"IEND"}


def test_caption_is_drawn() -> None:
    assert render_pose_png(FIGURE, 128, caption="sitting #1") != render_pose_png(FIGURE, 128, caption="x")
    # Top-left corner holds the caption; with an empty one it is background.
    plain = Image.open(io.BytesIO(render_pose_png(FIGURE, 128, caption=""))).convert("RGB")
    captioned = Image.open(io.BytesIO(render_pose_png(FIGURE, 128, caption="WWWW"))).convert("RGB")
    box = (0, 0, 40, 14)
    assert plain.crop(box).getcolors() == [(40 * 14, BACKGROUND)]
    assert len(captioned.crop(box).getcolors() or []) > 1


def test_limbs_and_joints_are_drawn_and_the_background_is_left_alone() -> None:
    size = 256
    png = render_pose_png(FIGURE, size, caption="")
    hip, knee = _POSITIONS["left_hip"], _POSITIONS["left_knee"]
    midpoint = ((hip[0] + knee[0]) / 2, (hip[1] + knee[1]) / 2)
    assert _pixel(png, *midpoint, size) != BACKGROUND
    assert _pixel(png, *_POSITIONS["right_wrist"], size) != BACKGROUND
    assert _pixel(png, 0.05, 0.95, size) == BACKGROUND
    assert _pixel(png, 0.9, 0.5, size) == BACKGROUND
    # Left and right limbs are told apart by colour.
    left_upper_arm = _pixel(png, 0.625, 0.375, size)
    right_upper_arm = _pixel(png, 0.375, 0.375, size)
    assert left_upper_arm != right_upper_arm


def test_low_confidence_keypoints_are_not_drawn() -> None:
    size = 256
    hidden = tuple(Keypoint(k.name, k.x, k.y, 0.05) if k.name in ("left_hip", "left_knee") else k for k in FIGURE)
    png = render_pose_png(hidden, size, caption="")
    hip, knee = _POSITIONS["left_hip"], _POSITIONS["left_knee"]
    assert _pixel(png, (hip[0] + knee[0]) / 2, (hip[1] + knee[1]) / 2, size) == BACKGROUND


def test_long_captions_are_shortened_to_fit() -> None:
    png = render_pose_png(FIGURE, 64, caption="a very long caption " * 20)
    assert Image.open(io.BytesIO(png)).size == (64, 64)


def test_rejects_unknown_keypoints_and_tiny_images() -> None:
    with pytest.raises(ValueError, match="unknown keypoint"):
        render_pose_png((Keypoint("tail", 0.5, 0.5, 1.0),), 64, caption="")
    with pytest.raises(ValueError, match="at least"):
        render_pose_png(FIGURE, 8, caption="")
