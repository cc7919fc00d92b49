"""The operator's client on the wire, against a TLS server on loopback that demands the client
certificate a kubeconfig names: the request each call makes (path, query, content type, token), the
API's refusals as ``ApiError``, and a watch read line by line however its chunks fall."""

from __future__ import annotations

import base64
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from posegen_devstack.pki import Pki, ensure_pki
from posegen_operator.act.errors import describe
from posegen_operator.kube import MERGE_PATCH, ApiError, KubeClient, KubeConfig, lines, release, resource_path
from posegen_operator.kube.client import Query
from posegen_operator.kube.config import from_kubeconfig

TIMEOUT = (5.0, 5.0)


@dataclass
class Reply:
    status: int
    chunks: list[bytes]  # sent as HTTP chunks, each flushed on its own
    hold: threading.Event | None = None  # the rest waits for it after the first chunk (a watch between events)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client: str  # the common name of the certificate the client presented


@dataclass
class ApiServer:
    url: str
    replies: dict[str, Reply] = field(default_factory=dict)  # by path, query included
    seen: list[Seen] = field(default_factory=list)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return ensure_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def server(pki: Pki) -> Iterator[ApiServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(pki.serving_cert, pki.serving_key)
    yield from serve(context)


@pytest.fixture
def plain_server() -> Iterator[ApiServer]:
    """Without TLS, whose records may make a reused connection look dropped to urllib3."""
    yield from serve(None)


def serve(context: ssl.SSLContext | None) -> Iterator[ApiServer]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle_one_request(self) -> None:
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline or not self.parse_request():
                self.close_connection = True
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            api.seen.append(Seen(self.command, self.path, dict(self.headers), body, self._client()))
            reply = api.replies.get(self.path, Reply(404, [b'{"kind":"Status","message":"not here"}']))
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for index, chunk in enumerate(reply.chunks):
                if index == 1 and reply.hold:
                    reply.hold.wait(10)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

        def _client(self) -> str:
            if not isinstance(self.connection, ssl.SSLSocket):
                return ""
            certificate = x509.load_der_x509_certificate(self.connection.getpeercert(binary_form=True) or b"")
            return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)

        def log_message(self, *_: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if context is not None:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    api = ApiServer(f"{'https' if context else 'http'}://127.0.0.1:{httpd.server_address[1]}")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield api
    httpd.shutdown()
    httpd.server_close()


def client(
    tmp_path: Path, pki: Pki, server: ApiServer, *, embedded: bool = True, token_file: bool = False
) -> KubeClient:
    """A client from a kubeconfig with the stack's admin certificate, embedded or as files."""
    if embedded:
        cluster = {"certificate-authority-data": base64.b64encode(pki.ca_cert.read_bytes()).decode()}
        user = {
            "client-certificate-data": base64.b64encode(pki.admin_cert.read_bytes()).decode(),
            "client-key-data": base64.b64encode(pki.admin_key.read_bytes()).decode(),
        }
    else:
        cluster = {"certificate-authority": str(pki.ca_cert)}
        user = {"client-certificate": str(pki.admin_cert), "client-key": str(pki.admin_key)}
    if token_file:
        (tmp_path / "token").write_text("the-token\n")
        user["tokenFile"] = "token"
    document = {
        "clusters": [{"name": "c", "cluster": {"server": server.url, **cluster}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(document))
    return KubeClient(from_kubeconfig([tmp_path / "kubeconfig"]), connections=2)


def test_a_request_presents_the_kubeconfigs_certificate_and_decodes_the_reply(
    tmp_path: Path, pki: Pki, server: ApiServer
) -> None:
    server.replies["/api/v1/namespaces/ns/pods/w-1"] = Reply(200, [b'{"metadata":', b' {"name": "w-1"}}'])

    for embedded in (True, False):
        reply = client(tmp_path, pki, server, embedded=embedded).request(
            "GET", resource_path("v1", "pods", "ns", "w-1"), timeout=TIMEOUT
        )
        assert reply == {"metadata": {"name": "w-1"}}
    assert [seen.client for seen in server.seen] == ["posegen-admin", "posegen-admin"]
    assert "Authorization" not in server.seen[0].headers


def test_each_call_sends_its_body_content_type_query_and_token(tmp_path: Path, pki: Pki, server: ApiServer) -> None:
    api = client(tmp_path, pki, server, token_file=True)
    status = resource_path("posegen.io/v1", "posegenerations", "ns", "g 1", "status")
    server.replies[status] = Reply(200, [b"{}"])
    server.replies["/api/v1/pods?labelSelector=a%3Db%2Cc%3Dd&watch=true&limit=5"] = Reply(200, [b"{}"])

    api.request("PATCH", status, body={"status": {"phase": "Queued"}}, content_type=MERGE_PATCH, timeout=TIMEOUT)
    query: Query = {"labelSelector": "a=b,c=d", "watch": True, "limit": 5, "continue": None}
    api.request("GET", resource_path("v1", "pods"), query=query, timeout=TIMEOUT)

    patch, listing = server.seen
    assert (patch.method, patch.path) == ("PATCH", "/apis/posegen.io/v1/namespaces/ns/posegenerations/g%201/status")
    assert patch.headers["Content-Type"] == "application/merge-patch+json"
    assert json.loads(patch.body) == {"status": {"phase": "Queued"}}
    assert patch.headers["Authorization"] == "Bearer the-token"
    assert patch.headers["User-Agent"] == "posegen-operator"
    assert (listing.method, listing.body) == ("GET", b"")
    assert "Content-Type" not in listing.headers


def test_a_refusal_is_an_api_error_with_the_apis_own_message(tmp_path: Path, pki: Pki, server: ApiServer) -> None:
    quota = {"kind": "Status", "status": "Failure", "message": 'pods "w-1" is forbidden: exceeded quota', "code": 403}
    server.replies["/api/v1/namespaces/ns/pods"] = Reply(403, [json.dumps(quota).encode()])
    server.replies["/api/v1/namespaces/down/pods"] = Reply(503, [b"upstream connect error"])
    api = client(tmp_path, pki, server)

    with pytest.raises(ApiError) as refused:
        api.request("POST", resource_path("v1", "pods", "ns"), body={"kind": "Pod"}, timeout=TIMEOUT)
    with pytest.raises(ApiError) as unavailable:
        api.request("POST", resource_path("v1", "pods", "down"), body={"kind": "Pod"}, timeout=TIMEOUT)

    assert (refused.value.status, refused.value.reason) == (403, "Forbidden")
    assert refused.value.message == 'pods "w-1" is forbidden: exceeded quota'
    assert describe(refused.value) == "403 Forbidden"
    assert (unavailable.value.status, unavailable.value.message) == (503, None)
    assert str(unavailable.value) == "503 Service Unavailable"


def test_a_watch_is_read_line_by_line_however_its_chunks_fall(tmp_path: Path, pki: Pki, server: ApiServer) -> None:
    events = [{"type": "ADDED", "object": {"n": 1}}, {"type": "MODIFIED", "object": {"n": 2}}]
    stream = b"".join(json.dumps(event).encode() + b"\n" for event in events) + b'{"type": "BOOKMARK"}'
    server.replies["/api/v1/pods?watch=true"] = Reply(200, [stream[:7], stream[7:40], stream[40:]])
    server.replies["/api/v1/pods?watch=true&resourceVersion=1"] = Reply(
        410, [b'{"kind":"Status","message":"too old resource version","code":410}']
    )
    api = client(tmp_path, pki, server)

    response = api.open(resource_path("v1", "pods"), query={"watch": True}, timeout=TIMEOUT)
    try:
        assert [json.loads(line) for line in lines(response)] == [*events, {"type": "BOOKMARK"}]
    finally:
        response.release_conn()
    with pytest.raises(ApiError) as gone:
        api.open(resource_path("v1", "pods"), query={"watch": True, "resourceVersion": 1}, timeout=TIMEOUT)
    assert (gone.value.status, gone.value.message) == (410, "too old resource version")


def test_a_watch_cut_short_leaves_no_stream_for_the_next_request(plain_server: ApiServer) -> None:
    later = threading.Event()
    plain_server.replies["/api/v1/pods?watch=true"] = Reply(200, [b'{"type": "ADDED"}\n', b'{"type": "LATE"}\n'], later)
    plain_server.replies["/api/v1/namespaces/ns/pods"] = Reply(201, [b'{"kind": "Pod"}'])
    api = KubeClient(KubeConfig(server=plain_server.url), connections=1)

    watch = api.open(resource_path("v1", "pods"), query={"watch": True}, timeout=TIMEOUT)
    events = lines(watch)
    assert json.loads(next(events)) == {"type": "ADDED"}
    release(watch)  # as the pod watch does when it stops reading mid-stream (an ERROR event), events still open

    try:  # a create (never retried) while the old stream waits for its next event
        created = api.request("POST", resource_path("v1", "pods", "ns"), body={"kind": "Pod"}, timeout=TIMEOUT)
    finally:
        later.set()
    assert created == {"kind": "Pod"}
    assert [seen.method for seen in plain_server.seen] == ["GET", "POST"], "the create was sent once"
