"""A loopback fake of the FLUX API with a scriptable fault plan, for testing FluxGenerator.

Protocol: POST /v1/generate (x-key header) -> {"id"}; GET /v1/get_result?id= -> {"status", "result":
{"sample"}}; GET /samples/<id>.png -> PNG bytes. Faults queued with ``script`` are consumed in order,
one per request to that endpoint; once a queue is empty the endpoint behaves normally.
"""

from __future__ import annotations

import io
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Literal, cast
from urllib.parse import parse_qs, urlsplit

from PIL import Image

Endpoint = Literal["generate", "get_result", "sample"]

MAX_REQUEST_BYTES = 64 * 1024
MAX_STALL_SECONDS = 5.0


@dataclass(frozen=True)
class Fault:
    """One scripted reply. ``status`` None means the normal reply, after ``stall`` seconds."""

    status: int | None = None
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    stall: float = 0.0


def http_error(status: int, retry_after: str | None = None) -> Fault:
    headers = (("Retry-After", retry_after),) if retry_after is not None else ()
    body = json.dumps({"detail": f"scripted {status}"}).encode()
    return Fault(status=status, body=body, headers=(("Content-Type", "application/json"), *headers))


def stall(seconds: float) -> Fault:
    """Answer normally but only after ``seconds``: a read timeout for a client with a shorter timeout."""
    return Fault(stall=seconds)


def reply(body: bytes, content_type: str = "application/json", status: int = 200) -> Fault:
    """A verbatim reply, e.g. malformed JSON or a sample that is not a PNG."""
    return Fault(status=status, body=body, headers=(("Content-Type", content_type),))


def reply_json(value: object, status: int = 200) -> Fault:
    return reply(json.dumps(value).encode(), status=status)


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    endpoint: Endpoint | None


@dataclass
class _Task:
    prompt: str
    seed: int
    width: int
    height: int
    polls: int = 0
    png: bytes = field(default=b"", repr=False)


def sample_png(width: int, height: int, seed: int) -> bytes:
    colour = (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


class FakeFlux:
    """Serves the fake API on 127.0.0.1 (ephemeral port) while used as a context manager."""

    def __init__(self, api_key: str, *, pending_polls: int = 0) -> None:
        self.api_key = api_key
        self.pending_polls = pending_polls  # Pending replies per task before it is Ready
        self.requests: list[Recorded] = []
        self.tasks: dict[str, _Task] = {}
        self._plan: dict[Endpoint, deque[Fault]] = {
            "generate": deque(),
            "get_result": deque(),
            "sample": deque(),
        }
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        # A short poll interval makes shutdown (and so each test's teardown) quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, name="fake-flux", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def script(self, endpoint: Endpoint, *faults: Fault) -> None:
        with self._lock:
            self._plan[endpoint].extend(faults)

    def calls(self, endpoint: Endpoint) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.endpoint == endpoint]

    def __enter__(self) -> FakeFlux:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()  # wakes stalled handlers so shutdown is prompt
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=MAX_STALL_SECONDS)

    def _record(self, recorded: Recorded) -> None:
        with self._lock:
            self.requests.append(recorded)

    def _next_fault(self, endpoint: Endpoint) -> Fault | None:
        with self._lock:
            plan = self._plan[endpoint]
            return plan.popleft() if plan else None

    def _stall(self, seconds: float) -> None:
        self._stopping.wait(min(seconds, MAX_STALL_SECONDS))

    def _submit(self, body: bytes) -> tuple[int, object]:
        try:
            payload = json.loads(body)
        except ValueError:
            return 422, {"detail": "body is not JSON"}
        if not isinstance(payload, dict):
            return 422, {"detail": "body is not an object"}
        prompt, seed = payload.get("prompt"), payload.get("seed")
        width, height = payload.get("width"), payload.get("height")
        if not (isinstance(prompt, str) and prompt and all(isinstance(v, int) for v in (seed, width, height))):
            return 422, {"detail": "prompt, seed, width and height are required"}
        with self._lock:
            task_id = f"task-{len(self.tasks) + 1}"
            self.tasks[task_id] = _Task(prompt, cast(int, seed), cast(int, width), cast(int, height))
        return 200, {"id": task_id, "polling_url": f"{self.base_url}/v1/get_result?id={task_id}"}

    def _result(self, task_id: str) -> dict[str, object]:
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None:
                return {"id": task_id, "status": "Task not found"}
            task.polls += 1
            if task.polls <= self.pending_polls:
                return {"id": task_id, "status": "Pending", "result": None}
        sample = f"{self.base_url}/samples/{task_id}.png"
        return {"id": task_id, "status": "Ready", "result": {"sample": sample, "prompt": task.prompt}}

    def sample_for(self, task_id: str) -> bytes | None:
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None:
                return None
            if not task.png:
                task.png = sample_png(task.width, task.height, task.seed)
            return task.png


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], fake: FakeFlux) -> None:
        super().__init__(address, handler)
        self.fake = fake


def _route(method: str, path: str) -> Endpoint | None:
    if method == "POST" and path == "/v1/generate":
        return "generate"
    if method == "GET" and path == "/v1/get_result":
        return "get_result"
    if method == "GET" and path.startswith("/samples/") and path.endswith(".png"):
        return "sample"
    return None


class _Handler(BaseHTTPRequestHandler):
    timeout = 10  # a stuck client cannot hold a handler thread for long

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: tests read ``FakeFlux.requests`` instead."""

    def _handle(self, method: str) -> None:
        fake = cast(_Server, self.server).fake
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_REQUEST_BYTES:
            self._send(413, b'{"detail": "too large"}', (("Content-Type", "application/json"),))
            return
        body = self.rfile.read(length)
        endpoint = _route(method, url.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        fake._record(Recorded(method, url.path, parse_qs(url.query), headers, body, endpoint))
        if endpoint is None:
            self._json(404, {"detail": "not found"})
            return
        # Samples are public URLs, as with the real API; only API calls need the key.
        if endpoint != "sample" and headers.get("x-key") != fake.api_key:
            self._json(401, {"detail": "invalid x-key"})
            return
        fault = fake._next_fault(endpoint)
        if fault is not None:
            fake._stall(fault.stall)
            if fault.status is not None:
                self._send(fault.status, fault.body, fault.headers)
                return
        if endpoint == "generate":
            self._json(*fake._submit(body))
        elif endpoint == "get_result":
            self._json(200, fake._result(parse_qs(url.query).get("id", [""])[0]))
        else:
            png = fake.sample_for(url.path.removeprefix("/samples/").removesuffix(".png"))
            if png is None:
                self._json(404, {"detail": "no such sample"})
            else:
                self._send(200, png, (("Content-Type", "image/png"),))

    def _json(self, status: int, value: object) -> None:
        self._send(status, json.dumps(value).encode(), (("Content-Type", "application/json"),))

    def _send(self, status: int, body: bytes, headers: tuple[tuple[str, str], ...]) -> None:
        try:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and went away, which is what a stall is for
