"""Pluggable pose generators: the request/result types, the error taxonomy and a factory.

The run loop only sees ``Generator.generate`` and the two error classes: a
``TransientGenerationError`` is worth retrying later, a ``PermanentGenerationError`` is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

TEXT_DESCRIPTION = "TEXT_DESCRIPTION"
GALLERY_REFERENCE = "GALLERY_REFERENCE"


@dataclass(frozen=True)
class PoseRequest:
    generation_id: str
    project_id: str
    generation_type: str  # TEXT_DESCRIPTION or GALLERY_REFERENCE
    text_prompt: str | None
    reference_id: str | None  # pose library id for GALLERY_REFERENCE, else None
    seed: int
    index: int  # 0-based variation index within the generation


@dataclass(frozen=True)
class Keypoint:
    name: str
    x: float  # normalised 0..1, left to right
    y: float  # normalised 0..1, top to bottom
    score: float


@dataclass(frozen=True)
class GeneratedPose:
    png: bytes
    keypoints: tuple[Keypoint, ...]
    base_pose: str
    metadata: dict[str, object]  # JSON-serialisable


class GenerationError(Exception):
    """A pose could not be generated."""


class PermanentGenerationError(GenerationError):
    """Retrying will not help: bad prompt, upstream refused (4xx other than 429), malformed data."""


class UpstreamRefusedError(PermanentGenerationError):
    """The image API refused the request (4xx other than 429, or content moderation)."""


class TransientGenerationError(GenerationError):
    """Retries were exhausted on throttling, server errors, timeouts or connection errors."""


class Generator(Protocol):
    def generate(self, request: PoseRequest) -> GeneratedPose: ...


def build_generator(
    kind: str,
    *,
    pose_seconds: float,
    flux_url: str | None,
    flux_api_key: str | None,
    flux_timeout: float,
    flux_max_attempts: int,
) -> Generator:
    """The generator named by ``kind`` ("embedded" or "flux"); ValueError for anything else.

    ``pose_seconds`` paces the embedded generator only; FLUX has its own latency.
    """
    # Imported here because both modules import the types defined above.
    if kind == "embedded":
        from posegen_worker.generators.embedded import EmbeddedGenerator  # noqa: PLC0415

        return EmbeddedGenerator(pose_seconds=pose_seconds)
    if kind == "flux":
        if not flux_url:
            raise ValueError("generator 'flux' needs a FLUX base URL")
        if not flux_api_key:
            raise ValueError("generator 'flux' needs a FLUX API key")
        from posegen_worker.generators.flux import FluxGenerator  # noqa: PLC0415

        return FluxGenerator(flux_url, flux_api_key, timeout=flux_timeout, max_attempts=flux_max_attempts)
    raise ValueError(f"unknown generator kind {kind!r}; expected 'embedded' or 'flux'")
