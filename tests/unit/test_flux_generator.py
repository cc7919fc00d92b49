from __future__ import annotations

import io
import json
import random
import socket
import struct
import zlib
from collections.abc import Iterator

import pytest
from PIL import Image, PngImagePlugin

from posegen_worker.generators import (
    GALLERY_REFERENCE,
    TEXT_DESCRIPTION,
    PermanentGenerationError,
    PoseRequest,
    TransientGenerationError,
    build_generator,
)
from posegen_worker.generators.embedded import skeleton_for
from posegen_worker.generators.flux import DestinationPolicy, FluxGenerator
from tests.fakes.fake_flux import FakeFlux, Fault, http_error, reply, reply_json, stall

API_KEY = "test-key-123"
REQUEST = PoseRequest("gen-1", "proj-1", TEXT_DESCRIPTION, "a woman running on a beach", None, 42, 3)
MAX_ATTEMPTS = 4
BACKOFF_BASE = 0.5
# The fake API listens on loopback over http: what production refuses unless told otherwise.
LOOPBACK = DestinationPolicy(allow_http=True, allow_private_addresses=True)


def same_pixels(png: bytes, expected: bytes | None) -> bool:
    assert expected is not None
    with Image.open(io.BytesIO(png)) as got, Image.open(io.BytesIO(expected)) as want:
        return got.format == "PNG" and got.size == want.size and got.tobytes() == want.convert(got.mode).tobytes()


class FakeTime:
    """Injected clock and sleep: sleeping advances the clock, and every sleep is recorded."""

    MAX_SLEEPS = 100  # an unbounded retry or poll loop fails the test instead of hanging it

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert len(self.sleeps) < self.MAX_SLEEPS, "the generator kept sleeping"
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake() -> Iterator[FakeFlux]:
    with FakeFlux(API_KEY) as server:
        yield server


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def make(
    fake: FakeFlux, fake_time: FakeTime, policy: DestinationPolicy = LOOPBACK, **overrides: float
) -> FluxGenerator:
    return FluxGenerator(
        fake.base_url,
        API_KEY,
        timeout=overrides.get("timeout", 2.0),
        max_attempts=int(overrides.get("max_attempts", MAX_ATTEMPTS)),
        image_size=256,
        poll_interval=overrides.get("poll_interval", 0.5),
        poll_timeout=overrides.get("poll_timeout", 30.0),
        backoff_base=BACKOFF_BASE,
        retry_after_max=overrides.get("retry_after_max", 60.0),
        sleep=fake_time.sleep,
        clock=fake_time.clock,
        rng=random.Random(0),
        policy=policy,
    )


def test_happy_path_submits_polls_and_downloads(fake: FakeFlux, fake_time: FakeTime) -> None:
    fake.pending_polls = 2
    result = make(fake, fake_time).generate(REQUEST)

    assert same_pixels(result.png, fake.sample_for("task-1"))
    assert Image.open(io.BytesIO(result.png)).size == (256, 256)
    assert (result.base_pose, result.keypoints) == skeleton_for(REQUEST)
    assert result.base_pose == "running"
    assert result.metadata["flux_request_id"] == "task-1"
    assert result.metadata["attempts"] == 1 + 3 + 1
    assert result.metadata["retries"] == 0
    json.dumps(result.metadata)

    submit = fake.calls("generate")
    assert len(submit) == 1
    assert json.loads(submit[0].body) == {
        "prompt": "a woman running on a beach, variation 3",
        "seed": 42,
        "width": 256,
        "height": 256,
    }
    polls = fake.calls("get_result")
    assert [p.query for p in polls] == [{"id": ["task-1"]}] * 3
    assert fake_time.sleeps == [0.5, 0.5]  # one poll interval per Pending reply


def test_api_key_is_sent_to_the_api_but_not_to_the_image_host(fake: FakeFlux, fake_time: FakeTime) -> None:
    make(fake, fake_time).generate(REQUEST)
    for call in fake.calls("generate") + fake.calls("get_result"):
        assert call.headers["x-key"] == API_KEY
    [download] = fake.calls("sample")
    assert "x-key" not in download.headers


def test_wrong_api_key_is_a_permanent_error_without_retry(fake: FakeFlux, fake_time: FakeTime) -> None:
    generator = FluxGenerator(fake.base_url, "wrong", policy=LOOPBACK, sleep=fake_time.sleep, clock=fake_time.clock)
    with pytest.raises(PermanentGenerationError, match="401"):
        generator.generate(REQUEST)
    assert len(fake.requests) == 1
    assert fake_time.sleeps == []


def test_api_redirects_are_not_followed_so_the_key_stays_put(fake: FakeFlux, fake_time: FakeTime) -> None:
    fake.script("generate", Fault(status=307, headers=(("Location", f"{fake.base_url}/elsewhere"),)))
    with pytest.raises(PermanentGenerationError, match="307"):
        make(fake, fake_time).generate(REQUEST)
    assert [r.path for r in fake.requests] == ["/v1/generate"]


def test_gallery_prompt_names_the_reference(fake: FakeFlux, fake_time: FakeTime) -> None:
    request = PoseRequest("gen-2", "proj-1", GALLERY_REFERENCE, None, "lib-0007", 9, 0)
    result = make(fake, fake_time).generate(request)
    assert json.loads(fake.calls("generate")[0].body)["prompt"] == "reference pose lib-0007, variation 0"
    assert result.base_pose == skeleton_for(request)[0]


def test_429_honours_retry_after(fake: FakeFlux, fake_time: FakeTime) -> None:
    fake.script("generate", http_error(429, retry_after="7"))
    result = make(fake, fake_time).generate(REQUEST)
    assert fake_time.sleeps == [7.0]
    assert len(fake.calls("generate")) == 2
    assert result.metadata["retries"] == 1


def test_retry_after_is_capped(fake: FakeFlux, fake_time: FakeTime) -> None:
    fake.script("get_result", http_error(429, retry_after="86400"))
    make(fake, fake_time, retry_after_max=20.0).generate(REQUEST)
    assert fake_time.sleeps == [20.0]


def test_server_errors_back_off_exponentially_with_jitter(fake: FakeFlux, fake_time: FakeTime) -> None:
    fake.script("generate", http_error(500), http_error(503), http_error(502))
    result = make(fake, fake_time).generate(REQUEST)
    assert same_pixels(result.png, fake.sample_for("task-1"))
    assert len(fake.calls("generate")) == 4
    assert len(fake_time.sleeps) == 3
    for attempt, delay in enumerate(fake_time.sleeps, start=1):
        step = BACKOFF_BASE * 2 ** (attempt - 1)
        assert step / 2 <= delay <= step
    # Jitter: the delays are not just the bare exponential steps.
    assert fake_time.sleeps != [BACKOFF_BASE * 2**n for n in range(3)]


def test_download_errors_are_retried_too(fake: FakeFlux, fake_time: FakeTime) -> None:
    fake.script("sample", http_error(503), http_error(500))
    result = make(fake, fake_time).generate(REQUEST)
    assert same_pixels(result.png, fake.sample_for("task-1"))
    assert len(fake.calls("sample")) == 3


def test_read_timeout_is_retried(fake: FakeFlux, fake_time: FakeTime) -> None:
    fake.script("get_result", stall(3.0))
    result = make(fake, fake_time, timeout=0.2).generate(REQUEST)
    assert same_pixels(result.png, fake.sample_for("task-1"))
    assert len(fake.calls("get_result")) == 2
    assert result.metadata["retries"] == 1


def test_gives_up_after_max_attempts_with_a_transient_error(fake: FakeFlux, fake_time: FakeTime) -> None:
    fake.script("generate", *[http_error(503)] * 10)
    with pytest.raises(TransientGenerationError, match="after 4 attempts"):
        make(fake, fake_time).generate(REQUEST)
    assert len(fake.calls("generate")) == MAX_ATTEMPTS
    assert len(fake_time.sleeps) == MAX_ATTEMPTS - 1
    assert fake.calls("get_result") == []


def test_repeated_timeouts_end_in_a_transient_error(fake: FakeFlux, fake_time: FakeTime) -> None:
    fake.script("generate", stall(3.0), stall(3.0))
    with pytest.raises(TransientGenerationError, match="Timeout"):
        make(fake, fake_time, timeout=0.2, max_attempts=2).generate(REQUEST)
    assert len(fake.calls("generate")) == 2


def test_connection_refused_is_transient(fake_time: FakeTime) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port once the socket is closed.
    generator = FluxGenerator(
        f"http://127.0.0.1:{port}",
        API_KEY,
        max_attempts=3,
        policy=LOOPBACK,
        sleep=fake_time.sleep,
        clock=fake_time.clock,
    )
    with pytest.raises(TransientGenerationError, match="ConnectionError"):
        generator.generate(REQUEST)
    assert len(fake_time.sleeps) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_permanent_and_not_retried(fake: FakeFlux, fake_time: FakeTime, status: int) -> None:
    fake.script("generate", http_error(status))
    with pytest.raises(PermanentGenerationError, match=str(status)):
        make(fake, fake_time).generate(REQUEST)
    assert len(fake.calls("generate")) == 1
    assert fake_time.sleeps == []


@pytest.mark.parametrize(
    "garbage",
    [
        reply(b"{not json"),
        reply(b"<html>bad gateway</html>", content_type="text/html"),
        reply_json(["task-1"]),
        reply_json({"identifier": "task-1"}),
        reply_json({"id": 17}),
    ],
    ids=["broken-json", "html", "not-an-object", "missing-id", "id-not-a-string"],
)
def test_a_malformed_submit_reply_is_retried(fake: FakeFlux, fake_time: FakeTime, garbage: Fault) -> None:
    fake.script("generate", garbage)
    result = make(fake, fake_time).generate(REQUEST)
    assert len(fake.calls("generate")) == 2
    # The retry created the only task the fake knows about.
    assert result.metadata["flux_request_id"] == "task-1"


def test_persistently_malformed_replies_are_permanent(fake: FakeFlux, fake_time: FakeTime) -> None:
    fake.script("get_result", *[reply_json({"status": "Ready", "result": {}})] * MAX_ATTEMPTS)
    with pytest.raises(PermanentGenerationError, match="malformed"):
        make(fake, fake_time).generate(REQUEST)
    assert len(fake.calls("get_result")) == MAX_ATTEMPTS
    assert fake.calls("sample") == []


def test_a_sample_that_is_not_a_png_is_malformed(fake: FakeFlux, fake_time: FakeTime) -> None:
    fake.script("sample", reply(b"GIF89a....", content_type="image/png"))
    result = make(fake, fake_time).generate(REQUEST)
    assert result.png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(fake.calls("sample")) == 2

    fake.script("sample", *[reply(b"GIF89a....", content_type="image/png")] * MAX_ATTEMPTS)
    with pytest.raises(PermanentGenerationError, match="not a PNG, JPEG or WebP image"):
        make(fake, fake_time).generate(REQUEST)


def test_polling_gives_up_at_the_overall_timeout(fake: FakeFlux, fake_time: FakeTime) -> None:
    fake.pending_polls = 1_000_000
    with pytest.raises(TransientGenerationError, match="Pending"):
        make(fake, fake_time, poll_interval=1.0, poll_timeout=10.0).generate(REQUEST)
    assert sum(fake_time.sleeps) <= 10.0
    assert len(fake.calls("get_result")) == 11
    assert fake.calls("sample") == []


@pytest.mark.parametrize(
    ("status", "error"),
    [
        ("Error", TransientGenerationError),
        ("Task not found", TransientGenerationError),
        ("Content Moderated", PermanentGenerationError),
        ("Request Moderated", PermanentGenerationError),
    ],
)
def test_terminal_task_statuses(fake: FakeFlux, fake_time: FakeTime, status: str, error: type[Exception]) -> None:
    fake.script("get_result", reply_json({"id": "task-1", "status": status}))
    with pytest.raises(error, match=status):
        make(fake, fake_time).generate(REQUEST)
    assert len(fake.calls("get_result")) == 1


def test_bad_prompt_fails_before_any_request(fake: FakeFlux, fake_time: FakeTime) -> None:
    request = PoseRequest("gen-1", "proj-1", TEXT_DESCRIPTION, "  ", None, 1, 0)
    with pytest.raises(PermanentGenerationError):
        make(fake, fake_time).generate(request)
    assert fake.requests == []


def test_factory_builds_flux_and_checks_its_settings(fake: FakeFlux, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSEGEN_FLUX_ALLOW_HTTP", "true")
    monkeypatch.setenv("POSEGEN_FLUX_ALLOW_PRIVATE_ADDRESSES", "true")

    def build(url: str | None, key: str | None) -> object:
        return build_generator(
            "flux", pose_seconds=0.0, flux_url=url, flux_api_key=key, flux_timeout=2.0, flux_max_attempts=2
        )

    generator = build(fake.base_url, API_KEY)
    assert isinstance(generator, FluxGenerator)
    assert generator.generate(REQUEST).metadata["flux_request_id"] == "task-1"
    with pytest.raises(ValueError, match="URL"):
        build(None, API_KEY)
    with pytest.raises(ValueError, match="API key"):
        build(fake.base_url, "")
    with pytest.raises(ValueError, match="http"):
        build("ftp://example.invalid", API_KEY)


# ---- where the generator may go, and what it keeps --------------------------------------------
def ready(sample: str) -> Fault:
    return reply_json({"id": "task-1", "status": "Ready", "result": {"sample": sample}})


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_https_is_required_unless_explicitly_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSEGEN_FLUX_ALLOW_HTTP", raising=False)
    with pytest.raises(ValueError, match="must be https"):
        FluxGenerator("http://flux.example", API_KEY)
    with pytest.raises(ValueError, match="must be https"):
        DestinationPolicy(allow_private_addresses=True).check_sample("http://flux.example/s.png", "flux.example")
    FluxGenerator("https://flux.example", API_KEY)


def test_a_sample_on_another_host_is_refused_without_a_request(fake: FakeFlux, fake_time: FakeTime) -> None:
    port = fake.base_url.rsplit(":", 1)[1]
    fake.script("get_result", ready(f"http://localhost:{port}/samples/task-1.png"))
    with pytest.raises(PermanentGenerationError, match="neither the API's host nor an allowed one"):
        make(fake, fake_time).generate(REQUEST)
    assert fake.calls("sample") == []


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "169.254.169.254", "10.0.0.1", "192.168.1.1", "100.64.0.1", "[fd00::1]", "[::1]",
     "[::ffff:127.0.0.1]", "[fe80::1]", "0.0.0.0"],
)  # fmt: skip
def test_samples_on_loopback_link_local_or_private_addresses_are_refused(
    fake: FakeFlux, fake_time: FakeTime, host: str
) -> None:
    """Even on an allowed host: the check is made before any connection, so nothing is contacted."""
    policy = DestinationPolicy(allow_http=True, sample_hosts=frozenset({host.strip("[]"), "localhost"}))
    fake.script("get_result", ready(f"http://{host}:9/samples/task-1.png"))
    with pytest.raises(PermanentGenerationError, match="non-public address"):
        make(fake, fake_time, policy=policy).generate(REQUEST)
    assert fake.calls("sample") == []


def test_an_allowed_public_sample_host_passes_the_check() -> None:
    policy = DestinationPolicy(sample_hosts=frozenset({"93.184.215.14"}))
    policy.check_sample("https://93.184.215.14/samples/task-1.png", "api.flux.example")  # no error


def test_sample_redirects_are_not_followed(fake: FakeFlux, fake_time: FakeTime) -> None:
    fake.script("sample", Fault(status=302, headers=(("Location", f"{fake.base_url}/samples/task-1.png"),)))
    with pytest.raises(PermanentGenerationError, match="302"):
        make(fake, fake_time).generate(REQUEST)
    assert len(fake.calls("sample")) == 1


def test_the_image_is_reencoded_without_metadata_or_trailing_data(fake: FakeFlux, fake_time: FakeTime) -> None:
    served = Image.new("RGB", (256, 256), (10, 20, 30))
    metadata = PngImagePlugin.PngInfo()
    metadata.add_text("Comment", "<script>alert(1)</script>")
    out = io.BytesIO()
    served.save(out, format="PNG", pnginfo=metadata)
    polyglot = out.getvalue() + b"PK\x03\x04 trailing archive"
    fake.script("sample", reply(polyglot, content_type="image/png"))
    result = make(fake, fake_time).generate(REQUEST)
    assert same_pixels(result.png, polyglot)
    assert b"<script>" not in result.png and b"trailing" not in result.png
    assert result.png.endswith(png_chunk(b"IEND", b""))


def test_a_jpeg_sample_is_stored_as_png(fake: FakeFlux, fake_time: FakeTime) -> None:
    out = io.BytesIO()
    Image.new("RGB", (256, 256), (200, 100, 0)).save(out, format="JPEG")
    fake.script("sample", reply(out.getvalue(), content_type="image/jpeg"))
    result = make(fake, fake_time).generate(REQUEST)
    with Image.open(io.BytesIO(result.png)) as image:
        assert (image.format, image.size) == ("PNG", (256, 256))


def test_images_beyond_the_pixel_limit_are_refused(fake: FakeFlux, fake_time: FakeTime) -> None:
    small = DestinationPolicy(allow_http=True, allow_private_addresses=True, max_pixels=256 * 256 - 1)
    with pytest.raises(PermanentGenerationError, match="256x256, more than 65535 pixels"):
        make(fake, fake_time, policy=small).generate(REQUEST)


def test_a_decompression_bomb_is_refused_from_its_header(fake: FakeFlux, fake_time: FakeTime) -> None:
    header = struct.pack(">IIBBBBB", 5000, 5000, 8, 2, 0, 0, 0)  # 25 million RGB pixels, claimed
    bomb = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    fake.script("sample", *[reply(bomb + png_chunk(b"IEND", b""), content_type="image/png")] * MAX_ATTEMPTS)
    with pytest.raises(PermanentGenerationError, match="5000x5000, more than 16777216 pixels"):
        make(fake, fake_time).generate(REQUEST)
