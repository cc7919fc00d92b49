"""Requests to the Kubernetes API server: JSON in and out as plain dicts, a refusal raised as
``ApiError``, a watch read line by line.

One urllib3 pool shared by every thread (urllib3's pools are thread-safe), with urllib3's default
retries of a failed connection, as the ``kubernetes`` client had."""

from __future__ import annotations

import contextlib
import json
import ssl
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import urllib3

from posegen_operator.kube.config import KubeConfig

Timeout = tuple[float, float]  # (connect, read) seconds
Query = Mapping[str, str | int | bool | None]
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"  # what kubectl and the kubernetes client send for custom objects
USER_AGENT = "posegen-operator"  # how the API server's audit log and metrics name us


class ApiError(Exception):
    """The API server refused a request: its HTTP status and reason, and the API's own message (a
    quota, an admission policy, a CEL rule) when the body is a Status."""

    def __init__(self, status: int, reason: str, message: str | None = None) -> None:
        super().__init__(f"{status} {reason}" + (f": {message}" if message else ""))
        self.status, self.reason, self.message = status, reason, message

    @classmethod
    def from_response(cls, response: urllib3.BaseHTTPResponse) -> ApiError:
        try:
            body = json.loads(response.data)
            message = body.get("message") if isinstance(body, dict) else None
        except ValueError:
            message = None
        return cls(response.status, response.reason or "", str(message) if message else None)


def resource_path(
    group_version: str,
    plural: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """``/api/v1/namespaces/ns/pods/name`` and the like: a collection (no ``name``), in a namespace
    or cluster-wide (no ``namespace``), an object, or its subresource."""
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    parts = ["namespaces", namespace] if namespace is not None else []
    parts += [part for part in (plural, name, subresource) if part is not None]
    return prefix + "".join("/" + quote(part, safe="") for part in parts)


class KubeClient:
    def __init__(self, config: KubeConfig, *, connections: int) -> None:
        """``connections``: how many are kept open for reuse, one for each thread that may be in a
        request at once (more are opened when needed, and closed after use)."""
        self.config = config
        self._pool = urllib3.PoolManager(
            maxsize=connections,
            ssl_context=ssl_context(config),
            cert_reqs=ssl.CERT_NONE if config.insecure else ssl.CERT_REQUIRED,
            assert_hostname=False if config.insecure else None,
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        timeout: Timeout,
        query: Query | None = None,
        body: object = None,
        content_type: str = JSON,
    ) -> dict[str, Any]:
        """The decoded reply to one request; ``ApiError`` for any status but 2xx."""
        response = self._send(method, path, timeout, query, body, content_type, preload=True)
        if not 200 <= response.status < 300:
            raise ApiError.from_response(response)
        reply: dict[str, Any] = json.loads(response.data) if response.data else {}
        return reply

    def open(self, path: str, *, timeout: Timeout, query: Query | None = None) -> urllib3.BaseHTTPResponse:
        """A GET whose body is read as it arrives (a watch, a large list): the caller reads it,
        then ``release``s it; ``shutdown()`` from another thread ends a blocked read."""
        response = self._send("GET", path, timeout, query, None, JSON, preload=False)
        if not 200 <= response.status < 300:
            try:
                raise ApiError.from_response(response)
            finally:
                release(response)
        return response

    def close(self) -> None:
        self._pool.clear()

    def _send(
        self,
        method: str,
        path: str,
        timeout: Timeout,
        query: Query | None,
        body: object,
        content_type: str,
        *,
        preload: bool,
    ) -> urllib3.BaseHTTPResponse:
        url = self.config.server + path
        if query:
            url += "?" + urlencode({key: _query_value(value) for key, value in query.items() if value is not None})
        headers = {"Accept": JSON, "User-Agent": USER_AGENT}
        token = self.config.bearer_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        encoded = None
        if body is not None:
            encoded = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        return self._pool.request(
            method,
            url,
            body=encoded,
            headers=headers,
            timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
            preload_content=preload,
        )


def lines(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """A streamed body's lines, each as soon as its newline arrives (a watch sends one event a line)."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from complete
    if pending:
        yield pending


def release(response: urllib3.BaseHTTPResponse) -> None:
    """Hand a streamed response's connection back to the pool. One not read to its end (a watch
    left mid-stream) is closed first: the pool is shared, and the next request sent on it would
    queue behind the rest of the stream."""
    if not response.closed:
        response.close()
    response.release_conn()


def ssl_context(config: KubeConfig) -> ssl.SSLContext:
    """The CA to trust and the client certificate to present."""
    context = ssl.create_default_context(cafile=config.ca_path, cadata=config.ca_data)
    if config.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.certificate_path or config.certificate_data:
        with (
            _as_file(config.certificate_path, config.certificate_data) as certificate,
            _as_file(config.key_path, config.key_data) as key,
        ):
            context.load_cert_chain(certificate or "", key)
    return context


@contextlib.contextmanager
def _as_file(path: str | None, data: str | None) -> Iterator[str | None]:
    """A file holding ``data`` (ssl loads a key only from a file), gone once the block ends; or ``path``."""
    if path or data is None:
        yield path
        return
    with tempfile.NamedTemporaryFile("w", prefix="posegen-kube-") as file:  # mode 0600
        file.write(data)
        file.flush()
        yield file.name


def _query_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
