"""FLUX-compatible HTTP backend: submit a prompt, poll for the result, download the image.

Every HTTP step retries on 429, 5xx, timeouts and connection errors with capped exponential
backoff and jitter (or the server's Retry-After), up to ``max_attempts`` per step, then raises
TransientGenerationError. Any other non-2xx reply raises PermanentGenerationError at once.

The sample URL comes from the upstream's reply, so it is not trusted: it must be https on the API's
host (or an allowed one), must not resolve to a loopback, link-local or private address, and is
fetched without following redirects. The image is decoded and re-encoded to PNG within a pixel
limit, so nothing but pixels reaches the output volume.
"""

from __future__ import annotations

import io
import ipaddress
import json
import math
import os
import random
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urljoin, urlsplit

import requests
from PIL import Image

from posegen_worker.generators import (
    GALLERY_REFERENCE,
    GeneratedPose,
    PermanentGenerationError,
    PoseRequest,
    TransientGenerationError,
    UpstreamRefusedError,
)
from posegen_worker.generators.embedded import skeleton_for

MAX_JSON_BYTES = 1 << 20
MAX_IMAGE_BYTES = 32 << 20
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")

# Terminal task statuses of the FLUX API; anything else (Pending, Queued, ...) means "poll again".
_REFUSED_STATUSES = frozenset({"Request Moderated", "Content Moderated"})
# A failed or forgotten task may well succeed when the pose is submitted again later.
_FAILED_STATUSES = frozenset({"Error", "Failed", "Task not found"})

T = TypeVar("T")


class _MalformedReplyError(Exception):
    """A 2xx reply we cannot use (bad JSON, missing fields, not a PNG)."""


@dataclass
class _Counters:
    requests: int = 0
    retries: int = 0
    polls: int = 0


def _json_object(body: bytes) -> dict[str, object]:
    try:
        value = json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise _MalformedReplyError(f"reply is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise _MalformedReplyError(f"reply is JSON {type(value).__name__}, not an object")
    return value


def _task_id(body: bytes) -> str:
    task_id = _json_object(body).get("id")
    if not isinstance(task_id, str) or not task_id:
        raise _MalformedReplyError("submit reply has no string 'id'")
    return task_id


@dataclass(frozen=True)
class DestinationPolicy:
    """Where the generator may send requests. The defaults are the safe ones; the local stack and the
    tests (a fake API on loopback, over http) relax them explicitly."""

    allow_http: bool = False
    allow_private_addresses: bool = False
    sample_hosts: frozenset[str] = field(default_factory=frozenset)  # besides the API's own host
    max_pixels: int = 4096 * 4096

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> DestinationPolicy:
        def flag(name: str) -> bool:
            return environ.get(name, "").lower() in ("1", "true", "yes", "on")

        hosts = environ.get("POSEGEN_FLUX_SAMPLE_HOSTS", "")
        return cls(
            allow_http=flag("POSEGEN_FLUX_ALLOW_HTTP"),
            allow_private_addresses=flag("POSEGEN_FLUX_ALLOW_PRIVATE_ADDRESSES"),
            sample_hosts=frozenset(h.strip().lower() for h in hosts.split(",") if h.strip()),
            max_pixels=int(environ.get("POSEGEN_FLUX_MAX_PIXELS") or cls.max_pixels),
        )

    def check_scheme(self, url: str) -> None:
        scheme = urlsplit(url).scheme
        if scheme != "https" and not (self.allow_http and scheme == "http"):
            allowed = "https or http" if self.allow_http else "https (http only when explicitly allowed)"
            raise ValueError(f"FLUX URL {url!r} must be {allowed}")

    def check_sample(self, url: str, api_host: str) -> None:
        """ValueError unless ``url`` may be fetched; no request is made to a refused one."""
        self.check_scheme(url)
        host = (urlsplit(url).hostname or "").lower()
        if host != api_host and host not in self.sample_hosts:
            raise ValueError(f"sample host {host!r} is neither the API's host nor an allowed one")
        if self.allow_private_addresses:
            return
        try:
            addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
        except OSError as error:
            raise ValueError(f"sample host {host!r} does not resolve: {error}") from error
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if not ip.is_global or ip.is_multicast:
                raise ValueError(f"sample host {host!r} resolves to a non-public address ({ip})")


def _reencoded(body: bytes, max_pixels: int) -> bytes:
    """The image's pixels as a fresh PNG: no metadata, trailing data or other format survives."""
    try:
        with Image.open(io.BytesIO(body), formats=IMAGE_FORMATS) as image:
            width, height = image.size  # read from the header, before any pixel is decoded
            if width * height > max_pixels:
                raise _MalformedReplyError(f"sample is {width}x{height}, more than {max_pixels} pixels")
            image.load()
            pixels = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    except _MalformedReplyError:
        raise
    except Exception as exc:  # Pillow raises many kinds for undecodable or truncated data
        raise _MalformedReplyError(f"sample is not a PNG, JPEG or WebP image ({type(exc).__name__})") from exc
    out = io.BytesIO()
    pixels.save(out, format="PNG")
    return out.getvalue()


def _retry_after(value: str | None, cap: float) -> float | None:
    """Seconds from a Retry-After header, capped; None when absent or an HTTP date (we use backoff then)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), cap)


def _read_body(response: requests.Response, limit: int) -> bytes:
    # Streamed so that a runaway reply cannot exhaust the worker's memory.
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=64 * 1024):
        size += len(chunk)
        if size > limit:
            raise _MalformedReplyError(f"reply is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def flux_prompt(request: PoseRequest) -> str:
    """The prompt sent upstream: the text prompt, or the reference pose, plus the variation index."""
    if request.generation_type == GALLERY_REFERENCE:
        subject = f"reference pose {request.reference_id}"
    else:
        subject = (request.text_prompt or "").strip()
    return f"{subject}, variation {request.index}"


class FluxGenerator:
    """Generates pose images with a FLUX-compatible API.

    FLUX returns only an image, so the keypoints and base pose are the embedded generator's
    skeleton for the same request (the pose that was asked for, not one detected in the image).

    Malformed replies (invalid JSON, missing fields, a sample that is not a PNG) are retried within
    the same ``max_attempts`` budget, since a proxy hiccup can cause them; if the last attempt of a
    step is still malformed the error is a PermanentGenerationError, as the upstream is evidently
    speaking another protocol. Polling stops with TransientGenerationError after ``poll_timeout``
    seconds by ``clock``.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        max_attempts: int = 5,
        image_size: int = 512,
        poll_interval: float = 1.0,
        poll_timeout: float = 300.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_max: float = 60.0,
        policy: DestinationPolicy | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        # Until the worker's settings carry it, the policy comes from the worker's environment.
        self._policy = policy or DestinationPolicy.from_env(os.environ)
        self._policy.check_scheme(base_url)
        if timeout <= 0 or connect_timeout <= 0:
            raise ValueError("FLUX timeouts must be positive")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if image_size < 256 or image_size % 32:
            raise ValueError(f"FLUX image size must be a multiple of 32 and >= 256, got {image_size}")
        self._base_url = base_url.rstrip("/")
        self._api_host = (urlsplit(base_url).hostname or "").lower()
        self._api_key = api_key
        self._timeout = (min(connect_timeout, timeout), timeout)
        self._max_attempts = max_attempts
        self._image_size = image_size
        self._poll_interval = poll_interval
        self._poll_timeout = poll_timeout
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._retry_after_max = retry_after_max
        self._session = session or requests.Session()
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()

    def generate(self, request: PoseRequest) -> GeneratedPose:
        # Validates the request before anything is sent upstream.
        base_pose, keypoints = skeleton_for(request)
        prompt = flux_prompt(request)
        counters = _Counters()
        task_id = self._call(
            "submit",
            "POST",
            f"{self._base_url}/v1/generate",
            _task_id,
            counters,
            payload={
                "prompt": prompt,
                "seed": request.seed,
                "width": self._image_size,
                "height": self._image_size,
            },
        )
        sample_url = self._await_sample(task_id, counters)
        png = self._call("download", "GET", sample_url, self._image, counters, authenticated=False)
        return GeneratedPose(
            png=png,
            keypoints=keypoints,
            base_pose=base_pose,
            metadata={
                "generator": "flux",
                "flux_request_id": task_id,
                "attempts": counters.requests,
                "retries": counters.retries,
                "polls": counters.polls,
                "prompt": prompt,
                "width": self._image_size,
                "height": self._image_size,
            },
        )

    def _await_sample(self, task_id: str, counters: _Counters) -> str:
        deadline = self._clock() + self._poll_timeout
        while True:
            counters.polls += 1
            status, sample = self._call(
                "poll",
                "GET",
                f"{self._base_url}/v1/get_result",
                self._poll_result,
                counters,
                params={"id": task_id},
            )
            if sample is not None:
                return sample
            if status in _REFUSED_STATUSES:
                raise UpstreamRefusedError(f"FLUX refused task {task_id}: {status}")
            if status in _FAILED_STATUSES:
                raise TransientGenerationError(f"FLUX task {task_id} failed: {status}")
            if self._clock() + self._poll_interval > deadline:
                raise TransientGenerationError(f"FLUX task {task_id} still {status!r} after {self._poll_timeout:g}s")
            self._sleep(self._poll_interval)

    def _poll_result(self, body: bytes) -> tuple[str, str | None]:
        """(status, absolute sample URL once Ready)."""
        reply = _json_object(body)
        status = reply.get("status")
        if not isinstance(status, str):
            raise _MalformedReplyError("poll reply has no string 'status'")
        if status != "Ready":
            return status, None
        result = reply.get("result")
        sample = result.get("sample") if isinstance(result, dict) else None
        if not isinstance(sample, str) or not sample:
            raise _MalformedReplyError("Ready poll reply has no string 'result.sample'")
        url = urljoin(f"{self._base_url}/", sample)
        try:
            self._policy.check_sample(url, self._api_host)
        except ValueError as error:
            raise PermanentGenerationError(f"FLUX sample URL refused: {error}") from error
        return status, url

    def _image(self, body: bytes) -> bytes:
        return _reencoded(body, self._policy.max_pixels)

    def _backoff(self, attempt: int) -> float:
        # Equal jitter: never shorter than half the exponential step, so backoff still grows.
        step = min(self._backoff_max, self._backoff_base * 2.0 ** (attempt - 1))
        return step / 2 + self._rng.uniform(0, step / 2)

    def _call(
        self,
        step: str,
        method: str,
        url: str,
        parse: Callable[[bytes], T],
        counters: _Counters,
        *,
        payload: dict[str, object] | None = None,
        params: dict[str, str] | None = None,
        authenticated: bool = True,
    ) -> T:
        """One HTTP step with retries; ``parse`` turns a 2xx body into the result (or rejects it)."""
        # The key goes to the API only, never to the (often third-party) image host, and no
        # redirect is followed: it could carry the key, or the download, anywhere.
        headers = {"x-key": self._api_key, "accept": "application/json"} if authenticated else {}
        limit = MAX_JSON_BYTES if authenticated else MAX_IMAGE_BYTES
        failure = ""
        malformed = False
        for attempt in range(1, self._max_attempts + 1):
            counters.requests += 1
            delay: float | None = None
            try:
                with self._session.request(
                    method,
                    url,
                    json=payload,
                    params=params,
                    headers=headers,
                    timeout=self._timeout,
                    stream=True,
                    allow_redirects=False,
                ) as response:
                    status = response.status_code
                    if status == 429 or status >= 500:
                        failure, malformed = f"HTTP {status}", False
                        delay = _retry_after(response.headers.get("Retry-After"), self._retry_after_max)
                    elif not 200 <= status < 300:
                        raise UpstreamRefusedError(f"FLUX {step} refused with HTTP {status} {response.reason}")
                    else:
                        return parse(_read_body(response, limit))
            except _MalformedReplyError as exc:
                failure, malformed = f"malformed reply: {exc}", True
            except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                failure, malformed = f"{type(exc).__name__}: {exc}", False
            except requests.RequestException as exc:
                # Invalid URL, bad scheme, too many redirects: configuration, not luck.
                raise PermanentGenerationError(f"FLUX {step} request failed: {exc}") from exc
            if attempt < self._max_attempts:
                counters.retries += 1
                self._sleep(delay if delay is not None else self._backoff(attempt))
        message = f"FLUX {step} failed after {self._max_attempts} attempts; last: {failure}"
        if malformed:
            raise PermanentGenerationError(message)
        raise TransientGenerationError(message)
