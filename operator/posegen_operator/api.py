"""The seed's HTTP API, served by the operator: recovery status and trigger and the generate call
behind a bearer token, and the health check. Paths and JSON fields are the seed's.

Blocking work (SQL, Redis, the Kubernetes client) runs in threads: the event loop it shares with
kopf is never blocked. Error bodies say what was wrong with the request, never what is inside."""

from __future__ import annotations

import asyncio
import fnmatch
import hmac
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis
from aiohttp import web
from sqlalchemy import Engine

from posegen_common import checkpoint, keys
from posegen_operator.builders import GROUP, KIND, PLURAL, VERSION
from posegen_operator.controller import Controller
from posegen_operator.health import HealthCheck
from posegen_operator.kube import ApiError, KubeClient, resource_path
from posegen_operator.metrics import Metrics
from posegen_operator.settings import Settings

log = logging.getLogger("posegen.operator")
BASE = "/api/apps/pose-generator"
GENERATE_FIELDS = {
    "projectId",
    "generationType",
    "textPrompt",
    "poseLibraryIds",
    "variationCount",
    "seed",
    "priority",
    "namespace",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY_BYTES = 64 * 1024
JSON_TYPES = {"application/json"}


@dataclass
class ApiContext:
    settings: Settings
    controller: Controller
    engine: Engine
    redis: redis.Redis
    api: KubeClient
    metrics: Metrics
    default_namespace: str


def build_app(context: ApiContext) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_count(context), _auth(context)])
    app.router.add_get(f"{BASE}/recovery/status", _handler(context, recovery_status))
    app.router.add_post(f"{BASE}/recovery/trigger", _handler(context, recovery_trigger))
    checker = HealthCheck(context.settings.database_url, context.settings.redis_url)
    app.router.add_get(f"{BASE}/health", _health(checker))
    app.router.add_post(f"{BASE}/generate", _handler(context, generate))
    app.router.add_get("/readyz", _handler(context, ready))

    async def close_checker(_app: web.Application) -> None:
        await asyncio.to_thread(checker.close)

    app.on_cleanup.append(close_checker)
    return app


PUBLIC_PATHS = {f"{BASE}/health", "/readyz"}


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The admin API's TLS context when a certificate is configured (for the API site), else None."""
    if not settings.api_tls_cert_file or not settings.api_tls_key_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.api_tls_cert_file, settings.api_tls_key_file)
    return context


def _auth(context: ApiContext) -> Any:
    expected = f"Bearer {context.settings.admin_token}".encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        # aiohttp keeps undecodable header bytes as surrogates: encode them back, never fail on them.
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        # Constant time: the comparison does not reveal how much of a guess was right.
        if not hmac.compare_digest(given, expected):
            return web.json_response(
                {"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": 'Bearer realm="posegen"'}
            )
        return await handler(request)

    return middleware


def _count(context: ApiContext) -> Any:
    known = {f"{BASE}/recovery/status", f"{BASE}/recovery/trigger", f"{BASE}/health", f"{BASE}/generate", "/readyz"}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path if request.path in known else "other"
        try:
            response = await handler(request)
        except web.HTTPException as error:
            context.metrics.admin_requests.labels(path=path, code=str(error.status)).inc()
            raise
        context.metrics.admin_requests.labels(path=path, code=str(response.status)).inc()
        return response

    return middleware


def _handler(context: ApiContext, function: Callable[[ApiContext, web.Request], Awaitable[web.Response]]) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await function(context, request)

    return handle


# ---- endpoints ----------------------------------------------------------------------------------
async def recovery_status(context: ApiContext, _request: web.Request) -> web.Response:
    def read() -> dict[str, Any]:
        with context.engine.connect() as conn:
            summary = checkpoint.status_summary(conn, context.settings.stall_timeout)
        last = context.redis.get(keys.LAST_RECOVERY_RUN)
        return {
            "stalledGenerations": summary["stalled"],
            "queuedGenerations": summary["queued"],
            "processingGenerations": summary["processing"],
            "lastRecoveryRun": last.decode() if isinstance(last, bytes) else last,
        }

    try:
        body = await asyncio.to_thread(read)
    except Exception as error:
        log.warning("recovery status unavailable: %s", type(error).__name__)
        return web.json_response({"error": "recovery status unavailable: a dependency is down"}, status=503)
    return web.json_response(body)


async def recovery_trigger(context: ApiContext, _request: web.Request) -> web.Response:
    if not context.controller.elector.is_leader:
        # Never forwarded: the caller's token goes nowhere but here, least of all to an address
        # read from the cluster. The caller (or its Service) retries and reaches the active replica.
        active = await asyncio.to_thread(_active_replica, context)
        return web.json_response(
            {
                "success": False,
                "recovered": 0,
                "failed": 0,
                "error": "this replica is a standby; retry (the active replica runs the trigger)",
                "activeReplica": active,
            },
            status=503,
            headers={"Retry-After": "2"},
        )
    result = await asyncio.to_thread(context.controller.trigger)
    status = 200 if result.success else 503
    return web.json_response(
        {"success": result.success, "recovered": result.recovered, "failed": result.failed}, status=status
    )


def _active_replica(context: ApiContext) -> str | None:
    """The Lease's holder identity, for the operator's logs and the caller; None when unknown."""
    settings = context.settings
    path = resource_path("coordination.k8s.io/v1", "leases", settings.lease_namespace, settings.lease_name)
    try:
        lease = context.api.request("GET", path, timeout=(3, 5))
    except Exception as error:  # an answer without the name is still the right answer
        log.warning("lease %s/%s unreadable: %s", settings.lease_namespace, settings.lease_name, type(error).__name__)
        return None
    holder = (lease.get("spec") or {}).get("holderIdentity")
    return str(holder) if holder else None


def _health(checker: HealthCheck) -> Handler:
    async def health(_request: web.Request) -> web.StreamResponse:
        answer = await checker.answer()
        return web.json_response(
            {"status": "healthy" if answer.healthy else "unhealthy", "checks": answer.checks},
            status=200 if answer.healthy else 503,
            headers={"X-Checked-At": answer.checked_at},
        )

    return health


async def ready(context: ApiContext, _request: web.Request) -> web.Response:
    """Ready when this replica can serve: the active one has finished a pass, a standby is waiting."""
    controller = context.controller
    ok = controller.last_pass_ok or not controller.elector.is_leader
    return web.json_response({"ready": ok, "leader": controller.elector.is_leader}, status=200 if ok else 503)


async def generate(context: ApiContext, request: web.Request) -> web.Response:
    try:
        payload = await _json_object(request)
    except _BadInput as error:
        return _bad_request(error.reason, error.status)
    unknown = sorted(set(payload) - GENERATE_FIELDS)
    if unknown:
        return _bad_request(f"unknown fields: {', '.join(unknown)}")
    namespace = payload.pop("namespace", None) or context.default_namespace
    if not isinstance(namespace, str):
        return _bad_request("namespace must be a string")
    if not generate_allowed(context.settings.generate_namespaces, context.default_namespace, namespace):
        return _bad_request(f"namespace {namespace!r} is not open to /generate", status=403)
    # Always a generated name: a caller cannot squat or guess the name of someone else's generation.
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"generateName": "gen-"}, "spec": payload}
    path = resource_path(f"{GROUP}/{VERSION}", PLURAL, namespace)
    try:
        created = await asyncio.to_thread(context.api.request, "POST", path, body=body, timeout=(5, 15))
    except ApiError as error:
        if error.status in (400, 409, 422):
            # The API server's own explanation (a CEL or schema message), which is about the request.
            message = error.message or "the request was refused by the API server"
            return _bad_request(message, status=409 if error.status == 409 else 400)
        if error.status == 404:
            return _bad_request(f"namespace {namespace!r} not found", status=404)
        if error.status == 403:
            return _bad_request(f"the operator may not create generations in namespace {namespace!r}", status=403)
        log.warning("generate: the API server answered %s", error.status)
        return web.json_response({"error": "the generation could not be created; retry"}, status=503)
    except Exception as error:  # the API server unreachable: not the caller's fault, and no traceback
        log.warning("generate: the API server is unreachable: %s", type(error).__name__)
        return web.json_response({"error": "the generation could not be created; retry"}, status=503)
    meta = created["metadata"]
    return web.json_response(
        {
            "success": True,
            "generationId": meta["uid"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "status": "queued",
        },
        status=201,
    )


class _BadInput(Exception):
    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


async def _json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object of flat fields, or _BadInput saying what is wrong with it."""
    if request.headers.get("Content-Type") is not None and request.content_type not in JSON_TYPES:
        raise _BadInput(f"the body must be application/json, not {request.content_type!r}", 415)
    if (request.charset or "utf-8").lower() not in ("utf-8", "utf8"):
        raise _BadInput(f"charset {request.charset!r} is not supported: send UTF-8", 415)
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise _BadInput(f"the body is larger than {MAX_BODY_BYTES} bytes", 413)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as error:  # chunked, so no Content-Length to check first
        raise _BadInput(f"the body is larger than {MAX_BODY_BYTES} bytes", 413) from error
    try:
        payload = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as error:
        raise _BadInput("the body is not valid UTF-8") from error
    except RecursionError as error:
        raise _BadInput("the body is nested too deeply") from error
    except ValueError as error:  # JSONDecodeError, NaN/Infinity, integers beyond 4300 digits
        raise _BadInput(f"the body must be a JSON object ({error})") from error
    if not isinstance(payload, dict):
        raise _BadInput("the body must be a JSON object")
    for key, value in payload.items():
        # Every field is a scalar or a list of scalars: deeper values are not ours to pass on.
        items = value if isinstance(value, list) else [value]
        if not all(item is None or isinstance(item, str | int | float) for item in items):
            raise _BadInput(f"{key} must be a string, a number, a boolean or a list of strings")
        if not all(_encodable(item) for item in [key, *items] if isinstance(item, str)):
            raise _BadInput(f"{key} holds text that is not valid Unicode")
    return payload


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, e.g. from "\ud800" in the JSON
        return False
    return True


def generate_allowed(patterns: tuple[str, ...], default_namespace: str, namespace: str) -> bool:
    """Whether /generate may create in ``namespace``: one of the allowlist's patterns (fnmatch, e.g.
    ``team-*``) matches it; without an allowlist, only the default namespace."""
    return any(fnmatch.fnmatchcase(namespace, pattern) for pattern in patterns or (default_namespace,))


def _bad_request(reason: str, status: int = 400) -> web.Response:
    return web.json_response({"success": False, "error": reason}, status=status)
