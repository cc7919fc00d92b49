from __future__ import annotations

import hashlib
import io
import json
import math
import os
import subprocess
import sys
from dataclasses import replace

import pytest
from PIL import Image

from posegen_worker.generators import (
    GALLERY_REFERENCE,
    TEXT_DESCRIPTION,
    GeneratedPose,
    Keypoint,
    PermanentGenerationError,
    PoseRequest,
    build_generator,
)
from posegen_worker.generators.embedded import (
    FOREARM,
    POSE_NAMES,
    SHIN,
    THIGH,
    UPPER_ARM,
    EmbeddedGenerator,
    skeleton_for,
)
from posegen_worker.render import COCO_KEYPOINT_NAMES


def text_request(prompt: str | None, *, seed: int = 7, index: int = 0) -> PoseRequest:
    return PoseRequest("gen-1", "proj-1", TEXT_DESCRIPTION, prompt, None, seed, index)


def gallery_request(reference_id: str | None, *, seed: int = 7, index: int = 0) -> PoseRequest:
    return PoseRequest("gen-2", "proj-1", GALLERY_REFERENCE, None, reference_id, seed, index)


def generate(request: PoseRequest, image_size: int = 128) -> GeneratedPose:
    return EmbeddedGenerator(pose_seconds=0, image_size=image_size).generate(request)


def points(keypoints: tuple[Keypoint, ...]) -> dict[str, tuple[float, float]]:
    return {k.name: (k.x, k.y) for k in keypoints}


def dist(p: dict[str, tuple[float, float]], a: str, b: str) -> float:
    return math.dist(p[a], p[b])


def inner_angle(p: dict[str, tuple[float, float]], a: str, joint: str, b: str) -> float:
    """Degrees between the two segments meeting at ``joint``; 180 is a straight limb."""
    ax, ay = p[a][0] - p[joint][0], p[a][1] - p[joint][1]
    bx, by = p[b][0] - p[joint][0], p[b][1] - p[joint][1]
    cos = (ax * bx + ay * by) / (math.hypot(ax, ay) * math.hypot(bx, by))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


ALL_POSE_REQUESTS = [
    text_request(f"someone {pose}", seed=s, index=i) for pose in POSE_NAMES for s in (1, 99) for i in range(4)
]


def test_same_request_gives_identical_bytes_and_keypoints() -> None:
    request = text_request("a dancer jumping for joy", seed=123, index=4)
    first = generate(request)
    second = EmbeddedGenerator(pose_seconds=0, image_size=128).generate(request)
    assert first.png == second.png
    assert first.keypoints == second.keypoints
    assert first.base_pose == second.base_pose == "jumping"


def test_output_does_not_depend_on_python_hash_randomisation() -> None:
    request = text_request("a person walking the dog", seed=5, index=3)
    script = (
        "import hashlib;"
        "from posegen_worker.generators import PoseRequest;"
        "from posegen_worker.generators.embedded import EmbeddedGenerator;"
        f"r = PoseRequest(*{(*vars(request).values(),)!r});"
        "print(hashlib.sha256(EmbeddedGenerator(0, 128).generate(r).png).hexdigest())"
    )
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    assert digests == {hashlib.sha256(generate(request).png).hexdigest()}


def test_indexes_give_different_poses() -> None:
    results = [generate(text_request("a person standing", index=i)) for i in range(12)]
    assert len({r.keypoints for r in results}) == 12
    assert len({r.png for r in results}) == 12
    assert {r.base_pose for r in results} == {"standing"}


def test_seed_and_prompt_change_the_variation() -> None:
    base = skeleton_for(text_request("a person standing", seed=1))
    assert skeleton_for(text_request("a person standing", seed=2)) != base
    assert skeleton_for(text_request("a tall person standing", seed=1)) != base


@pytest.mark.parametrize(
    ("prompt", "pose"),
    [
        ("a person sitting on a chair", "sitting"),
        ("she sits down", "sitting"),
        ("A man RUNNING in the rain", "running"),
        ("he runs", "running"),
        ("jump!", "jumping"),
        ("child jumps over a puddle", "jumping"),
        ("walking home", "walking"),
        ("waving goodbye", "waving"),
        ("kneeling in prayer", "kneeling"),
        ("lying on the grass", "lying"),
        ("portrait of a knight", "standing"),
        ("stand tall", "standing"),
        # The first pose word wins.
        ("walking, then sitting", "walking"),
        ("sitting after running", "sitting"),
    ],
)
def test_base_pose_comes_from_the_first_pose_word(prompt: str, pose: str) -> None:
    assert generate(text_request(prompt)).base_pose == pose


def test_sitting_and_running_have_different_shapes() -> None:
    for index in range(5):
        sitting = points(skeleton_for(text_request("sitting", index=index))[1])
        running = points(skeleton_for(text_request("running", index=index))[1])
        standing = points(skeleton_for(text_request("standing", index=index))[1])
        # Sitting thighs are roughly horizontal: the knee is barely below the hip.
        thigh = dist(sitting, "left_hip", "left_knee")
        assert abs(sitting["left_knee"][1] - sitting["left_hip"][1]) < 0.5 * thigh
        # Standing thighs hang down.
        thigh = dist(standing, "left_hip", "left_knee")
        assert standing["left_knee"][1] - standing["left_hip"][1] > 0.9 * thigh
        # A runner's feet are far apart compared with a stander's.
        stride = dist(running, "left_ankle", "right_ankle") / dist(running, "left_hip", "left_knee")
        stance = dist(standing, "left_ankle", "right_ankle") / dist(standing, "left_hip", "left_knee")
        assert stride > 2 * stance


def test_lying_figure_is_horizontal() -> None:
    for index in range(5):
        p = points(skeleton_for(text_request("lying down", index=index))[1])
        shoulders = ((p["left_shoulder"][0] + p["right_shoulder"][0]) / 2, p["left_shoulder"][1])
        ankle = p["left_ankle"]
        assert abs(shoulders[0] - ankle[0]) > 3 * abs(shoulders[1] - ankle[1])


@pytest.mark.parametrize("request_", ALL_POSE_REQUESTS, ids=lambda r: f"{r.text_prompt}-{r.seed}-{r.index}")
def test_poses_are_anatomically_plausible(request_: PoseRequest) -> None:
    _, keypoints = skeleton_for(request_)
    assert tuple(k.name for k in keypoints) == COCO_KEYPOINT_NAMES
    for k in keypoints:
        assert 0.0 <= k.x <= 1.0
        assert 0.0 <= k.y <= 1.0
        assert 0.0 < k.score <= 1.0
    p = points(keypoints)
    for side in ("left", "right"):
        upper_arm = dist(p, f"{side}_shoulder", f"{side}_elbow")
        forearm = dist(p, f"{side}_elbow", f"{side}_wrist")
        thigh = dist(p, f"{side}_hip", f"{side}_knee")
        shin = dist(p, f"{side}_knee", f"{side}_ankle")
        # Human proportions, independent of the generator's own constants.
        assert 0.75 <= forearm / upper_arm <= 1.0
        assert 0.85 <= shin / thigh <= 1.15
        assert 1.2 <= thigh / upper_arm <= 1.7
        # Bones keep their length in every pose: the projection never shortens a limb.
        assert forearm / upper_arm == pytest.approx(FOREARM / UPPER_ARM, rel=0.02)
        assert shin / thigh == pytest.approx(SHIN / THIGH, rel=0.02)
        # Elbows and knees never fold tighter than 30 degrees.
        assert inner_angle(p, f"{side}_shoulder", f"{side}_elbow", f"{side}_wrist") >= 29.9
        assert inner_angle(p, f"{side}_hip", f"{side}_knee", f"{side}_ankle") >= 29.9
    # Both sides share the same proportions.
    assert dist(p, "left_hip", "left_knee") == pytest.approx(dist(p, "right_hip", "right_knee"), rel=0.02)
    # A body of plausible size: thighs a fair fraction of the image, not a speck or a giant.
    assert 0.08 < dist(p, "left_hip", "left_knee") < 0.3
    # The head sits at the top of the torso: nose closer to the shoulders than to the hips.
    mid_shoulder = (
        (p["left_shoulder"][0] + p["right_shoulder"][0]) / 2,
        (p["left_shoulder"][1] + p["right_shoulder"][1]) / 2,
    )
    mid_hip = ((p["left_hip"][0] + p["right_hip"][0]) / 2, (p["left_hip"][1] + p["right_hip"][1]) / 2)
    assert math.dist(p["nose"], mid_shoulder) < math.dist(p["nose"], mid_hip)
    assert 1.0 <= math.dist(mid_shoulder, mid_hip) / dist(p, "left_hip", "left_knee") <= 1.5


def test_png_is_valid_and_of_the_configured_size() -> None:
    result = generate(text_request("someone waving"), image_size=200)
    image = Image.open(io.BytesIO(result.png))
    image.load()
    assert image.format == "PNG"
    assert image.size == (200, 200)
    json.dumps(result.metadata)
    assert result.metadata["generator"] == "embedded"


def test_gallery_reference_is_deterministic_and_spreads_over_poses() -> None:
    first = generate(gallery_request("lib-0042", index=1))
    again = generate(gallery_request("lib-0042", index=1))
    assert first.png == again.png
    assert first.keypoints == again.keypoints
    assert generate(gallery_request("lib-0042", index=2)).keypoints != first.keypoints
    poses = {skeleton_for(gallery_request(f"lib-{n:04d}"))[0] for n in range(40)}
    assert len(poses) >= 4
    assert poses <= set(POSE_NAMES)
    assert skeleton_for(gallery_request("kneeling-07"))[0] == "kneeling"


@pytest.mark.parametrize(
    "request_",
    [
        text_request(""),
        text_request("   \n\t"),
        text_request(None),
        text_request("x" * 2001),
        text_request("sitting", index=-1),
        gallery_request(None),
        gallery_request(" "),
        replace(text_request("sitting"), generation_type="INTERPRETIVE_DANCE"),
    ],
    ids=["empty", "whitespace", "none", "too-long", "negative-index", "no-ref", "blank-ref", "bad-type"],
)
def test_unusable_requests_are_permanent_errors(request_: PoseRequest) -> None:
    with pytest.raises(PermanentGenerationError):
        generate(request_)


def test_prompt_of_exactly_the_limit_is_accepted() -> None:
    assert generate(text_request("sitting " + "x" * 1992)).base_pose == "sitting"


def test_sleeps_pose_seconds_per_pose_after_validation() -> None:
    slept: list[float] = []
    generator = EmbeddedGenerator(pose_seconds=0.4, image_size=64, sleep=slept.append)
    generator.generate(text_request("running"))
    generator.generate(text_request("running", index=1))
    assert slept == [0.4, 0.4]
    with pytest.raises(PermanentGenerationError):
        generator.generate(text_request(""))
    assert slept == [0.4, 0.4]
    EmbeddedGenerator(pose_seconds=0, image_size=64, sleep=slept.append).generate(text_request("running"))
    assert slept == [0.4, 0.4]


def test_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="pose_seconds"):
        EmbeddedGenerator(pose_seconds=-1)
    with pytest.raises(ValueError, match="image_size"):
        EmbeddedGenerator(pose_seconds=0, image_size=4)


def test_factory_builds_embedded_and_rejects_unknown_kinds() -> None:
    def build(kind: str) -> object:
        return build_generator(
            kind, pose_seconds=0.0, flux_url=None, flux_api_key=None, flux_timeout=5.0, flux_max_attempts=3
        )

    generator = build("embedded")
    assert isinstance(generator, EmbeddedGenerator)
    assert generator.generate(text_request("sitting")).base_pose == "sitting"
    with pytest.raises(ValueError, match="unknown generator kind 'dalle'"):
        build("dalle")
